// The backward's epilogue: fp32 accumulator fragments written straight from registers.
//   store_acc_rows:  scaled, converted to the element type, 2 adjacent columns (32 bits) per store;
//   atomic_add_acc:  fp32 atomics into the dq accumulator (float2 atomics on sm_90);
//   store_dk_dv:     a dK/dV CTA's rows of dK (times scale) and dV, one MMA's partition or one each.
// Both take the fragment's identity coordinates and write only rows < rows, cols < cols. An m16n8
// accumulator holds each row's columns in adjacent pairs (values 2i, 2i+1), and head dims are multiples of 8,
// so a pair is all in or all out.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>

#include <cstdint>

#include "kernels/common/seqlen.h"
#include "kernels/params.h"

namespace jax_flash {

template <typename Element, class Acc, class Coords>
__device__ __forceinline__ void store_acc_rows(Acc const& acc, Coords const& coords, Element* __restrict__ base,
                                               int64_t row_stride, int rows, int cols, float multiplier) {
  using namespace cute;
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    const int r = get<0>(coords(i));
    const int c = get<1>(coords(i));
    if (r < rows && c < cols) {
      cutlass::AlignedArray<Element, 2> pair;
      pair[0] = Element(acc(i) * multiplier);
      pair[1] = Element(acc(i + 1) * multiplier);
      *reinterpret_cast<cutlass::AlignedArray<Element, 2>*>(base + r * row_stride + c) = pair;
    }
  }
}

// dst row r, column c is base[r * row_stride + c]; the tile is small, so offsets within it are 32-bit.
template <class Acc, class Coords>
__device__ __forceinline__ void atomic_add_acc(Acc const& acc, Coords const& coords, float* __restrict__ base,
                                               int row_stride, int rows, int cols) {
  using namespace cute;
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    const int r = get<0>(coords(i));
    const int c = get<1>(coords(i));
    if (r < rows && c < cols) {
      float* dst = base + r * row_stride + c;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float2*>(dst), make_float2(acc(i), acc(i + 1)));
#else
      atomicAdd(dst, acc(i));
      atomicAdd(dst + 1, acc(i + 1));
#endif
    }
  }
}

// Writes the CTA's dK (times scale) and dV rows from fp32 accumulators of the (kBlockN, D) / (kBlockN, Dv)
// products partitioned by thr_dk / thr_dv (the warp-specialized kernel's split layout splits D and Dv between
// its warpgroups in products of their own). Every row of the CTA's keys is written: keys no query sees keep
// zeros.
template <class Cfg, class ThrMmaK, class AccK, class ThrMmaV, class AccV>
__device__ __forceinline__ void store_dk_dv(const AttnBwdParams& params, const SeqlenInfo& seq, int bidb,
                                            int bidhk, int n0, ThrMmaK const& thr_dk, AccK const& acc_dk,
                                            ThrMmaV const& thr_dv, AccV const& acc_dv) {
  using namespace cute;
  using Element = typename Cfg::Element;
  const int keys_left = seq.seqlen_k - n0;
  Tensor tdKc = thr_dk.partition_C(make_identity_tensor(Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDim>>{}));
  Tensor tdVc = thr_dv.partition_C(make_identity_tensor(Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDimV>>{}));
  Element* dk = static_cast<Element*>(params.dk) + seq.k_offset(params.dk_batch_stride, params.dk_row_stride, bidb) +
                int64_t(n0) * params.dk_row_stride + int64_t(bidhk) * params.dk_head_stride;
  Element* dv = static_cast<Element*>(params.dv) + seq.k_offset(params.dv_batch_stride, params.dv_row_stride, bidb) +
                int64_t(n0) * params.dv_row_stride + int64_t(bidhk) * params.dv_head_stride;
  store_acc_rows(acc_dk, tdKc, dk, params.dk_row_stride, keys_left, params.head_dim, params.scale);
  store_acc_rows(acc_dv, tdVc, dv, params.dv_row_stride, keys_left, params.head_dim_v, 1.f);
}

// dK and dV partitioned by one MMA (the mma.sync kernels).
template <class Cfg, class ThrMma, class AccK, class AccV>
__device__ __forceinline__ void store_dk_dv(const AttnBwdParams& params, const SeqlenInfo& seq, int bidb,
                                            int bidhk, int n0, ThrMma const& thr_mma, AccK const& acc_dk,
                                            AccV const& acc_dv) {
  store_dk_dv<Cfg>(params, seq, bidb, bidhk, n0, thr_mma, acc_dk, thr_mma, acc_dv);
}

}  // namespace jax_flash
