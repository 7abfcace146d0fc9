// Mainloop of the warp-specialized Hopper dK/dV kernel for large head dims (D192, D256): FlashAttention-3's split
// layout (tile_size_split.h). The producer is the swapped layout's (tma_loads.h: K, V once, Q and dO per step into
// two PipelineTmaAsync pipelines); the two consumer warpgroups share the CTA's 64 keys and split each product.
//
// Consumers (warpgroup w: keys [32 w, 32 w + 32) of S and dP, columns [D / 2 w, ...) of dK, dV, dQ), per step:
//   lse / delta rows published (query_rows.h: one copy for both warpgroups, 256-thread named barrier), next
//   step's rows started
//   wait Q, dO | S = Q K^T, dP = dO V^T (one batch, waited) | P, dS (transposed_math.h's formulas, which take
//   any (query, key) view: here the accumulators' own rows are the queries)
//   P, dS -> shared memory (buffer step % 2, each warpgroup its 32 keys), fence.proxy.async, named barrier
//   kDsStored (both warpgroups)
//   dQ = dS K, dV += P^T dO, dK += dS^T Q (three committed batches, all SS)
//   wait dQ: dQ to the shared dQ block for the dq writer warp (dq_accum_blocks.h consumer_hand_over), or, where
//   the tile has no room for it, float4 atomics into the workspace block (atomic_add; kDqOrdered: in the CTA's
//   turn at the block, ordered_atomic_add)
//   wait dV, dK: release dO and Q (their last readers)
// P and dS are double-buffered, so one barrier per step suffices: a warpgroup writes buffer b at step t + 1
// only after passing step t's barrier, which the other warpgroup reached after the wgmma reads of step t - 1
// (dQ, dV, dK: the last readers of b) had completed (its warpgroup_wait<0> ends every step).
// Without dQ (kDq false: the dq kernel computes dQ) no dQ product and no hand-over; P and dS still go through
// shared memory (dV and dK read every key from there).
//
// Packed layouts: as the swapped layout, the consumers zero the rows of K, V (once) and of Q, dO (the step that
// needs it) past the sequence before any product reads them (a masked 0 x NaN is NaN).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/detail/helper_macros.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "kernels/bwd/dkdv_work.h"
#include "kernels/bwd/sm90_ws/dq_accum_blocks.h"
#include "kernels/bwd/sm90_ws/named_barriers.h"
#include "kernels/bwd/sm90_ws/query_rows.h"
#include "kernels/bwd/sm90_ws/shared_storage_split.h"
#include "kernels/bwd/sm90_ws/tma_loads.h"
#include "kernels/bwd/sm90_ws/transposed_math.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mma_sm90.h"
#include "kernels/common/softmax.h"
#include "kernels/common/warp_specialized.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsBwdSplitMainloop : Sm90WsBwdTmaLoads<Cfg> {
  using Loads = Sm90WsBwdTmaLoads<Cfg>;
  using Element = typename Cfg::Element;
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kHeadDimV = Cfg::kHeadDimV;
  using Storage = Sm90WsBwdSplitSharedStorage<Cfg>;
  using Pipeline = typename Loads::Pipeline;
  using PipelineState = typename Loads::PipelineState;
  using Params = typename Loads::Params;
  using Work = typename Loads::Work;
  using Loads::pipeline_state;
  using Blocks = Sm90WsDqAccumBlocks<Cfg>;
  using QueryRows = Sm90WsQueryRows<kBlockM, kBlockN, Cfg::kMmaThreads>;  // one copy for both warpgroups

  // Consumers: thread tidx (0 .. kMmaThreads - 1) adds every step's dK (without `scale`) and dV to its zeroed
  // accumulator partitions (TiledMmaDk / TiledMmaDv), and with kDq sums every step's dQ (without `scale`) into
  // the workspace's block of the step. Needs >= 1 step. kDqOrdered (tiles without the shared dQ block; with it
  // the dq writer warp orders the sums): the adds in the order of the key blocks' launch (launches_descending).
  template <bool kSoftcap, bool kDq, bool kDqOrdered, class AccDk, class AccDv>
  __device__ static void mma(const Params& mp, const AttnBwdParams& p, Storage& st, Pipeline& pipe_q,
                             Pipeline& pipe_do, const Work& w, bool launches_descending, int tidx, AccDk& acc_dk,
                             AccDv& acc_dv) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQt{});
    Tensor sDo = make_tensor(make_smem_ptr(st.dout.data()), typename Cfg::SmemLayoutDo{});
    Tensor sDot = make_tensor(make_smem_ptr(st.dout.data()), typename Cfg::SmemLayoutDot{});
    Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(st.v.data()), typename Cfg::SmemLayoutV{});
    Tensor sP = make_tensor(make_smem_ptr(st.p.data()), typename Cfg::SmemLayoutP{});
    Tensor sPt = make_tensor(make_smem_ptr(st.p.data()), typename Cfg::SmemLayoutPt{});
    Tensor sDs = make_tensor(make_smem_ptr(st.ds.data()), typename Cfg::SmemLayoutDs{});
    Tensor sDst = make_tensor(make_smem_ptr(st.ds.data()), typename Cfg::SmemLayoutPt{});

    typename Cfg::TiledMmaS mma_s;
    typename Cfg::TiledMmaDp mma_dp;
    typename Cfg::TiledMmaDv mma_dv;
    typename Cfg::TiledMmaDk mma_dk;
    typename Cfg::TiledMmaDq mma_dq;
    auto thr_s = mma_s.get_thread_slice(tidx);
    auto thr_dp = mma_dp.get_thread_slice(tidx);
    auto thr_dv = mma_dv.get_thread_slice(tidx);
    auto thr_dk = mma_dk.get_thread_slice(tidx);
    auto thr_dq = mma_dq.get_thread_slice(tidx);
    Tensor tSrQ = thr_s.partition_fragment_A(sQ);             // (MMA, M, D, stage)
    Tensor tSrK = thr_s.partition_fragment_B(sK(_, _, 0));    // the warpgroup's keys
    Tensor tDPrDo = thr_dp.partition_fragment_A(sDo);         // (MMA, M, Dv, stage)
    Tensor tDPrV = thr_dp.partition_fragment_B(sV(_, _, 0));
    Tensor tdVrPt = thr_dv.partition_fragment_A(sPt);         // (MMA, N, M, buffer)
    Tensor tdVrDot = thr_dv.partition_fragment_B(sDot);       // (MMA, Dv, M, stage): the warpgroup's half
    Tensor tdKrDst = thr_dk.partition_fragment_A(sDst);       // (MMA, N, M, buffer)
    Tensor tdKrQt = thr_dk.partition_fragment_B(sQt);         // (MMA, D, M, stage): the warpgroup's half
    Tensor tdQrDs = thr_dq.partition_fragment_A(sDs);         // (MMA, M, N, buffer)
    Tensor tdQrKt = thr_dq.partition_fragment_B(sKt(_, _, 0));  // the warpgroup's half of D
    // P / dS fragments to shared memory with stmatrix; S and dP share one partition.
    auto store_pds = make_tiled_copy_C(typename Cfg::SmemStoreAtomPds{}, mma_s);
    auto thr_store_pds = store_pds.get_thread_slice(tidx);
    // stmatrix addresses 16-byte rows: the swizzle is applied to the address bits (position independent).
    Tensor tPsP = thr_store_pds.partition_D(as_position_independent_swizzle_tensor(sP));    // (CPY, M, N, buffer)
    Tensor tPsDs = thr_store_pds.partition_D(as_position_independent_swizzle_tensor(sDs));  // (CPY, M, N, buffer)
    // (query, key) of each score this thread holds, tile-local.
    Tensor tScS = rowcol_view(thr_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));

    const ScoreScale score_scale = ScoreScale::make(p.scale, p.softcap);
    [[maybe_unused]] const int64_t floats_per_copy = Blocks::copy_floats(p);  // the ordered sums' copies
    // Every consumer thread releases a stage once its wgmma reads of it are complete (its wait returned).
    auto wait = [](Pipeline& pipe, PipelineState read) CUTLASS_LAMBDA_FUNC_INLINE {
      pipe.consumer_wait(read, pipe.consumer_try_wait(read));
    };

    // The step's lse / delta rows, one copy for both warpgroups (each reads every query's): step 0's now, each
    // next one a step ahead (query_rows.h).
    typename QueryRows::Storage& rows = st.rows;
    QueryRows::fetch(p, mp.delta, w, 0, rows, tidx);

    st.barrier_kv.wait(0);
    const int keys_left = w.seq.seqlen_k - w.n0;
    if (w.seq.packed && keys_left < kBlockN) {
      zero_tile_rows<kHeadDim>(sK(_, _, 0), keys_left, kBlockN, tidx, Cfg::kMmaThreads);
      zero_tile_rows<kHeadDimV>(sV(_, _, 0), keys_left, kBlockN, tidx, Cfg::kMmaThreads);
      publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBwdBarrier::kKvTailZeroed));
    }

#pragma unroll 1
    for (int step = 0; step < w.steps; ++step) {
      int bidh, m_block;
      w.query_tile(step, p.kv_group, bidh, m_block);
      const int row0 = m_block * kBlockM;
      const int rows_left = w.seq.seqlen_q - row0;
      const PipelineState read = pipeline_state(step, /*producer=*/false);
      const int stage = read.index();
      const int buf = step % Cfg::kPdsStages;

      QueryRows::publish(/*copy=*/0);
      if (step + 1 < w.steps) QueryRows::fetch(p, mp.delta, w, step + 1, rows, tidx);
      wait(pipe_q, read);
      wait(pipe_do, read);
      if (w.seq.packed && rows_left < kBlockM) {
        zero_tile_rows<kHeadDim>(sQ(_, _, stage), rows_left, kBlockM, tidx, Cfg::kMmaThreads);
        zero_tile_rows<kHeadDimV>(sDo(_, _, stage), rows_left, kBlockM, tidx, Cfg::kMmaThreads);
        publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBwdBarrier::kQdoTailZeroed));
      }

      // S and dP (this warpgroup's keys), then P and dS in their registers.
      Tensor acc_s = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
      Tensor acc_dp = partition_fragment_C(mma_dp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      wgmma_batch([&] {
        wgmma_issue<true>(mma_s, tSrQ(_, _, _, stage), tSrK, acc_s);
        wgmma_issue<true>(mma_dp, tDPrDo(_, _, _, stage), tDPrV, acc_dp);
      }, acc_s, acc_dp);
      Tensor scores = rowcol_view(acc_s);
      Tensor dscores = rowcol_view(acc_dp);
      const bool needs_mask = !w.mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, w.n_block);
      probs_and_dscores_transposed<kSoftcap>(scores, dscores, tScS, rows.lse[step % 2], rows.delta[step % 2],
                                             score_scale, w.mask, needs_mask, row0, w.n0);
      // P and dS to shared memory: dV and dK read every key of them, dQ every query.
      copy(store_pds, thr_store_pds.retile_S(convert_fragment<Element>(acc_s)), tPsP(_, _, _, buf));
      copy(store_pds, thr_store_pds.retile_S(convert_fragment<Element>(acc_dp)), tPsDs(_, _, _, buf));
      publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBwdBarrier::kDsStored));

      // dQ = dS K (kDq), dV += P^T dO, dK += dS^T Q: three batches, completing in order.
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});  // unused without dQ
      if constexpr (kDq) warpgroup_fence_operand(acc_dq);
      warpgroup_fence_operand(acc_dv);
      warpgroup_fence_operand(acc_dk);
      warpgroup_arrive();
      if constexpr (kDq) {
        wgmma_issue<true>(mma_dq, tdQrDs(_, _, _, buf), tdQrKt, acc_dq);
        warpgroup_commit_batch();
      }
      wgmma_issue<false>(mma_dv, tdVrPt(_, _, _, buf), tdVrDot(_, _, _, stage), acc_dv);
      warpgroup_commit_batch();
      wgmma_issue<false>(mma_dk, tdKrDst(_, _, _, buf), tdKrQt(_, _, _, stage), acc_dk);
      warpgroup_commit_batch();
      if constexpr (kDq) {
        warpgroup_wait<2>();  // dQ is in (dV and dK still running)
        warpgroup_fence_operand(acc_dq);
        if constexpr (Cfg::kDqSharedBlock) {
          Blocks::consumer_hand_over(acc_dq, st.dq.data(), tidx);
        } else {
          const int64_t block = Blocks::block_index(p, w.seq, w.bidb, bidh, m_block);
          if constexpr (kDqOrdered) {
            const typename Blocks::OrderedSlot slot =
                Blocks::ordered_slot(mp.dq_accum, mp.dq_semaphores, floats_per_copy, block, w, m_block,
                                     launches_descending);
            Blocks::ordered_atomic_add(acc_dq, slot.block, slot.semaphore, slot.turn, tidx);
          } else {
            Blocks::atomic_add(acc_dq, mp.dq_accum + block * Blocks::kBlockFloats, tidx);
          }
        }
      }
      warpgroup_wait<0>();  // dV and dK are in
      warpgroup_fence_operand(acc_dv);
      warpgroup_fence_operand(acc_dk);
      pipe_do.consumer_release(read);  // its readers: dP, dV
      pipe_q.consumer_release(read);   // its readers: S, dK
    }
  }
};

}  // namespace jax_flash
