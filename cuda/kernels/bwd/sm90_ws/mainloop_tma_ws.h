// Mainloop of the warp-specialized Hopper dK/dV kernel: the producer's TMA loads and the consumers' products,
// meeting in two mbarrier pipelines (Q, dO, kStages each) and one barrier for K / V.
//
// Producer (warpgroup 0): lane 0 of warp 0 issues the TMA loads, K and V once, then Q and dO of every step
// (query head, query block: dkdv_work.h; tma_loads.h, shared with the split layout's mainloop). It waits for a
// stage's release before it refills it; a stage is released by every consumer thread once its wgmma reads of
// it completed.
//
// Consumers (warpgroup w owns keys [64 w, 64 w + 64) of the block), per step:
//   lse / delta rows published (query_rows.h: this warpgroup's named barrier), next step's rows started
//   wait Q, dO | S^T = K Q^T, dP^T = V dO^T (two batches) | P (under dP^T, without softcap), dS
//   (transposed_math.h)
//   dV += P^T dO (P from registers)  | dS^T -> shared memory, fence.proxy.async, named barrier (kDsStored)
//   dQ = dS K, dK += dS^T Q          | wait dV, dQ: release dO, dQ -> the shared dQ block | wait dK: release Q
//                                      (Cfg::kDkIntoNextStep: dK left running; the next step's wait for S^T
//                                      covers it and releases this step's Q)
// The producer's warp 1 (the dq writer) adds each step's dQ block to the workspace with one bulk reduce-add
// (dq_accum_blocks.h).
// dS^T is double-buffered (by step parity), so one barrier per step suffices: a warpgroup writes buffer b at
// step t + 1 only after passing step t's barrier, which the other warpgroup reached after its dQ of step
// t - 1 (the last reader of b) had completed.
// Without dQ (kDq false: the deterministic backward, whose dq kernel computes dQ), no dS^T store, barrier, dQ
// product or atomic: dV += P^T dO and dK += dS^T Q (both from registers) | wait dV: release dO | wait dK:
// release Q.
//
// Rows past the sequence and columns past the real head dims arrive as zeros in dense layouts (the tensor maps
// are the real shapes; TMA fills out-of-range boxes with zeros). Packed layouts: a tile reaching past its
// sequence reads the next sequence's rows (or padding, which may hold anything, NaN included), and a masked
// product 0 * NaN is NaN, so the consumers zero those rows of K, V (once) and of Q, dO (the step that needs
// it) before any product reads them.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/detail/helper_macros.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/bwd/dkdv_work.h"
#include "kernels/bwd/sm90_ws/dq_accum_blocks.h"
#include "kernels/bwd/sm90_ws/named_barriers.h"
#include "kernels/bwd/sm90_ws/query_rows.h"
#include "kernels/bwd/sm90_ws/shared_storage.h"
#include "kernels/bwd/sm90_ws/tma_loads.h"
#include "kernels/bwd/sm90_ws/transposed_math.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mma_sm90.h"
#include "kernels/common/softmax.h"
#include "kernels/common/warp_specialized.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsBwdMainloop : Sm90WsBwdTmaLoads<Cfg> {
  using Loads = Sm90WsBwdTmaLoads<Cfg>;
  using Element = typename Cfg::Element;
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kHeadDimV = Cfg::kHeadDimV;
  using Storage = Sm90WsBwdSharedStorage<Cfg>;
  using Pipeline = typename Loads::Pipeline;
  using PipelineState = typename Loads::PipelineState;
  using Params = typename Loads::Params;
  using Work = typename Loads::Work;
  using Loads::pipeline_state;

  // Consumers: thread tidx (0 .. kMmaThreads - 1) adds every step's dK (without `scale`) and dV to its zeroed
  // accumulator partitions, and with kDq hands every step's dQ (without `scale`) to the dq writer warp
  // through the shared dQ block. Needs >= 1 step.
  template <bool kSoftcap, bool kDq, class AccDk, class AccDv>
  __device__ static void mma(const Params& mp, const AttnBwdParams& p, Storage& st, Pipeline& pipe_q,
                             Pipeline& pipe_do, const Work& w, int tidx, AccDk& acc_dk, AccDv& acc_dv) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQt{});
    Tensor sDo = make_tensor(make_smem_ptr(st.dout.data()), typename Cfg::SmemLayoutDo{});
    Tensor sDot = make_tensor(make_smem_ptr(st.dout.data()), typename Cfg::SmemLayoutDot{});
    Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(st.v.data()), typename Cfg::SmemLayoutV{});
    Tensor sDsT = make_tensor(make_smem_ptr(st.ds.data()), typename Cfg::SmemLayoutDsT{});
    Tensor sDs = make_tensor(make_smem_ptr(st.ds.data()), typename Cfg::SmemLayoutDs{});

    typename Cfg::TiledMmaSdP mma_s;
    typename Cfg::TiledMmaDpT mma_dp;
    typename Cfg::TiledMmaDk mma_dk;
    typename Cfg::TiledMmaDv mma_dv;
    typename Cfg::TiledMmaDq mma_dq;
    auto thr_s = mma_s.get_thread_slice(tidx);
    auto thr_dp = mma_dp.get_thread_slice(tidx);
    auto thr_dk = mma_dk.get_thread_slice(tidx);
    auto thr_dv = mma_dv.get_thread_slice(tidx);
    auto thr_dq = mma_dq.get_thread_slice(tidx);
    Tensor tSrK = thr_s.partition_fragment_A(sK(_, _, 0));  // descriptors: the warpgroup's 64 keys
    Tensor tSrQ = thr_s.partition_fragment_B(sQ);           // (MMA, M, D, stage)
    Tensor tDPrV = thr_dp.partition_fragment_A(sV(_, _, 0));
    Tensor tDPrDo = thr_dp.partition_fragment_B(sDo);       // (MMA, M, Dv, stage)
    Tensor tdVrDot = thr_dv.partition_fragment_B(sDot);     // (MMA, Dv, M, stage)
    Tensor tdKrQt = thr_dk.partition_fragment_B(sQt);       // (MMA, D, M, stage)
    // dQ's operands and dS^T's store (unused without dQ).
    Tensor tdQrDs = thr_dq.partition_fragment_A(sDs);       // (MMA, M, N, dS stage)
    Tensor tdQrKt = thr_dq.partition_fragment_B(sKt(_, _, 0));  // the warpgroup's half of D
    auto store_ds = make_tiled_copy_C(typename Cfg::SmemStoreAtomDs{}, mma_s);
    auto thr_store_ds = store_ds.get_thread_slice(tidx);
    // stmatrix addresses 16-byte rows: the swizzle is applied to the address bits (position independent).
    Tensor tDssDs = thr_store_ds.partition_D(as_position_independent_swizzle_tensor(sDsT));  // (CPY, N, M, stage)
    // (query, key) of each score this thread holds, tile-local.
    Tensor tScS = transposed_rowcol_view(thr_s.partition_C(swapped_identity<kBlockN, kBlockM>()));

    const ScoreScale score_scale = ScoreScale::make(p.scale, p.softcap);
    // Every consumer thread releases a stage once its wgmma reads of it are complete (its wait returned).
    auto wait = [](Pipeline& pipe, PipelineState read) CUTLASS_LAMBDA_FUNC_INLINE {
      pipe.consumer_wait(read, pipe.consumer_try_wait(read));
    };
    auto release = [](Pipeline& pipe, PipelineState read) CUTLASS_LAMBDA_FUNC_INLINE {
      pipe.consumer_release(read);
    };

    // This warpgroup's lse / delta rows: step 0's now, each next one a step ahead (query_rows.h).
    using QueryRows = Sm90WsQueryRows<kBlockM, kBlockN>;
    const int warpgroup = tidx / QueryRows::kWarpgroupThreads;
    const int wg_tidx = tidx % QueryRows::kWarpgroupThreads;
    typename QueryRows::Storage& rows = st.rows[warpgroup];
    QueryRows::fetch(p, mp.delta, w, 0, rows, wg_tidx);

    st.barrier_kv.wait(0);
    const int keys_left = w.seq.seqlen_k - w.n0;
    if (w.seq.packed && keys_left < kBlockN) {
      zero_tile_rows<kHeadDim>(sK(_, _, 0), keys_left, kBlockN, tidx, Cfg::kMmaThreads);
      zero_tile_rows<kHeadDimV>(sV(_, _, 0), keys_left, kBlockN, tidx, Cfg::kMmaThreads);
      publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBwdBarrier::kKvTailZeroed));
    }

    // Cfg::kDkIntoNextStep (uncapped): a step leaves its dK product running; the next step's first wait (for
    // S^T) covers it too, since batches complete in order, and releases its Q stage (dK is that stage's last
    // reader). The capped kernels wait for dK at the end of each step (more registers live: ptxas spilled).
    constexpr bool kDkIntoNextStep = Cfg::kDkIntoNextStep && !kSoftcap;
    // Step `step`'s Q stage, once its dK is known to be complete (the stage is a function of the step).
    auto release_q_after_dk = [&](int step) CUTLASS_LAMBDA_FUNC_INLINE {
      warpgroup_fence_operand(acc_dk);
      release(pipe_q, pipeline_state(step, /*producer=*/false));
    };
#pragma unroll 1
    for (int step = 0; step < w.steps; ++step) {
      int bidh, m_block;
      w.query_tile(step, p.kv_group, bidh, m_block);
      const int row0 = m_block * kBlockM;
      const int rows_left = w.seq.seqlen_q - row0;
      const PipelineState read = pipeline_state(step, /*producer=*/false);
      const int stage = read.index();
      const int ds_stage = step % Cfg::kDsStages;

      QueryRows::publish(warpgroup);
      if (step + 1 < w.steps) QueryRows::fetch(p, mp.delta, w, step + 1, rows, wg_tidx);
      wait(pipe_q, read);
      wait(pipe_do, read);
      if (w.seq.packed && rows_left < kBlockM) {
        zero_tile_rows<kHeadDim>(sQ(_, _, stage), rows_left, kBlockM, tidx, Cfg::kMmaThreads);
        zero_tile_rows<kHeadDimV>(sDo(_, _, stage), rows_left, kBlockM, tidx, Cfg::kMmaThreads);
        publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBwdBarrier::kQdoTailZeroed));
      }

      // S^T and dP^T as two batches, then P and dS in their registers: without softcap, P while dP^T is
      // still on the tensor cores.
      Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<kBlockN>, Int<kBlockM>>{});
      Tensor acc_dp = partition_fragment_C(mma_dp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      warpgroup_fence_operand(acc_s);
      warpgroup_fence_operand(acc_dp);
      warpgroup_arrive();
      wgmma_issue<true>(mma_s, tSrK, tSrQ(_, _, _, stage), acc_s);
      warpgroup_commit_batch();
      wgmma_issue<true>(mma_dp, tDPrV, tDPrDo(_, _, _, stage), acc_dp);
      warpgroup_commit_batch();
      Tensor scores = transposed_rowcol_view(acc_s);
      Tensor dscores = transposed_rowcol_view(acc_dp);
      const bool needs_mask = !w.mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, w.n_block);
      if constexpr (kSoftcap) {  // tanh' needs dP^T before the mask
        warpgroup_wait<0>();
        warpgroup_fence_operand(acc_s);
        warpgroup_fence_operand(acc_dp);
        probs_and_dscores_transposed<kSoftcap>(scores, dscores, tScS, rows.lse[step % 2], rows.delta[step % 2],
                                               score_scale, w.mask, needs_mask, row0, w.n0);
      } else {
        warpgroup_wait<1>();  // S^T is in (and the previous step's dK)
        if (kDkIntoNextStep && step > 0) release_q_after_dk(step - 1);
        warpgroup_fence_operand(acc_s);
        probs_transposed(scores, tScS, rows.lse[step % 2], score_scale, w.mask, needs_mask, row0, w.n0);
        warpgroup_wait<0>();  // dP^T is in
        warpgroup_fence_operand(acc_dp);
        dscores_transposed(scores, dscores, tScS, rows.delta[step % 2]);
      }
      // dV += P^T dO, on the tensor cores while dS^T goes to shared memory. (P is converted and issued
      // before dS is converted: S^T's registers free up first, which keeps the peak under the budget.)
      auto rP = convert_fragment<Element>(acc_s);
      Tensor tdVrP = make_tensor(rP.data(), acc_as_a_layout(rP.layout()));  // A of dV: P^T
      warpgroup_fence_operand(acc_dv);
      warpgroup_fence_operand(tdVrP);
      warpgroup_arrive();
      wgmma_issue<false>(mma_dv, tdVrP, tdVrDot(_, _, _, stage), acc_dv);
      warpgroup_commit_batch();
      auto rDs = convert_fragment<Element>(acc_dp);
      Tensor tdKrDs = make_tensor(rDs.data(), acc_as_a_layout(rDs.layout()));  // A of dK: dS^T
      if constexpr (kDq) {
        copy(store_ds, thr_store_ds.retile_S(rDs), tDssDs(_, _, _, ds_stage));
        publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBwdBarrier::kDsStored));
      }

      // dQ = dS K over every key of the block (kDq), dK += dS^T Q.
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // unused without dQ
      if constexpr (kDq) warpgroup_fence_operand(acc_dq);
      warpgroup_fence_operand(acc_dk);
      warpgroup_fence_operand(tdKrDs);
      warpgroup_arrive();
      if constexpr (kDq) {
        wgmma_issue<true>(mma_dq, tdQrDs(_, _, _, ds_stage), tdQrKt, acc_dq);
        warpgroup_commit_batch();
      }
      wgmma_issue<false>(mma_dk, tdKrDs, tdKrQt(_, _, _, stage), acc_dk);
      warpgroup_commit_batch();
      warpgroup_wait<1>();  // all but dK are in: dV (and dQ); batches complete in order
      warpgroup_fence_operand(acc_dv);
      if constexpr (kDq) warpgroup_fence_operand(acc_dq);
      release(pipe_do, read);  // its readers: dP^T, dV
      if constexpr (kDq) Sm90WsDqAccumBlocks<Cfg>::consumer_hand_over(acc_dq, st.dq.data(), tidx);
      // Q's readers are S^T and dK; with kDkIntoNextStep dK stays on the tensor cores under the next step.
      if constexpr (!kDkIntoNextStep) {
        warpgroup_wait<0>();  // dK is in
        release_q_after_dk(step);
      }
    }
    if constexpr (kDkIntoNextStep) {
      warpgroup_wait<0>();  // the last dK
      release_q_after_dk(w.steps - 1);
    }
  }
};

}  // namespace jax_flash
