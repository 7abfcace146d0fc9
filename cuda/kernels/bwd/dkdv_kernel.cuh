// Backward dK / dV: one CTA per (key block, kv head, sequence).
//
// The CTA keeps its K and V tiles in shared memory and the fp32 dK, dV accumulators in registers, and walks
// every (query head of its kv group) x (query block that can see the key block) step:
//   S = Q K^T, dP = dO V^T             recomputed, (kBlockM, kBlockN)
//   P, dS                              bwd_math.h, staged in shared memory as the element type
//   dV += P^T dO, dK += dS^T Q         P / dS / Q / dO read transposed from shared memory (ldmatrix.trans)
//   [kAtomicDq] dQ += dS K             fp32 atomics into the workspace accumulator
// The GQA sum over query heads happens inside the CTA in a fixed order, so dK / dV are deterministic.
// Q and dO of the next step are prefetched (cp.async) into a second buffer while this one computes.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/bwd/dkdv_loads.h"
#include "kernels/bwd/math.h"
#include "kernels/bwd/tile_config.h"
#include "kernels/common/copy.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mask.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/common/seqlen.h"
#include "kernels/common/softmax.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg, bool kAtomicDq>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_dkdv_kernel(const AttnBwdParams params, const float* __restrict__ delta, float* __restrict__ dq_accum) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  using TileMN = Shape<Int<kBlockM>, Int<kBlockN>>;

  // One dynamic shared array for every kernel of the backward's translation unit: the wgmma dK/dV kernel's
  // 1024-byte alignment (bwd_dkdv_kernel_sm90.cuh) is the one all of them get, so all of them say it.
  extern __shared__ __align__(1024) char smem_raw[];
  Element* smem = reinterpret_cast<Element*>(smem_raw);

  const int tid = threadIdx.x;
  const TileCoord tile = schedule_tile<kBlockN, TileAxis::kKey>(params, /*reverse=*/false);
  if (tile.bidb < 0) return;
  const DkdvWork<kBlockM, kBlockN> work(params, tile);
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);

  // Shared-memory tiles (stage 0 of Q / dO; shifted() reaches stage 1).
  Tensor sQ = make_tensor(make_smem_ptr(smem), typename Cfg::SmemLayoutQ{});
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
    load_q_do_tiles<Cfg, /*kSkipChecksOnWholeTiles=*/true>(params, work.seq, work.bidb, bidh, m_block,
                                                           shifted(sQ, stage * Cfg::kQElems),
                                                           shifted(sDo, stage * Cfg::kDoElems), tid);
  };

  if (work.steps > 0) {
    load_k_v_tiles<Cfg>(params, work.seq, work.bidb, work.bidhk, work.n0, sK, sV, tid);
    load_q_do(0, 0);
    cp_async_fence();
  }

  // S, dP: (kBlockM, kBlockN), both operands read straight from shared memory.
  typename Cfg::TiledMmaSdP mma_sdp;
  auto thr_sdp = mma_sdp.get_thread_slice(tid);
  Tensor tSrQ = make_tensor<Element>(partition_shape_A(mma_sdp, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tSrK = make_tensor<Element>(partition_shape_B(mma_sdp, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tSrDo = make_tensor<Element>(partition_shape_A(mma_sdp, Shape<Int<kBlockM>, Int<kHeadDimV>>{}));
  Tensor tSrV = make_tensor<Element>(partition_shape_B(mma_sdp, Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  auto smem_copy_a_sdp = make_tiled_copy_A(typename Cfg::SmemCopyAtom{}, mma_sdp);
  auto smem_copy_b_sdp = make_tiled_copy_B(typename Cfg::SmemCopyAtom{}, mma_sdp);
  Tensor tSsQ = smem_copy_a_sdp.get_thread_slice(tid).partition_S(sQ);
  Tensor tSsDo = smem_copy_a_sdp.get_thread_slice(tid).partition_S(sDo);
  Tensor tSsK = smem_copy_b_sdp.get_thread_slice(tid).partition_S(sK);
  Tensor tSsV = smem_copy_b_sdp.get_thread_slice(tid).partition_S(sV);
  Tensor tScS = rowcol_view(thr_sdp.partition_C(make_identity_tensor(TileMN{})));
  constexpr int kRows = decltype(size<0>(tScS))::value;

  // P, dS registers -> shared memory.
  auto smem_store_pds = make_tiled_copy_C(typename Cfg::SmemStoreAtomPdS{}, mma_sdp);
  auto thr_store_pds = smem_store_pds.get_thread_slice(tid);
  Tensor tPsP = thr_store_pds.partition_D(sP);
  Tensor tPsDs = thr_store_pds.partition_D(sDs);

  // dV, dK: (kBlockN, head dim); A = P^T / dS^T, B = dO^T / Q^T, all transposed reads.
  typename Cfg::TiledMmaDkDv mma_dkdv;
  auto thr_dkdv = mma_dkdv.get_thread_slice(tid);
  Tensor tdVrPt = make_tensor<Element>(partition_shape_A(mma_dkdv, Shape<Int<kBlockN>, Int<kBlockM>>{}));
  Tensor tdVrDot = make_tensor<Element>(partition_shape_B(mma_dkdv, Shape<Int<kHeadDimV>, Int<kBlockM>>{}));
  Tensor tdKrDst = make_tensor<Element>(partition_shape_A(mma_dkdv, Shape<Int<kBlockN>, Int<kBlockM>>{}));
  Tensor tdKrQt = make_tensor<Element>(partition_shape_B(mma_dkdv, Shape<Int<kHeadDim>, Int<kBlockM>>{}));
  auto smem_copy_a_dkdv = make_tiled_copy_A(typename Cfg::SmemCopyAtomT{}, mma_dkdv);
  auto smem_copy_b_dkdv = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma_dkdv);
  Tensor tdVsPt = smem_copy_a_dkdv.get_thread_slice(tid).partition_S(sPt);
  Tensor tdKsDst = smem_copy_a_dkdv.get_thread_slice(tid).partition_S(sDst);
  Tensor tdVsDot = smem_copy_b_dkdv.get_thread_slice(tid).partition_S(sDot);
  Tensor tdKsQt = smem_copy_b_dkdv.get_thread_slice(tid).partition_S(sQt);
  Tensor acc_dv = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<kHeadDimV>>{});
  Tensor acc_dk = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  clear(acc_dv);
  clear(acc_dk);

  for (int step = 0; step < work.steps; ++step) {
    const int stage = Cfg::kDoubleBuffer ? (step & 1) : 0;
    int bidh, m_block;
    work.query_tile(step, params.kv_group, bidh, m_block);
    const int row0 = m_block * kBlockM;

    BwdRowStats<kRows> stats;
    stats.load(tScS, params.lse + work.seq.lse_offset(params.lse_batch_stride, params.lse_head_stride, work.bidb, bidh),
               delta + work.seq.scratch_row(params, work.bidb, bidh), row0, work.seq.seqlen_q);

    cp_async_wait<0>();
    __syncthreads();  // this step's tiles landed; every warp is done with the other stage and with P / dS
    if (Cfg::kDoubleBuffer && step + 1 < work.steps) {
      load_q_do(step + 1, stage ^ 1);
      cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma_sdp, TileMN{});
    Tensor acc_dp = partition_fragment_C(mma_sdp, TileMN{});
    clear(acc_s);
    clear(acc_dp);
    gemm_ss(acc_s, tSrQ, tSrK, shifted(tSsQ, stage * Cfg::kQElems), tSsK, mma_sdp, smem_copy_a_sdp,
            smem_copy_b_sdp);
    gemm_ss(acc_dp, tSrDo, tSrV, shifted(tSsDo, stage * Cfg::kDoElems), tSsV, mma_sdp, smem_copy_a_sdp,
            smem_copy_b_sdp);

    Tensor scores = rowcol_view(acc_s);
    Tensor dscores = rowcol_view(acc_dp);
    const bool needs_mask = !work.mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, work.n_block);
    probs_and_dscores(scores, dscores, tScS, stats, score_scale, work.mask, needs_mask, row0, work.n0);

    Tensor rP = convert_fragment<Element>(acc_s);
    Tensor rDs = convert_fragment<Element>(acc_dp);
    copy(smem_store_pds, thr_store_pds.retile_S(rP), tPsP);
    copy(smem_store_pds, thr_store_pds.retile_S(rDs), tPsDs);
    __syncthreads();

    gemm_ss(acc_dv, tdVrPt, tdVrDot, tdVsPt, shifted(tdVsDot, stage * Cfg::kDoElems), mma_dkdv, smem_copy_a_dkdv,
            smem_copy_b_dkdv);
    gemm_ss(acc_dk, tdKrDst, tdKrQt, tdKsDst, shifted(tdKsQt, stage * Cfg::kQElems), mma_dkdv, smem_copy_a_dkdv,
            smem_copy_b_dkdv);

    if constexpr (kAtomicDq) {
      // dQ(kBlockM, kHeadDim) += dS K: A = dS, B = K^T read transposed.
      typename Cfg::TiledMmaDq mma_dq;
      Tensor tdQrDs = make_tensor<Element>(partition_shape_A(mma_dq, TileMN{}));
      Tensor tdQrKt = make_tensor<Element>(partition_shape_B(mma_dq, Shape<Int<kHeadDim>, Int<kBlockN>>{}));
      auto smem_copy_a_dq = make_tiled_copy_A(typename Cfg::SmemCopyAtom{}, mma_dq);
      auto smem_copy_b_dq = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma_dq);
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
      clear(acc_dq);
      gemm_ss(acc_dq, tdQrDs, tdQrKt, smem_copy_a_dq.get_thread_slice(tid).partition_S(sDs),
              smem_copy_b_dq.get_thread_slice(tid).partition_S(sKt), mma_dq, smem_copy_a_dq, smem_copy_b_dq);
      Tensor tdQcdQ = mma_dq.get_thread_slice(tid).partition_C(
          make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
      float* dq_rows = dq_accum + (work.seq.scratch_row(params, work.bidb, bidh) + row0) * params.head_dim;
      atomic_add_acc(acc_dq, tdQcdQ, dq_rows, params.head_dim, work.seq.seqlen_q - row0, params.head_dim);
    }

    if (!Cfg::kDoubleBuffer && step + 1 < work.steps) {
      __syncthreads();  // every warp is done reading Q / dO
      load_q_do(step + 1, 0);
      cp_async_fence();
    }
  }

  store_dk_dv<Cfg>(params, work.seq, work.bidb, work.bidhk, work.n0, thr_dkdv, acc_dk, acc_dv);
}

}  // namespace jax_flash
