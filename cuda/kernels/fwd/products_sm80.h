// The forward's products on mma.sync (every GPU, fwd/tile_config.h): per warp, operands staged from shared
// memory through registers with ldmatrix (common/mma_sm80.h).
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/fragment.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/fwd/products.h"

namespace jax_flash {

template <class Cfg>
struct FwdProducts<Cfg, MmaSync> {
  // sQ: (kBlockM, kHeadDim); sK: (kBlockN, kHeadDim, stages).
  template <class SQ, class SK>
  __device__ __forceinline__ static auto make_qk(SQ const& sQ, SK const& sK, int tidx) {
    using namespace cute;
    typename Cfg::TiledMmaS mma;
    auto thr = mma.get_thread_slice(tidx);
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

  // sVt: (kHeadDimV, kBlockN, stages), the transposed view of V.
  template <class SVt>
  __device__ __forceinline__ static auto make_pv(SVt const& sVt, int tidx) {
    using namespace cute;
    typename Cfg::TiledMma mma;
    auto thr = mma.get_thread_slice(tidx);
    Tensor tOrVt = thr.partition_fragment_B(sVt(_, _, 0));
    auto copy_v = make_tiled_copy_B(typename Cfg::SmemCopyAtomVt{}, mma);
    Tensor tOsVt = copy_v.get_thread_slice(tidx).partition_S(sVt);  // (CPY, Dv, N, stage)
    return [=](auto& acc_o, auto& p, int stage) mutable {
      Tensor tOrP = make_tensor(p.data(), acc_as_a_layout(p.layout()));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), mma, copy_v);
    };
  }
};

}  // namespace jax_flash
