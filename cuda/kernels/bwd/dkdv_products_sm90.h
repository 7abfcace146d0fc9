// The dK/dV kernel's products on wgmma (sm_90a, bwd/tile_config_sm90.h): each product one batch of the two
// warpgroups (the config says how they split it), operands read straight from shared memory through
// descriptors, the transposed ones MN-major through composed views. Q and dO stages are the last mode of their
// tiles.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/bwd/dkdv_products.h"
#include "kernels/bwd/epilogue.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/mma_sm90.h"

namespace jax_flash {

template <class Cfg>
struct DkdvProducts<Cfg, Wgmma> {
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  // A second copy of the load for whole tiles made the backward 5% slower here (H100, 2026-11-22, D128
  // forward+backward 360.8 -> 341.7 TFLOP/s at 16k), so this one always checks.
  static constexpr bool kSkipChecksOnWholeTiles = false;

  template <class Storage>
  __device__ static auto q_tiles(Storage& storage) {  // (M, D, stage)
    return cute::make_tensor(cute::make_smem_ptr(storage.q.data()), typename Cfg::SmemLayoutQ{});
  }
  template <class Storage>
  __device__ static auto do_tiles(Storage& storage) {  // (M, Dv, stage)
    return cute::make_tensor(cute::make_smem_ptr(storage.dout.data()), typename Cfg::SmemLayoutDo{});
  }
  template <class Storage>
  __device__ static auto q_stage(Storage& storage, int stage) {
    return q_tiles(storage)(cute::_, cute::_, stage);
  }
  template <class Storage>
  __device__ static auto do_stage(Storage& storage, int stage) {
    return do_tiles(storage)(cute::_, cute::_, stage);
  }
  template <class Storage>
  __device__ static auto k_tile(Storage& storage) {
    return cute::make_tensor(cute::make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{})(cute::_, cute::_, 0);
  }
  template <class Storage>
  __device__ static auto v_tile(Storage& storage) {
    return cute::make_tensor(cute::make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{})(cute::_, cute::_, 0);
  }

  template <class Storage>
  __device__ static auto make(Storage& storage, int tid) {
    using namespace cute;
    Tensor sQ = q_tiles(storage);
    Tensor sQt = make_tensor(sQ.data(), typename Cfg::SmemLayoutQt{});
    Tensor sDo = do_tiles(storage);
    Tensor sDot = make_tensor(sDo.data(), typename Cfg::SmemLayoutDot{});
    Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{});
    Tensor sKt = make_tensor(sK.data(), typename Cfg::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{});
    Tensor sP = make_tensor(make_smem_ptr(storage.p.data()), typename Cfg::SmemLayoutPdS{});
    Tensor sPt = make_tensor(sP.data(), typename Cfg::SmemLayoutPdSt{});
    Tensor sDs = make_tensor(make_smem_ptr(storage.ds.data()), typename Cfg::SmemLayoutPdS{});
    Tensor sDst = make_tensor(sDs.data(), typename Cfg::SmemLayoutPdSt{});

    typename Cfg::TiledMmaSdP mma_sdp;
    auto thr_sdp = mma_sdp.get_thread_slice(tid);
    Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);    // (MMA, M, K, stage)
    Tensor tSrK = thr_sdp.partition_fragment_B(sK(_, _, 0));
    Tensor tSrDo = thr_sdp.partition_fragment_A(sDo);  // (MMA, M, K, stage)
    Tensor tSrV = thr_sdp.partition_fragment_B(sV(_, _, 0));
    auto s_dp = [=](auto& acc_s, auto& acc_dp, int stage) mutable {
      wgmma_batch([&] {
        wgmma_issue<true>(mma_sdp, tSrQ(_, _, _, stage), tSrK, acc_s);
        wgmma_issue<true>(mma_sdp, tSrDo(_, _, _, stage), tSrV, acc_dp);
      }, acc_s, acc_dp);
    };

    auto smem_store_pds = make_tiled_copy_C(typename Cfg::SmemStoreAtomPdS{}, mma_sdp);
    auto thr_store_pds = smem_store_pds.get_thread_slice(tid);
    Tensor tPsP = thr_store_pds.partition_D(sP(_, _, 0));
    Tensor tPsDs = thr_store_pds.partition_D(sDs(_, _, 0));
    auto store_p_ds = [=](auto const& rP, auto const& rDs) mutable {
      copy(smem_store_pds, thr_store_pds.retile_S(rP), tPsP);
      copy(smem_store_pds, thr_store_pds.retile_S(rDs), tPsDs);
    };

    typename Cfg::TiledMmaDkDv mma_dkdv;
    auto thr_dkdv = mma_dkdv.get_thread_slice(tid);
    Tensor tdVrPt = thr_dkdv.partition_fragment_A(sPt(_, _, 0));
    Tensor tdKrDst = thr_dkdv.partition_fragment_A(sDst(_, _, 0));
    Tensor tdVrDot = thr_dkdv.partition_fragment_B(sDot);  // (MMA, Dv, M, stage)
    Tensor tdKrQt = thr_dkdv.partition_fragment_B(sQt);    // (MMA, D, M, stage)
    auto dv_dk = [=](auto& acc_dv, auto& acc_dk, int stage) mutable {
      wgmma_batch([&] {
        wgmma_issue<false>(mma_dkdv, tdVrPt, tdVrDot(_, _, _, stage), acc_dv);
        wgmma_issue<false>(mma_dkdv, tdKrDst, tdKrQt(_, _, _, stage), acc_dk);
      }, acc_dv, acc_dk);
    };

    // dQ (kBlockM, kHeadDim) = dS K, accumulated in fp32 by atomics across the key blocks.
    typename Cfg::TiledMmaDq mma_dq;
    auto thr_dq = mma_dq.get_thread_slice(tid);
    Tensor tdQrDs = thr_dq.partition_fragment_A(sDs(_, _, 0));
    Tensor tdQrKt = thr_dq.partition_fragment_B(sKt(_, _, 0));
    Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    auto dq = [=](float* dq_rows, int rows, int head_dim) mutable {
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
      wgmma_gemm<true>(mma_dq, tdQrDs, tdQrKt, acc_dq);
      atomic_add_acc(acc_dq, tdQcdQ, dq_rows, head_dim, rows, head_dim);
    };
    return DkdvProductSet{s_dp, store_p_ds, dv_dk, dq};
  }
};

}  // namespace jax_flash
