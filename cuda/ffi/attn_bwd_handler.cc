// XLA FFI handler of the dense attention backward: decode, validate, fill params, launch.
#include "ffi/attn_handlers.h"
#include "ffi/buffers.h"

namespace jax_flash::ffi_glue {

static ffi::Error AttnBwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k,
                              ffi::AnyBuffer v, ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse,
                              ffi::AnyBuffer dout, ffi::Buffer<ffi::F32> dlse,
                              ffi::Result<ffi::AnyBuffer> dq,
                              ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                              ffi::Result<ffi::AnyBuffer> workspace, float scale, float softcap,
                              int32_t window_left, int32_t window_right, bool deterministic) {
  AttnBwdParams params{};
  DType dtype;
  if (auto e = fill_qkv(q, k, v, &params, &dtype)) return *std::move(e);
  const Bshd o_shape{params.batch, params.seqlen_q, params.heads_q, params.head_dim_v};
  const Bshd q_shape{params.batch, params.seqlen_q, params.heads_q, params.head_dim};
  const Bshd k_shape{params.batch, params.seqlen_k, params.heads_k, params.head_dim};
  const Bshd v_shape{params.batch, params.seqlen_k, params.heads_k, params.head_dim_v};
  if (auto e = expect_bshd(out, "out", o_shape)) return *std::move(e);
  if (auto e = expect_bshd(dout, "dout", o_shape)) return *std::move(e);
  if (auto e = expect_bshd(*dq, "dq", q_shape)) return *std::move(e);
  if (auto e = expect_bshd(*dk, "dk", k_shape)) return *std::move(e);
  if (auto e = expect_bshd(*dv, "dv", v_shape)) return *std::move(e);
  const size_t lse_count = static_cast<size_t>(params.batch) * params.heads_q * params.seqlen_q;
  if (lse.element_count() != lse_count || dlse.element_count() != lse_count) {
    return ffi::Error::InvalidArgument(
        "jax_flash: lse and dlse must have shape (batch, heads_q, seqlen_q)");
  }
  const size_t needed = attn_bwd_workspace_bytes(params.batch, params.seqlen_q, params.seqlen_k,
                                                 params.heads_q, params.heads_k, params.head_dim,
                                                 params.head_dim_v, deterministic);
  if (workspace->size_bytes() < needed) {
    return ffi::Error::InvalidArgument("jax_flash: backward workspace has " +
                                       std::to_string(workspace->size_bytes()) + " bytes, needs " +
                                       std::to_string(needed));
  }
  params.out = const_cast<void*>(out.untyped_data());
  params.out_batch_stride = o_shape.batch_stride();
  params.out_row_stride = o_shape.row_stride();
  params.out_head_stride = o_shape.head_stride();
  params.lse = const_cast<float*>(lse.typed_data());
  params.dlse = dlse.typed_data();
  params.dout = dout.untyped_data();
  params.dout_batch_stride = o_shape.batch_stride();
  params.dout_row_stride = o_shape.row_stride();
  params.dout_head_stride = o_shape.head_stride();
  params.dq = dq->untyped_data();
  params.dq_batch_stride = q_shape.batch_stride();
  params.dq_row_stride = q_shape.row_stride();
  params.dq_head_stride = q_shape.head_stride();
  params.dk = dk->untyped_data();
  params.dk_batch_stride = k_shape.batch_stride();
  params.dk_row_stride = k_shape.row_stride();
  params.dk_head_stride = k_shape.head_stride();
  params.dv = dv->untyped_data();
  params.dv_batch_stride = v_shape.batch_stride();
  params.dv_row_stride = v_shape.row_stride();
  params.dv_head_stride = v_shape.head_stride();
  params.workspace = workspace->untyped_data();
  params.deterministic = deterministic;
  fill_attributes(scale, softcap, window_left, window_right, &params);
  if (params.batch == 0 || params.heads_q == 0) return ffi::Error::Success();

  Status status = attn_bwd(params, dtype, stream);
  if (!status.ok()) return ffi::Error::Internal("jax_flash backward: " + status.message);
  return ffi::Error::Success();
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
        .Attr<float>("scale")
        .Attr<float>("softcap")
        .Attr<int32_t>("window_left")
        .Attr<int32_t>("window_right")
        .Attr<bool>("deterministic"),
    {ffi::Traits::kCmdBufferCompatible});

}  // namespace jax_flash::ffi_glue
