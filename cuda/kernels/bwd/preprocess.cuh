// The small memory-bound kernels around the backward mainloops:
//   bwd_delta_kernel:      delta_i = sum_d dout[i, d] * out[i, d] - dlse_i  (fp32), and the dq accumulator zeroed
//   bwd_dq_convert_kernel: dq = scale * dq_accum, in the element type (atomic dq path only)
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

constexpr int kBwdElementwiseThreads = 256;

// Threads per query row in bwd_delta_kernel: each reads 8 values (16 bytes) of out and of dout per step, so a
// row of head_dim_v <= 8 x threads takes one step (D64: 8 threads, 4 rows per warp; D128: 16; D256: 32).
constexpr int bwd_delta_threads_per_row(int head_dim_v) {
  int threads = 1;
  while (threads < 32 && threads * 8 < head_dim_v) threads *= 2;
  return threads;
}

// delta is (B, Hq, Sq) contiguous ((1, Hq, Tq) when packed: every row, padding included). Reads 16 bytes per
// thread per step: head_dim_v % 8 == 0. The same grid also zeroes `zero` (zero_count float4s: the dq
// accumulator and its semaphores, which the dK/dV kernel adds into), saving a memset pass and its launch.
template <typename Element, int kThreadsPerRow>
__global__ void __launch_bounds__(kBwdElementwiseThreads)
    bwd_delta_kernel(const AttnBwdParams params, float* __restrict__ delta, float4* __restrict__ zero,
                     int64_t zero_count) {
  static_assert(kThreadsPerRow >= 1 && kThreadsPerRow <= 32 && 32 % kThreadsPerRow == 0);
  constexpr int kRowsPerBlock = kBwdElementwiseThreads / kThreadsPerRow;
  constexpr int kRowsPerWarp = 32 / kThreadsPerRow;
  const int t = int(threadIdx.x) % kThreadsPerRow;
  const int64_t rows = int64_t(params.layout_batch()) * params.heads_q * params.seqlen_q;
  const int64_t stride = int64_t(gridDim.x) * kRowsPerBlock;
  // The loop's bound is the warp's first row, so that every lane of a warp takes part in its shuffles.
  const int64_t warp_row0 = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32 * kRowsPerWarp;
  for (int64_t row0 = warp_row0; row0 < rows; row0 += stride) {
    const int64_t row = row0 + (threadIdx.x % 32) / kThreadsPerRow;
    float sum = 0.f;
    int i = 0, h = 0, b = 0;
    if (row < rows) {
      i = int(row % params.seqlen_q);
      h = int((row / params.seqlen_q) % params.heads_q);
      b = int(row / (int64_t(params.seqlen_q) * params.heads_q));
      const Element* out = static_cast<const Element*>(params.out) + b * params.out_batch_stride +
                           i * params.out_row_stride + h * params.out_head_stride;
      const Element* dout = static_cast<const Element*>(params.dout) + b * params.dout_batch_stride +
                            i * params.dout_row_stride + h * params.dout_head_stride;
      for (int d = t * 8; d < params.head_dim_v; d += kThreadsPerRow * 8) {
        cutlass::AlignedArray<Element, 8> o = *reinterpret_cast<const cutlass::AlignedArray<Element, 8>*>(out + d);
        cutlass::AlignedArray<Element, 8> g = *reinterpret_cast<const cutlass::AlignedArray<Element, 8>*>(dout + d);
#pragma unroll
        for (int j = 0; j < 8; ++j) sum += float(o[j]) * float(g[j]);
      }
    }
#pragma unroll
    for (int offset = kThreadsPerRow / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (t == 0 && row < rows) {
      const float dlse = params.dlse == nullptr
                             ? 0.f
                             : params.dlse[b * params.lse_batch_stride + h * params.lse_head_stride + i];
      delta[row] = sum - dlse;
    }
  }
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < zero_count; k += threads) {
    zero[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

// dq_accum is (B, Hq, Sq, head_dim) contiguous fp32 ((1, Hq, Tq, head_dim) when packed; padding rows stay 0); each thread converts 8 consecutive head-dim elements.
template <typename Element>
__global__ void __launch_bounds__(kBwdElementwiseThreads) bwd_dq_convert_kernel(const AttnBwdParams params,
                                                                                const float* __restrict__ accum) {
  const int chunks_per_row = params.head_dim / 8;
  const int64_t chunks = int64_t(params.layout_batch()) * params.seqlen_q * params.heads_q * chunks_per_row;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks; c += stride) {
    // Chunk order (b, i, h, d) follows dq's own layout, so consecutive threads write consecutive bytes.
    const int d = int(c % chunks_per_row) * 8;
    int64_t rest = c / chunks_per_row;
    const int h = int(rest % params.heads_q);
    rest /= params.heads_q;
    const int i = int(rest % params.seqlen_q);
    const int b = int(rest / params.seqlen_q);
    const float* src = accum + ((int64_t(b) * params.heads_q + h) * params.seqlen_q + i) * params.head_dim + d;
    cutlass::AlignedArray<float, 8> acc = *reinterpret_cast<const cutlass::AlignedArray<float, 8>*>(src);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] *= params.scale;
    cutlass::NumericArrayConverter<Element, float, 8> convert;
    Element* dst = static_cast<Element*>(params.dq) + b * params.dq_batch_stride + i * params.dq_row_stride +
                   h * params.dq_head_stride + d;
    const cutlass::Array<Element, 8> converted = convert(acc);
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(&converted);
  }
}

}  // namespace jax_flash
