// XLA FFI handlers of the attention backward, dense (BSHD) and packed (THD): decode, validate, fill params,
// launch. run_bwd is what the two share once q/k/v (and the packed index arrays) are decoded.
#include "ffi/attn_handlers.h"
#include "ffi/attributes.h"
#include "ffi/buffers.h"

namespace jax_flash::ffi_glue {

namespace {

// The buffers every backward call carries besides q, k, v.
struct BwdBuffers {
  ffi::AnyBuffer out, dout;
  ffi::Buffer<ffi::F32> lse, dlse;
  ffi::AnyBuffer dq, dk, dv, workspace;
};

ffi::Error run_bwd(cudaStream_t stream, AttnBwdParams& params, DType dtype, bool packed, BwdBuffers& b,
                   const AttnAttributes& attrs, bool deterministic) {
  const int layout_batch = params.layout_batch();
  const Bshd o_shape{layout_batch, params.seqlen_q, params.heads_q, params.head_dim_v};
  const Bshd q_shape{layout_batch, params.seqlen_q, params.heads_q, params.head_dim};
  const Bshd k_shape{layout_batch, params.seqlen_k, params.heads_k, params.head_dim};
  const Bshd v_shape{layout_batch, params.seqlen_k, params.heads_k, params.head_dim_v};
  if (auto e = expect_bshd(b.out, "out", packed, o_shape)) return *std::move(e);
  if (auto e = expect_bshd(b.dout, "dout", packed, o_shape)) return *std::move(e);
  if (auto e = expect_bshd(b.dq, "dq", packed, q_shape)) return *std::move(e);
  if (auto e = expect_bshd(b.dk, "dk", packed, k_shape)) return *std::move(e);
  if (auto e = expect_bshd(b.dv, "dv", packed, v_shape)) return *std::move(e);
  const size_t lse_count = static_cast<size_t>(layout_batch) * params.heads_q * params.seqlen_q;
  if (b.lse.element_count() != lse_count || b.dlse.element_count() != lse_count) {
    return ffi::Error::InvalidArgument(packed ? "jax_flash: lse and dlse must have shape (heads_q, total_q)"
                                              : "jax_flash: lse and dlse must have shape (batch, heads_q, seqlen_q)");
  }
  const size_t needed = attn_bwd_workspace_bytes(dtype, params.batch, packed, params.seqlen_q, params.seqlen_k,
                                                 params.heads_q, params.heads_k, params.head_dim, params.head_dim_v,
                                                 deterministic);
  if (b.workspace.size_bytes() < needed) {
    return ffi::Error::InvalidArgument("jax_flash: backward workspace has " +
                                       std::to_string(b.workspace.size_bytes()) + " bytes, needs " +
                                       std::to_string(needed));
  }
  params.out = const_cast<void*>(b.out.untyped_data());
  params.out_batch_stride = o_shape.batch_stride();
  params.out_row_stride = o_shape.row_stride();
  params.out_head_stride = o_shape.head_stride();
  params.lse = const_cast<float*>(b.lse.typed_data());
  params.dlse = b.dlse.typed_data();
  params.dout = b.dout.untyped_data();
  params.dout_batch_stride = o_shape.batch_stride();
  params.dout_row_stride = o_shape.row_stride();
  params.dout_head_stride = o_shape.head_stride();
  params.dq = b.dq.untyped_data();
  params.dq_batch_stride = q_shape.batch_stride();
  params.dq_row_stride = q_shape.row_stride();
  params.dq_head_stride = q_shape.head_stride();
  params.dk = b.dk.untyped_data();
  params.dk_batch_stride = k_shape.batch_stride();
  params.dk_row_stride = k_shape.row_stride();
  params.dk_head_stride = k_shape.head_stride();
  params.dv = b.dv.untyped_data();
  params.dv_batch_stride = v_shape.batch_stride();
  params.dv_row_stride = v_shape.row_stride();
  params.dv_head_stride = v_shape.head_stride();
  params.workspace = b.workspace.untyped_data();
  params.deterministic = deterministic;
  fill_attributes(attrs, &params);
  if (layout_batch == 0 || params.heads_q == 0) return ffi::Error::Success();

  Status status = attn_bwd(params, dtype, attrs.variant, stream);
  if (!status.ok()) return ffi::Error::Internal("jax_flash backward: " + status.message);
  return ffi::Error::Success();
}

}  // namespace

static ffi::Error AttnBwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                              ffi::AnyBuffer v, ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse,
                              ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> dlse,
                              ffi::Result<ffi::AnyBuffer> dq,
                              ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                              ffi::Result<ffi::AnyBuffer> workspace, ffi::Dictionary attrs) {
  AttnAttributes attributes;
  bool deterministic = false;
  if (auto e = decode_attributes(attrs, &attributes, OwnAttr<bool>{"deterministic", &deterministic})) {
    return *std::move(e);
  }
  AttnBwdParams params{};
  DType dtype;
  if (auto e = fill_qkv(q, k, v, /*packed=*/false, &params, &dtype)) return *std::move(e);
  BwdBuffers buffers{out, dout, lse, dlse, *dq, *dk, *dv, *workspace};
  return run_bwd(stream, params, dtype, false, buffers, attributes, deterministic);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    AttnBwd, AttnBwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (..., Sq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k (..., Sk, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v (..., Sk, Hk, Dv)
        .Arg<ffi::AnyBuffer>()           // out (..., Sq, Hq, Dv): the forward's output
        .Arg<ffi::Buffer<ffi::F32>>()    // lse (..., Hq, Sq): the forward's
        .Arg<ffi::AnyBuffer>()           // dout (..., Sq, Hq, Dv)
        .Arg<ffi::Buffer<ffi::F32>>()    // dlse (..., Hq, Sq): cotangent of lse
        .Ret<ffi::AnyBuffer>()           // dq (..., Sq, Hq, D)
        .Ret<ffi::AnyBuffer>()           // dk (..., Sk, Hk, D)
        .Ret<ffi::AnyBuffer>()           // dv (..., Sk, Hk, Dv)
        .Ret<ffi::AnyBuffer>()           // workspace: uint8 scratch, attn_bwd_workspace_bytes long
        .Attrs(),                        // AttnAttributes (attributes.h), deterministic (bool)
    {ffi::Traits::kCmdBufferCompatible});

// max_seqlen_q / max_seqlen_k: recorded in the call, never used to size work; max_seqlen_k goes to the kernel
// choice (see the forward handler).
static ffi::Error AttnVarlenBwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                                    ffi::AnyBuffer v, ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse,
                                    ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> dlse,
                                    ffi::Buffer<ffi::S32> cu_seqlens_q, ffi::Buffer<ffi::S32> cu_seqlens_k,
                                    ffi::Buffer<ffi::S32> seqused_q, ffi::Buffer<ffi::S32> seqused_k,
                                    ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                                    ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::AnyBuffer> workspace,
                                    ffi::Dictionary attrs) {
  AttnAttributes attributes;
  bool deterministic = false;
  int32_t max_seqlen_q = 0, max_seqlen_k = 0;
  if (auto e = decode_attributes(attrs, &attributes, OwnAttr<bool>{"deterministic", &deterministic},
                                 OwnAttr<int32_t>{"max_seqlen_q", &max_seqlen_q},
                                 OwnAttr<int32_t>{"max_seqlen_k", &max_seqlen_k})) {
    return *std::move(e);
  }
  AttnBwdParams params{};
  DType dtype;
  if (auto e = fill_qkv(q, k, v, /*packed=*/true, &params, &dtype)) return *std::move(e);
  if (auto e = fill_packed(cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, &params)) return *std::move(e);
  params.max_seqlen_k = max_seqlen_k;
  BwdBuffers buffers{out, dout, lse, dlse, *dq, *dk, *dv, *workspace};
  return run_bwd(stream, params, dtype, true, buffers, attributes, deterministic);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    AttnVarlenBwd, AttnVarlenBwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (Tq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k (Tk, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v (Tk, Hk, Dv)
        .Arg<ffi::AnyBuffer>()           // out (Tq, Hq, Dv)
        .Arg<ffi::Buffer<ffi::F32>>()    // lse (Hq, Tq)
        .Arg<ffi::AnyBuffer>()           // dout (Tq, Hq, Dv)
        .Arg<ffi::Buffer<ffi::F32>>()    // dlse (Hq, Tq)
        .Arg<ffi::Buffer<ffi::S32>>()    // cu_seqlens_q (N + 1,)
        .Arg<ffi::Buffer<ffi::S32>>()    // cu_seqlens_k (N + 1,)
        .Arg<ffi::Buffer<ffi::S32>>()    // seqused_q (N,)
        .Arg<ffi::Buffer<ffi::S32>>()    // seqused_k (N,)
        .Ret<ffi::AnyBuffer>()           // dq (Tq, Hq, D)
        .Ret<ffi::AnyBuffer>()           // dk (Tk, Hk, D)
        .Ret<ffi::AnyBuffer>()           // dv (Tk, Hk, Dv)
        .Ret<ffi::AnyBuffer>()           // workspace
        .Attrs(),                        // AttnAttributes, deterministic, max_seqlen_q, max_seqlen_k
    {ffi::Traits::kCmdBufferCompatible});

}  // namespace jax_flash::ffi_glue
