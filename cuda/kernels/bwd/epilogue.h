// Writing fp32 accumulator fragments of the backward kernels straight from registers:
//   store_acc_rows:  scaled, converted to the element type, 2 adjacent columns (32 bits) per store;
//   atomic_add_acc:  fp32 atomics into the dq accumulator (float2 atomics on sm_90).
// Both take the fragment's identity coordinates and write only rows < rows, cols < cols. An m16n8
// accumulator holds each row's columns in adjacent pairs (values 2i, 2i+1), and head dims are multiples of 8,
// so a pair is all in or all out.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/array.h>

#include <cstdint>

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

}  // namespace jax_flash
