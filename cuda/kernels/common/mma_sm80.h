// Warp-level GEMM loops over the k dimension of a tiled SM80 mma, with the shared-memory -> register
// (ldmatrix) copy of k-slice i+1 issued before the mma of slice i so the two overlap.
// Shared by the forward and backward kernels.
#pragma once

#include <cute/tensor.hpp>

namespace jax_flash {

// acc += A * B^T (kZeroInit: acc = A * B^T, no clearing pass: the first mma reads zero registers, which
// the compiler folds into the instruction), both operands in shared memory.
// tCrA / tCrB: register fragments (thr_mma.partition_fragment_A/B); tCsA / tCsB: the smem copy partitions
// (smem_thr_copy.partition_S) of the same tiles.
template <bool kZeroInit = false, class Acc, class FragA, class FragB, class SmemA, class SmemB, class TiledMma, class CopyA,
          class CopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, FragA& tCrA, FragB& tCrB, SmemA const& tCsA,
                                        SmemB const& tCsB, TiledMma const& tiled_mma,
                                        CopyA const& copy_a, CopyB const& copy_b) {
  using namespace cute;
  auto tCrA_view = copy_a.get_slice(threadIdx.x).retile_D(tCrA);
  auto tCrB_view = copy_b.get_slice(threadIdx.x).retile_D(tCrB);
  constexpr int kSlices = decltype(size<2>(tCrA))::value;
  copy(copy_a, tCsA(_, _, 0), tCrA_view(_, _, 0));
  copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
  CUTE_UNROLL
  for (int i = 0; i < kSlices; ++i) {
    if (i + 1 < kSlices) {
      copy(copy_a, tCsA(_, _, i + 1), tCrA_view(_, _, i + 1));
      copy(copy_b, tCsB(_, _, i + 1), tCrB_view(_, _, i + 1));
    }
    if (kZeroInit && i == 0) {
      auto zero = make_fragment_like(acc);
      clear(zero);
      cute::gemm(tiled_mma, acc, tCrA(_, _, 0), tCrB(_, _, 0), zero);
    } else {
      cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc);
    }
  }
}

// acc += A * B^T with A already in registers (e.g. the probabilities P), B in shared memory.
template <class Acc, class FragA, class FragB, class SmemB, class TiledMma, class CopyB>
__device__ __forceinline__ void gemm_rs(Acc& acc, FragA const& tCrA, FragB& tCrB, SmemB const& tCsB,
                                        TiledMma const& tiled_mma, CopyB const& copy_b) {
  using namespace cute;
  auto tCrB_view = copy_b.get_slice(threadIdx.x).retile_D(tCrB);
  constexpr int kSlices = decltype(size<2>(tCrA))::value;
  copy(copy_b, tCsB(_, _, 0), tCrB_view(_, _, 0));
  CUTE_UNROLL
  for (int i = 0; i < kSlices; ++i) {
    if (i + 1 < kSlices) copy(copy_b, tCsB(_, _, i + 1), tCrB_view(_, _, i + 1));
    cute::gemm(tiled_mma, tCrA(_, _, i), tCrB(_, _, i), acc);
  }
}

}  // namespace jax_flash
