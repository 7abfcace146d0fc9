// Launchers of the packed-layout padding fill (kernels/common/packed_padding.cuh) for the forward and backward.
#include <algorithm>
#include <string>

#include "host/launch.h"
#include "kernels/common/packed_padding.cuh"

namespace jax_flash {
namespace {

// Row tensors of 2-byte elements (float16 / bfloat16): bytes per token of `heads` x `dim`.
constexpr int kElementBytes = 2;

PaddingRows padding_rows(const int* cu_seqlens, const int* seqused, int num_seqs, int total_rows) {
  PaddingRows f{};
  f.cu_seqlens = cu_seqlens;
  f.seqused = seqused;
  f.num_seqs = num_seqs;
  f.total_rows = total_rows;
  return f;
}

void add_tensor(PaddingRows& f, int slot, void* data, int64_t row_stride, int heads, int dim) {
  f.tensor[slot] = static_cast<char*>(data);
  f.row_stride_bytes[slot] = row_stride * kElementBytes;
  f.row_bytes[slot] = heads * dim * kElementBytes;
}

Status launch(const PaddingRows& f, cudaStream_t stream, const char* what) {
  if (f.total_rows == 0) return {};
  constexpr int kRowsPerBlock = kPaddingThreads / 32;
  const int blocks = std::min((f.total_rows + kRowsPerBlock - 1) / kRowsPerBlock, 1 << 16);
  fill_padding_rows_kernel<<<blocks, kPaddingThreads, 0, stream>>>(f);
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return {};
  return {std::string("jax_flash: padding fill (") + what + ") launch failed: " + cudaGetErrorString(err)};
}

}  // namespace

Status fill_fwd_padding(const AttnFwdParams& p, cudaStream_t stream) {
  PaddingRows f = padding_rows(p.cu_seqlens_q, p.seqused_q, p.batch, p.seqlen_q);
  add_tensor(f, 0, p.out, p.out_row_stride, p.heads_q, p.head_dim_v);
  f.lse = p.lse;
  f.lse_heads = p.heads_q;
  f.lse_head_stride = p.lse_head_stride;
  return launch(f, stream, "out, lse");
}

Status fill_bwd_padding(const AttnBwdParams& p, cudaStream_t stream) {
  PaddingRows q_side = padding_rows(p.cu_seqlens_q, p.seqused_q, p.batch, p.seqlen_q);
  add_tensor(q_side, 0, p.dq, p.dq_row_stride, p.heads_q, p.head_dim);
  if (Status s = launch(q_side, stream, "dq"); !s.ok()) return s;
  PaddingRows k_side = padding_rows(p.cu_seqlens_k, p.seqused_k, p.batch, p.seqlen_k);
  add_tensor(k_side, 0, p.dk, p.dk_row_stride, p.heads_k, p.head_dim);
  add_tensor(k_side, 1, p.dv, p.dv_row_stride, p.heads_k, p.head_dim_v);
  return launch(k_side, stream, "dk, dv");
}

}  // namespace jax_flash
