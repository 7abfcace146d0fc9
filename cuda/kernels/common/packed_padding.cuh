// Packed (varlen) layouts: the rows that belong to no sequence's used span -- padding between sequences,
// rows before cu_seqlens[0] and after cu_seqlens[N] -- get output 0, lse -inf and zero gradients (DESIGN.md).
// The attention kernels write only the rows of sequences, so this kernel writes exactly the others: the two
// write disjoint rows and may run in either order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/seqlen.h"

namespace jax_flash {

// Up to two row-major tensors over one token axis, plus an optional (heads, total_rows) float32 lse.
struct PaddingRows {
  const int* cu_seqlens;  // (num_seqs + 1,)
  const int* seqused;     // (num_seqs,) or null
  int num_seqs, total_rows;
  char* tensor[2];              // null = none
  int64_t row_stride_bytes[2];  // between consecutive tokens
  int row_bytes[2];             // bytes to zero per token: a multiple of 16
  float* lse;                   // null = none
  int lse_heads;
  int64_t lse_head_stride;
};

constexpr int kPaddingThreads = 256;

// True when packed row `row` lies in no sequence's used span (the same clamped spans the attention
// kernels use, common/seqlen.h). A binary search over the clamped, non-decreasing offsets.
__device__ __forceinline__ bool is_padding_row(const PaddingRows& f, int row) {
  auto offset = [&](int i) { return min(max(f.cu_seqlens[i], 0), f.total_rows); };
  int lo = 0, hi = f.num_seqs + 1;  // first i in [0, N + 1) with offset(i) > row
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (offset(mid) > row) hi = mid; else lo = mid + 1;
  }
  const int b = lo - 1;
  if (b < 0 || b >= f.num_seqs) return true;
  const PackedSpan span = PackedSpan::load(f.cu_seqlens, f.seqused, b, f.total_rows);
  return row >= span.start + span.length;
}

// One warp per row, grid-stride.
__global__ void __launch_bounds__(kPaddingThreads) fill_padding_rows_kernel(const PaddingRows f) {
  const int lane = threadIdx.x % 32;
  const int warps = gridDim.x * (blockDim.x / 32);
  for (int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; row < f.total_rows; row += warps) {
    if (!is_padding_row(f, row)) continue;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      if (f.tensor[t] == nullptr) continue;
      char* dst = f.tensor[t] + int64_t(row) * f.row_stride_bytes[t];
      for (int byte = lane * 16; byte < f.row_bytes[t]; byte += 32 * 16) {
        *reinterpret_cast<uint4*>(dst + byte) = make_uint4(0, 0, 0, 0);
      }
    }
    if (f.lse != nullptr) {
      for (int h = lane; h < f.lse_heads; h += 32) f.lse[h * f.lse_head_stride + row] = -INFINITY;
    }
  }
}

}  // namespace jax_flash
