// XLA FFI handler of the dense attention forward: decode, validate, fill params, launch.
#include "ffi/attn_handlers.h"
#include "ffi/buffers.h"

namespace jax_flash::ffi_glue {

static ffi::Error AttnFwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                              ffi::AnyBuffer v, ffi::Result<ffi::AnyBuffer> out,
                              ffi::Result<ffi::Buffer<ffi::F32>> lse, float scale, float softcap,
                              int32_t window_left, int32_t window_right) {
  AttnFwdParams params{};
  DType dtype;
  if (auto e = fill_qkv(q, k, v, &params, &dtype)) return *std::move(e);
  const Bshd out_shape{params.batch, params.seqlen_q, params.heads_q, params.head_dim_v};
  if (auto e = expect_bshd(*out, "out", out_shape)) return *std::move(e);
  if (lse->element_count() != static_cast<size_t>(params.batch) * params.heads_q * params.seqlen_q) {
    return ffi::Error::InvalidArgument("jax_flash: lse must have shape (batch, heads_q, seqlen_q)");
  }
  params.out = out->untyped_data();
  params.out_batch_stride = out_shape.batch_stride();
  params.out_row_stride = out_shape.row_stride();
  params.out_head_stride = out_shape.head_stride();
  params.lse = lse->typed_data();
  fill_attributes(scale, softcap, window_left, window_right, &params);
  if (params.batch == 0 || params.seqlen_q == 0 || params.heads_q == 0) return ffi::Error::Success();

  Status status = attn_fwd(params, dtype, stream);
  if (!status.ok()) return ffi::Error::Internal("jax_flash forward: " + status.message);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    AttnFwd, AttnFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (..., Sq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k (..., Sk, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v (..., Sk, Hk, Dv)
        .Ret<ffi::AnyBuffer>()           // out (..., Sq, Hq, Dv)
        .Ret<ffi::Buffer<ffi::F32>>()    // lse (..., Hq, Sq)
        .Attr<float>("scale")
        .Attr<float>("softcap")          // 0 = none
        .Attr<int32_t>("window_left")    // -1 = unbounded
        .Attr<int32_t>("window_right"),  // -1 = unbounded; causal is 0
    {ffi::Traits::kCmdBufferCompatible});

}  // namespace jax_flash::ffi_glue
