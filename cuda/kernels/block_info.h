// Where one (sequence, head) problem lives: its lengths and the element offsets of its rows.
//
// Dense layout addresses sequence b through the batch strides. A packed (varlen) layout will instead start
// sequence b at token cu_seqlens[b] of one token dimension and address it through the row stride; the
// offset helpers below are the only code that knows which, so mainloops and epilogues stay layout-agnostic.
// Shared by the forward and backward kernels.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

struct SeqlenInfo {
  int seqlen_q;  // queries of this sequence
  int seqlen_k;  // keys of this sequence
  // Packed layouts only: first token of this sequence in the shared token dimension.
  bool packed;
  int64_t q_start, k_start;

  // Dense BSHD: every sequence holds all seqlen_q / seqlen_k rows.
  __device__ static SeqlenInfo dense(const AttnFwdParams& p) {
    return SeqlenInfo{p.seqlen_q, p.seqlen_k, false, 0, 0};
  }

  // Element offset of row 0 of sequence `bidb` in a q-like (q, out, dout, dq) tensor.
  __device__ int64_t q_offset(int64_t batch_stride, int64_t row_stride, int bidb) const {
    return packed ? q_start * row_stride : int64_t(bidb) * batch_stride;
  }
  // Element offset of row 0 of sequence `bidb` in a k-like (k, v, dk, dv) tensor.
  __device__ int64_t k_offset(int64_t batch_stride, int64_t row_stride, int bidb) const {
    return packed ? k_start * row_stride : int64_t(bidb) * batch_stride;
  }
  // Element offset of query 0 of sequence `bidb`, head `bidh` in lse (dense (B, Hq, Sq); packed (Hq, Tq)).
  __device__ int64_t lse_offset(int64_t batch_stride, int64_t head_stride, int bidb, int bidh) const {
    return (packed ? q_start : int64_t(bidb) * batch_stride) + int64_t(bidh) * head_stride;
  }
};

// GQA/MQA: query head h reads kv head h / kv_group.
__device__ __forceinline__ int kv_head_of(int bidh, int kv_group) { return bidh / kv_group; }

__host__ __device__ __forceinline__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace jax_flash
