// XLA FFI handlers of the attention forward, dense (BSHD) and packed (THD): decode, validate, fill params,
// launch. The two differ only in the layout and the packed index arrays; run_fwd is what they share. Both take
// an attention-sinks operand, empty unless the has_sinks attribute is set (buffers.h, fill_sinks).
#include "ffi/attn_handlers.h"
#include "ffi/attributes.h"
#include "ffi/buffers.h"

namespace jax_flash::ffi_glue {

// Checks out / lse against the decoded q/k/v geometry, fills the rest of params and launches.
static ffi::Error run_fwd(cudaStream_t stream, AttnFwdParams& params, DType dtype, bool packed,
                          ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse, const AttnAttributes& attrs) {
  const int layout_batch = params.layout_batch();
  const Bshd out_shape{layout_batch, params.seqlen_q, params.heads_q, params.head_dim_v};
  if (auto e = expect_bshd(out, "out", packed, out_shape)) return *std::move(e);
  if (lse.element_count() != static_cast<size_t>(layout_batch) * params.heads_q * params.seqlen_q) {
    return ffi::Error::InvalidArgument(packed ? "jax_flash: lse must have shape (heads_q, total_q)"
                                              : "jax_flash: lse must have shape (batch, heads_q, seqlen_q)");
  }
  params.out = out.untyped_data();
  params.out_batch_stride = out_shape.batch_stride();
  params.out_row_stride = out_shape.row_stride();
  params.out_head_stride = out_shape.head_stride();
  params.lse = lse.typed_data();
  fill_attributes(attrs, &params);
  if (layout_batch == 0 || params.seqlen_q == 0 || params.heads_q == 0) return ffi::Error::Success();

  Status status = attn_fwd(params, dtype, attrs.variant, stream);
  if (!status.ok()) return ffi::Error::Internal("jax_flash forward: " + status.message);
  return ffi::Error::Success();
}

static ffi::Error AttnFwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                              ffi::AnyBuffer v, ffi::AnyBuffer sinks, ffi::Result<ffi::AnyBuffer> out,
                              ffi::Result<ffi::Buffer<ffi::F32>> lse, ffi::Dictionary attrs) {
  AttnAttributes attributes;
  bool has_sinks = false;
  if (auto e = decode_attributes(attrs, &attributes, OwnAttr<bool>{"has_sinks", &has_sinks})) return *std::move(e);
  AttnFwdParams params{};
  DType dtype;
  if (auto e = fill_qkv(q, k, v, /*packed=*/false, &params, &dtype)) return *std::move(e);
  if (auto e = fill_sinks(sinks, has_sinks, &params)) return *std::move(e);
  return run_fwd(stream, params, dtype, false, *out, *lse, attributes);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    AttnFwd, AttnFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (..., Sq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k (..., Sk, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v (..., Sk, Hk, Dv)
        .Arg<ffi::AnyBuffer>()           // sinks: float32 (..., Hq, Sq) with has_sinks, else empty
        .Ret<ffi::AnyBuffer>()           // out (..., Sq, Hq, Dv)
        .Ret<ffi::Buffer<ffi::F32>>()    // lse (..., Hq, Sq)
        .Attrs(),                        // AttnAttributes (attributes.h), has_sinks (bool)
    {ffi::Traits::kCmdBufferCompatible});

// max_seqlen_q / max_seqlen_k are part of the call (so each value has its own executable) but never size
// the kernels' work, which comes from a bound on the shapes (kernels/common/seqlen.h); max_seqlen_k is the key
// count the kernel choice goes by (kernel_table.h auto_min_keys).
static ffi::Error AttnVarlenFwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                                    ffi::AnyBuffer v, ffi::Buffer<ffi::S32> cu_seqlens_q,
                                    ffi::Buffer<ffi::S32> cu_seqlens_k, ffi::Buffer<ffi::S32> seqused_q,
                                    ffi::Buffer<ffi::S32> seqused_k, ffi::AnyBuffer sinks,
                                    ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                                    ffi::Dictionary attrs) {
  AttnAttributes attributes;
  int32_t max_seqlen_q = 0, max_seqlen_k = 0;
  bool has_sinks = false;
  if (auto e = decode_attributes(attrs, &attributes, OwnAttr<int32_t>{"max_seqlen_q", &max_seqlen_q},
                                 OwnAttr<int32_t>{"max_seqlen_k", &max_seqlen_k},
                                 OwnAttr<bool>{"has_sinks", &has_sinks})) {
    return *std::move(e);
  }
  AttnFwdParams params{};
  DType dtype;
  if (auto e = fill_qkv(q, k, v, /*packed=*/true, &params, &dtype)) return *std::move(e);
  if (auto e = fill_packed(cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, &params)) return *std::move(e);
  params.max_seqlen_k = max_seqlen_k;
  if (auto e = fill_sinks(sinks, has_sinks, &params)) return *std::move(e);
  return run_fwd(stream, params, dtype, true, *out, *lse, attributes);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    AttnVarlenFwd, AttnVarlenFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (Tq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k (Tk, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v (Tk, Hk, Dv)
        .Arg<ffi::Buffer<ffi::S32>>()    // cu_seqlens_q (N + 1,)
        .Arg<ffi::Buffer<ffi::S32>>()    // cu_seqlens_k (N + 1,)
        .Arg<ffi::Buffer<ffi::S32>>()    // seqused_q (N,)
        .Arg<ffi::Buffer<ffi::S32>>()    // seqused_k (N,)
        .Arg<ffi::AnyBuffer>()           // sinks: float32 (Hq, Tq) with has_sinks, else empty
        .Ret<ffi::AnyBuffer>()           // out (Tq, Hq, Dv)
        .Ret<ffi::Buffer<ffi::F32>>()    // lse (Hq, Tq)
        .Attrs(),                        // AttnAttributes, max_seqlen_q, max_seqlen_k (int32), has_sinks (bool)
    {ffi::Traits::kCmdBufferCompatible});

}  // namespace jax_flash::ffi_glue
