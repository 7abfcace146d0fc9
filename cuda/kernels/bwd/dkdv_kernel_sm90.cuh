// Backward dK / dV (and atomic dQ) on Hopper: the algorithm of bwd_dkdv_kernel.cuh, one CTA per (key block,
// kv head, sequence) walking every (query head of the group, query block) step, with the five products as
// wgmma batches reading shared memory directly (bwd_tile_config_sm90.h says how the two warpgroups split them).
//
// Per step (Q, dO double-buffered; K, V resident):
//   barrier  | prefetch Q, dO of the next step
//   S = Q K^T, dP = dO V^T           one batch
//   P, dS (bwd_math.h)  -> shared memory
//   barrier  | dV += P^T dO, dK += dS^T Q   one batch;  dQ = dS K -> fp32 atomics
#pragma once

#include <cute/tensor.hpp>

#include "kernels/bwd/dkdv_loads.h"
#include "kernels/bwd/math.h"
#include "kernels/bwd/tile_config_sm90.h"
#include "kernels/common/copy.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mask.h"
#include "kernels/common/mma_sm90.h"
#include "kernels/common/seqlen.h"
#include "kernels/common/softmax.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg>
__device__ __forceinline__ void bwd_dkdv_tile_sm90(const AttnBwdParams& params, const float* __restrict__ delta,
                                                   float* __restrict__ dq_accum) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  using TileMN = Shape<Int<kBlockM>, Int<kBlockN>>;

  extern __shared__ __align__(1024) char smem_raw[];
  Element* smem = reinterpret_cast<Element*>(smem_raw);

  const int tid = threadIdx.x;
  const TileCoord tile = schedule_tile<kBlockN, TileAxis::kKey>(params, /*reverse=*/false);
  if (tile.bidb < 0) return;
  const DkdvWork<kBlockM, kBlockN> work(params, tile);
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);

  Tensor sQ = make_tensor(make_smem_ptr(smem), typename Cfg::SmemLayoutQ{});  // (M, D, stage)
  Tensor sQt = make_tensor(make_smem_ptr(smem), typename Cfg::SmemLayoutQt{});
  Tensor sDo = make_tensor(make_smem_ptr(smem + Cfg::kOffDo), typename Cfg::SmemLayoutDo{});
  Tensor sDot = make_tensor(make_smem_ptr(smem + Cfg::kOffDo), typename Cfg::SmemLayoutDot{});
  Tensor sK = make_tensor(make_smem_ptr(smem + Cfg::kOffK), typename Cfg::SmemLayoutK{});
  Tensor sKt = make_tensor(make_smem_ptr(smem + Cfg::kOffK), typename Cfg::SmemLayoutKt{});
  Tensor sV = make_tensor(make_smem_ptr(smem + Cfg::kOffV), typename Cfg::SmemLayoutV{});
  Tensor sP = make_tensor(make_smem_ptr(smem + Cfg::kOffP), typename Cfg::SmemLayoutPdS{});
  Tensor sPt = make_tensor(make_smem_ptr(smem + Cfg::kOffP), typename Cfg::SmemLayoutPdSt{});
  Tensor sDs = make_tensor(make_smem_ptr(smem + Cfg::kOffDs), typename Cfg::SmemLayoutPdS{});
  Tensor sDst = make_tensor(make_smem_ptr(smem + Cfg::kOffDs), typename Cfg::SmemLayoutPdSt{});

  // Global -> shared copies: bwd_dkdv_tiles.h.
  auto load_q_do = [&](int step, int stage) {
    int bidh, m_block;
    work.query_tile(step, params.kv_group, bidh, m_block);
    load_q_do_tiles<Cfg, /*kSkipChecksOnWholeTiles=*/false>(params, work.seq, work.bidb, bidh, m_block,
                                                            sQ(_, _, stage), sDo(_, _, stage), tid);
  };

  if (work.steps > 0) {
    load_k_v_tiles<Cfg>(params, work.seq, work.bidb, work.bidhk, work.n0, sK(_, _, 0), sV(_, _, 0), tid);
    load_q_do(0, 0);
    cp_async_fence();
  }

  // ---- Products (descriptors over shared memory) ------------------------------------------------------------
  typename Cfg::TiledMmaSdP mma_sdp;
  auto thr_sdp = mma_sdp.get_thread_slice(tid);
  Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);     // (MMA, M, K, stage)
  Tensor tSrK = thr_sdp.partition_fragment_B(sK(_, _, 0));
  Tensor tSrDo = thr_sdp.partition_fragment_A(sDo);   // (MMA, M, K, stage)
  Tensor tSrV = thr_sdp.partition_fragment_B(sV(_, _, 0));
  Tensor tScS = rowcol_view(thr_sdp.partition_C(make_identity_tensor(TileMN{})));
  constexpr int kRows = decltype(size<0>(tScS))::value;

  auto smem_store_pds = make_tiled_copy_C(typename Cfg::SmemStoreAtomPdS{}, mma_sdp);
  auto thr_store_pds = smem_store_pds.get_thread_slice(tid);
  Tensor tPsP = thr_store_pds.partition_D(sP(_, _, 0));
  Tensor tPsDs = thr_store_pds.partition_D(sDs(_, _, 0));

  typename Cfg::TiledMmaDkDv mma_dkdv;
  auto thr_dkdv = mma_dkdv.get_thread_slice(tid);
  Tensor tdVrPt = thr_dkdv.partition_fragment_A(sPt(_, _, 0));
  Tensor tdKrDst = thr_dkdv.partition_fragment_A(sDst(_, _, 0));
  Tensor tdVrDot = thr_dkdv.partition_fragment_B(sDot);  // (MMA, Dv, M, stage)
  Tensor tdKrQt = thr_dkdv.partition_fragment_B(sQt);    // (MMA, D, M, stage)
  Tensor acc_dv = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<kHeadDimV>>{});
  Tensor acc_dk = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  clear(acc_dv);
  clear(acc_dk);

  typename Cfg::TiledMmaDq mma_dq;
  auto thr_dq = mma_dq.get_thread_slice(tid);
  Tensor tdQrDs = thr_dq.partition_fragment_A(sDs(_, _, 0));
  Tensor tdQrKt = thr_dq.partition_fragment_B(sKt(_, _, 0));
  Tensor tdQcdQ = thr_dq.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));

  for (int step = 0; step < work.steps; ++step) {
    const int stage = step & 1;
    int bidh, m_block;
    work.query_tile(step, params.kv_group, bidh, m_block);
    const int row0 = m_block * kBlockM;

    BwdRowStats<kRows> stats;
    stats.load(tScS, params.lse + work.seq.lse_offset(params.lse_batch_stride, params.lse_head_stride, work.bidb, bidh),
               delta + work.seq.scratch_row(params, work.bidb, bidh), row0, work.seq.seqlen_q);

    cp_async_wait<0>();
    publish_smem_writes<true>();
    __syncthreads();  // this step's tiles landed; every warpgroup is done with the other stage and P / dS
    if (step + 1 < work.steps) {
      load_q_do(step + 1, stage ^ 1);
      cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma_sdp, TileMN{});
    Tensor acc_dp = partition_fragment_C(mma_sdp, TileMN{});
    wgmma_batch([&] {
      wgmma_issue<true>(mma_sdp, tSrQ(_, _, _, stage), tSrK, acc_s);
      wgmma_issue<true>(mma_sdp, tSrDo(_, _, _, stage), tSrV, acc_dp);
    }, acc_s, acc_dp);

    Tensor scores = rowcol_view(acc_s);
    Tensor dscores = rowcol_view(acc_dp);
    const bool needs_mask = !work.mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, work.n_block);
    probs_and_dscores(scores, dscores, tScS, stats, score_scale, work.mask, needs_mask, row0, work.n0);

    Tensor rP = convert_fragment<Element>(acc_s);
    Tensor rDs = convert_fragment<Element>(acc_dp);
    copy(smem_store_pds, thr_store_pds.retile_S(rP), tPsP);
    copy(smem_store_pds, thr_store_pds.retile_S(rDs), tPsDs);
    publish_smem_writes<true>();
    __syncthreads();

    wgmma_batch([&] {
      wgmma_issue<false>(mma_dkdv, tdVrPt, tdVrDot(_, _, _, stage), acc_dv);
      wgmma_issue<false>(mma_dkdv, tdKrDst, tdKrQt(_, _, _, stage), acc_dk);
    }, acc_dv, acc_dk);

    // dQ(kBlockM, kHeadDim) += dS K, accumulated in fp32 by atomics across the key blocks.
    Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    wgmma_gemm<true>(mma_dq, tdQrDs, tdQrKt, acc_dq);
    float* dq_rows = dq_accum + (work.seq.scratch_row(params, work.bidb, bidh) + row0) * params.head_dim;
    atomic_add_acc(acc_dq, tdQcdQ, dq_rows, params.head_dim, work.seq.seqlen_q - row0, params.head_dim);
  }

  store_dk_dv<Cfg>(params, work.seq, work.bidb, work.bidhk, work.n0, thr_dkdv, acc_dk, acc_dv);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_dkdv_kernel_sm90(const AttnBwdParams params, const float* __restrict__ delta, float* __restrict__ dq_accum) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  bwd_dkdv_tile_sm90<Cfg>(params, delta, dq_accum);
#endif
}

}  // namespace jax_flash
