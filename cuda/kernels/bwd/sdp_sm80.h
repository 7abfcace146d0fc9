// The recomputed S = Q K^T and dP = dO V^T of the mma.sync backward kernels (dK/dV and dq): both products of a
// (kBlockM, kBlockN) tile with both operands read from shared memory through ldmatrix (common/mma_sm80.h).
// The dK/dV kernel multi-buffers Q and dO, the dq kernel K and V: each passes its stage as an element offset
// of the buffered operands (0 for the resident ones).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/detail/helper_macros.hpp>

#include "kernels/common/mma_sm80.h"
#include "kernels/common/tile_atoms.h"

namespace jax_flash {

// Returns s_dp(acc_s, acc_dp, q_offset, do_offset, k_offset, v_offset): acc_s = Q K^T, acc_dp = dO V^T over
// the (kBlockM, kHeadDim) Q, (kBlockM, kHeadDimV) dO, (kBlockN, kHeadDim) K and (kBlockN, kHeadDimV) V tiles,
// each shifted by its offset (another stage of it).
template <class Element, class TiledMma, class SmemCopyAtom, int kBlockM, int kBlockN, int kHeadDim, int kHeadDimV,
          class SQ, class SDo, class SK, class SV>
__device__ __forceinline__ auto make_sdp_sm80(SQ const& sQ, SDo const& sDo, SK const& sK, SV const& sV, int tid) {
  using namespace cute;
  TiledMma mma;
  Tensor tSrQ = make_tensor<Element>(partition_shape_A(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tSrK = make_tensor<Element>(partition_shape_B(mma, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tSrDo = make_tensor<Element>(partition_shape_A(mma, Shape<Int<kBlockM>, Int<kHeadDimV>>{}));
  Tensor tSrV = make_tensor<Element>(partition_shape_B(mma, Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  auto copy_a = make_tiled_copy_A(SmemCopyAtom{}, mma);
  auto copy_b = make_tiled_copy_B(SmemCopyAtom{}, mma);
  Tensor tSsQ = copy_a.get_thread_slice(tid).partition_S(sQ);
  Tensor tSsDo = copy_a.get_thread_slice(tid).partition_S(sDo);
  Tensor tSsK = copy_b.get_thread_slice(tid).partition_S(sK);
  Tensor tSsV = copy_b.get_thread_slice(tid).partition_S(sV);
  // Force-inlined for the reason given in dkdv_products_sm80.h: the dK/dV loop's address math stays one piece.
  return [=](auto& acc_s, auto& acc_dp, int q_offset, int do_offset, int k_offset, int v_offset) mutable
         CUTLASS_LAMBDA_FUNC_INLINE {
    clear(acc_s);
    clear(acc_dp);
    gemm_ss(acc_s, tSrQ, tSrK, shifted(tSsQ, q_offset), shifted(tSsK, k_offset), mma, copy_a, copy_b);
    gemm_ss(acc_dp, tSrDo, tSrV, shifted(tSsDo, do_offset), shifted(tSsV, v_offset), mma, copy_a, copy_b);
  };
}

}  // namespace jax_flash
