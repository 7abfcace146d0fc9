// The small memory-bound kernels around the backward mainloops:
//   bwd_delta_kernel:      delta_i = sum_d dout[i, d] * out[i, d] - dlse_i  (fp32, one warp per query row)
//   bwd_dq_convert_kernel: dq = scale * dq_accum, in the element type (atomic dq path only)
#pragma once

#include <cuda_runtime.h>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

constexpr int kBwdElementwiseThreads = 256;

// delta is (B, Hq, Sq) contiguous ((1, Hq, Tq) when packed: every row, padding included). Reads 16 bytes per lane per step: head_dim_v % 8 == 0.
template <typename Element>
__global__ void __launch_bounds__(kBwdElementwiseThreads) bwd_delta_kernel(const AttnBwdParams params,
                                                                           float* __restrict__ delta) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = int64_t(params.layout_batch()) * params.heads_q * params.seqlen_q;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; row < rows; row += warps) {
    const int i = int(row % params.seqlen_q);
    const int h = int((row / params.seqlen_q) % params.heads_q);
    const int b = int(row / (int64_t(params.seqlen_q) * params.heads_q));
    const Element* out = static_cast<const Element*>(params.out) + b * params.out_batch_stride +
                         i * params.out_row_stride + h * params.out_head_stride;
    const Element* dout = static_cast<const Element*>(params.dout) + b * params.dout_batch_stride +
                          i * params.dout_row_stride + h * params.dout_head_stride;
    float sum = 0.f;
    for (int d = lane * 8; d < params.head_dim_v; d += 32 * 8) {
      cutlass::AlignedArray<Element, 8> o = *reinterpret_cast<const cutlass::AlignedArray<Element, 8>*>(out + d);
      cutlass::AlignedArray<Element, 8> g = *reinterpret_cast<const cutlass::AlignedArray<Element, 8>*>(dout + d);
#pragma unroll
      for (int j = 0; j < 8; ++j) sum += float(o[j]) * float(g[j]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (lane == 0) {
      const float dlse = params.dlse == nullptr
                             ? 0.f
                             : params.dlse[b * params.lse_batch_stride + h * params.lse_head_stride + i];
      delta[row] = sum - dlse;
    }
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
