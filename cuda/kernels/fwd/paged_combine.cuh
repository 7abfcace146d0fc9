// Split-KV combine of the paged forward: merges the num_splits normalized fp32 partial outputs and LSEs of
// every (query row, head) into out and lse, in fp32:
//   m = max_s lse_s,  w_s = exp(lse_s - m),  out = sum_s w_s out_s / sum_s w_s,  lse = m + log(sum_s w_s).
// A split that saw no key has lse_s = -inf and weight 0; a row no split saw gets out 0 and lse -inf.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

constexpr int kCombineThreads = 256;
constexpr int kCombineMaxColsPerLane = 8;  // head_dim_v <= 256 over 32 lanes

// One warp per (query row, head), grid-stride; lanes own columns lane, lane + 32, ...
template <typename Element>
__global__ void __launch_bounds__(kCombineThreads) paged_combine_kernel(const __grid_constant__ PagedFwdParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t query_rows = int64_t(p.layout_batch()) * p.seqlen_q;
  const int64_t pairs = query_rows * p.heads_q;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t pair = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; pair < pairs; pair += warps) {
    float lse_max = -INFINITY;
    for (int s = 0; s < p.num_splits; ++s) lse_max = fmaxf(lse_max, p.lse_partial[s * pairs + pair]);
    float acc[kCombineMaxColsPerLane] = {};
    float total = 0.f;
    if (lse_max != -INFINITY) {
      for (int s = 0; s < p.num_splits; ++s) {
        const float lse_s = p.lse_partial[s * pairs + pair];
        if (lse_s == -INFINITY) continue;
        const float w = expf(lse_s - lse_max);
        total += w;
        const float* out_s = p.out_partial + (s * pairs + pair) * p.head_dim_v;
#pragma unroll
        for (int i = 0; i < kCombineMaxColsPerLane; ++i) {
          const int col = lane + 32 * i;
          if (col < p.head_dim_v) acc[i] += w * out_s[col];
        }
      }
    }
    const float inv = total > 0.f ? 1.f / total : 0.f;
    const int64_t row = pair / p.heads_q;
    const int head = int(pair - row * p.heads_q);
    // out rows are contiguous over (B, Sq) or (Tq): row * row_stride addresses both layouts.
    Element* out = static_cast<Element*>(p.out) + row * p.out_row_stride + int64_t(head) * p.out_head_stride;
#pragma unroll
    for (int i = 0; i < kCombineMaxColsPerLane; ++i) {
      const int col = lane + 32 * i;
      if (col < p.head_dim_v) out[col] = Element(acc[i] * inv);
    }
    if (lane == 0) {
      const float lse = total > 0.f ? lse_max + logf(total) : -INFINITY;
      const int64_t index = p.packed() ? int64_t(head) * p.lse_head_stride + row
                                       : (row / p.seqlen_q) * p.lse_batch_stride +
                                             int64_t(head) * p.lse_head_stride + row % p.seqlen_q;
      p.lse[index] = lse;
    }
  }
}

}  // namespace jax_flash
