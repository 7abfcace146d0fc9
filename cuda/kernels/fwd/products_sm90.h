// The forward's products on wgmma (sm_90a, fwd/tile_config_sm90.h): per warpgroup, Q / K / V read by the
// tensor cores straight from shared memory through descriptors, P from registers (common/mma_sm90.h).
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/fragment.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/mma_sm90.h"
#include "kernels/fwd/products.h"

namespace jax_flash {

template <class Cfg>
struct FwdProducts<Cfg, Wgmma> {
  // sQ: (kBlockM, kHeadDim); sK: (kBlockN, kHeadDim, stages).
  template <class SQ, class SK>
  __device__ __forceinline__ static auto make_qk(SQ const& sQ, SK const& sK, int tidx) {
    using namespace cute;
    typename Cfg::TiledMmaS mma;
    auto thr = mma.get_thread_slice(tidx);
    Tensor tSrQ = thr.partition_fragment_A(sQ);  // descriptors
    Tensor tSrK = thr.partition_fragment_B(sK);  // (MMA, N, K, stage)
    return [=](auto& acc_s, int stage) mutable { wgmma_gemm<true>(mma, tSrQ, tSrK(_, _, _, stage), acc_s); };
  }

  // sVt: (kHeadDimV, kBlockN, stages), the transposed view of V.
  template <class SVt>
  __device__ __forceinline__ static auto make_pv(SVt const& sVt, int tidx) {
    using namespace cute;
    typename Cfg::TiledMma mma;
    auto thr = mma.get_thread_slice(tidx);
    Tensor tOrVt = thr.partition_fragment_B(sVt);  // descriptors (MMA, Dv, N, stage)
    return [=](auto& acc_o, auto& p, int stage) mutable {
      Tensor tOrP = make_tensor(p.data(), acc_as_a_layout(p.layout()));
      warpgroup_fence_operand(tOrP);
      wgmma_gemm<false>(mma, tOrP, tOrVt(_, _, _, stage), acc_o);
    };
  }
};

}  // namespace jax_flash
