// The two products of the forward mainloop, S = Q K^T and O += P V, for either tile config:
//   kWgmma = false (tile_config.h):     mma.sync per warp, operands staged through registers with ldmatrix
//                                        (gemm.h);
//   kWgmma = true  (tile_config_sm90.h): wgmma per warpgroup, Q / K / V read by the tensor cores straight from
//                                        shared memory through descriptors, P from registers.
// make_qk_gemm / make_pv_gemm partition the shared tiles once and return the per-step product as a callable,
// so fwd_kernel.cuh is the same for both.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/fragment.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/common/mma_sm90.h"

namespace jax_flash {

// Returns qk(acc_s, stage): acc_s = Q K[stage]^T. sQ: (kBlockM, kHeadDim); sK: (kBlockN, kHeadDim, stages).
template <class Cfg, class SQ, class SK>
__device__ __forceinline__ auto make_qk_gemm(SQ const& sQ, SK const& sK, int tidx) {
  using namespace cute;
  typename Cfg::TiledMmaS mma;
  auto thr = mma.get_thread_slice(tidx);
  if constexpr (Cfg::kWgmma) {
    Tensor tSrQ = thr.partition_fragment_A(sQ);  // descriptors
    Tensor tSrK = thr.partition_fragment_B(sK);  // (MMA, N, K, stage)
    return [=](auto& acc_s, int stage) mutable { wgmma_gemm<true>(mma, tSrQ, tSrK(_, _, _, stage), acc_s); };
  } else {
    Tensor tSrQ = thr.partition_fragment_A(sQ);
    Tensor tSrK = thr.partition_fragment_B(sK(_, _, 0));
    auto copy_q = make_tiled_copy_A(typename Cfg::SmemCopyAtomQK{}, mma);
    auto copy_k = make_tiled_copy_B(typename Cfg::SmemCopyAtomQK{}, mma);
    Tensor tSsQ = copy_q.get_thread_slice(tidx).partition_S(sQ);
    Tensor tSsK = copy_k.get_thread_slice(tidx).partition_S(sK);  // (CPY, N, K, stage)
    return [=](auto& acc_s, int stage) mutable {
      gemm_ss</*kZeroInit=*/true>(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), mma, copy_q, copy_k);
    };
  }
}

// Returns pv(acc_o, p, stage): acc_o += P V[stage], p the element-typed probabilities in the accumulator
// layout of S. sVt: (kHeadDimV, kBlockN, stages), the transposed view of V.
template <class Cfg, class SVt>
__device__ __forceinline__ auto make_pv_gemm(SVt const& sVt, int tidx) {
  using namespace cute;
  typename Cfg::TiledMma mma;
  auto thr = mma.get_thread_slice(tidx);
  if constexpr (Cfg::kWgmma) {
    Tensor tOrVt = thr.partition_fragment_B(sVt);  // descriptors (MMA, Dv, N, stage)
    return [=](auto& acc_o, auto& p, int stage) mutable {
      Tensor tOrP = make_tensor(p.data(), acc_as_a_layout(p.layout()));
      warpgroup_fence_operand(tOrP);
      wgmma_gemm<false>(mma, tOrP, tOrVt(_, _, _, stage), acc_o);
    };
  } else {
    Tensor tOrVt = thr.partition_fragment_B(sVt(_, _, 0));
    auto copy_v = make_tiled_copy_B(typename Cfg::SmemCopyAtomVt{}, mma);
    Tensor tOsVt = copy_v.get_thread_slice(tidx).partition_S(sVt);  // (CPY, Dv, N, stage)
    return [=](auto& acc_o, auto& p, int stage) mutable {
      Tensor tOrP = make_tensor(p.data(), acc_as_a_layout(p.layout()));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), mma, copy_v);
    };
  }
}

}  // namespace jax_flash
