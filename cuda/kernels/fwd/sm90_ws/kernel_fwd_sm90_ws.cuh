// The warp-specialized Hopper forward (sm_90a), FlashAttention-3's design: scheduler x mainloop x epilogue.
//
//   warpgroup 0 (producer, 24 registers; 32 with three consumer warpgroups): its first thread issues the TMA
//                                          loads of Q, K and V (mainloop_tma_ws.h, load);
//   warpgroups 1 .. kBlockM / 64 (consumers, 240 registers; 160 with three): 64 query rows each, wgmma
//                                          products, online softmax, pingpong and intra-warpgroup overlap
//                                          (mainloop_tma_ws.h, mma), then the forward's epilogue (fwd/epilogue.h).
// One CTA per (query block, head, sequence) from the single-tile scheduler, longest (causal) blocks first
// (Cfg::kLongestFirst: across the pairs of a group, longest_first_scheduler.h); or
// (kPersistent) one CTA per SM, CTA c taking tiles c, c + gridDim.x, ... of that grid's order (with
// Cfg::kLongestFirst, of the longest-first order), the next tile's first loads under the last tile's output
// (static_persistent_scheduler.h), and where O has a buffer of its own (sm90_ws_fwd_own_output: D <= 128),
// the next Q under the last tile's final P V and output too.
// Semantics are the other forwards': bottom-right aligned causal / window mask, softcap, GQA, attention sinks,
// LSE for every row (-inf, or the sink, and O = 0 for a row that sees no key).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <type_traits>

#include "kernels/common/fragment.h"
#include "kernels/common/softmax.h"
#include "kernels/common/warp_specialized.h"
#include "kernels/fwd/block_work.h"
#include "kernels/fwd/dense_out_rows.h"
#include "kernels/fwd/epilogue.h"
#include "kernels/fwd/sm90_ws/mainloop_tma_ws.h"
#include "kernels/fwd/sm90_ws/named_barriers.h"
#include "kernels/fwd/sm90_ws/shared_storage.h"
#include "kernels/params.h"
#include "kernels/sched/longest_first_scheduler.h"
#include "kernels/sched/single_tile_scheduler.h"
#include "kernels/sched/static_persistent_scheduler.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsKernelParams {
  AttnFwdParams attn;
  typename Sm90WsMainloop<Cfg>::Params mainloop;
};

template <class Cfg>
using Sm90WsScheduler =
    std::conditional_t<Cfg::kLongestFirst, LongestFirstScheduler<Cfg::kBlockM, TileAxis::kQuery, /*kReverse=*/true>,
                       SingleTileScheduler<Cfg::kBlockM, TileAxis::kQuery, /*kReverse=*/true>>;
template <class Cfg>
using Sm90WsPersistentScheduler =
    StaticPersistentScheduler<Cfg::kBlockM, TileAxis::kQuery, /*kReverse=*/true, Cfg::kLongestFirst>;

// Barriers and pipelines of a CTA, initialized by every thread of it together (warp 0 initializes, the
// constructors fence, the CTA synchronizes).
template <class Cfg>
struct Sm90WsFwdPipelines {
  using Pipeline = typename Sm90WsSharedStorage<Cfg>::Pipeline;
  Pipeline k, v;

  template <class Storage>
  __device__ Sm90WsFwdPipelines(Storage& st, bool producer)
      : k(st.pipeline_k, ws_pipeline_params<Pipeline>(Cfg::kBytesK, producer, Cfg::kMmaWarpgroups),
          cute::Shape<cute::_1, cute::_1, cute::_1>{}),
        v(st.pipeline_v, ws_pipeline_params<Pipeline>(Cfg::kBytesV, producer, Cfg::kMmaWarpgroups),
          cute::Shape<cute::_1, cute::_1, cute::_1>{}) {}
};

// The consumers' part of one tile (thread tidx of the consumer warpgroups): the products and the online softmax
// over its key tiles (q_phase: the phase of barrier_q its Q completes; q_done: see Sm90WsMainloop::mma), then
// the epilogue.
template <class Cfg, bool kSoftcap, class Storage, class QDone>
__device__ __forceinline__ void attn_fwd_sm90_ws_consume_tile(
    const AttnFwdParams& p, Storage& st, Sm90WsFwdPipelines<Cfg>& pipes, const FwdBlockWork& w, int tidx,
    typename Sm90WsFwdPipelines<Cfg>::Pipeline::PipelineState& read_k,
    typename Sm90WsFwdPipelines<Cfg>::Pipeline::PipelineState& read_v, uint32_t q_phase, QDone&& q_done) {
  using namespace cute;
  typename Cfg::TiledMmaPV mma_pv;
  Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Cfg::kBlockM>, Int<Cfg::kHeadDimV>>{});
  clear(acc_o);
  const ScoreScale score_scale = ScoreScale::make(p.scale, p.softcap);
  constexpr int kRows = decltype(size<0>(rowcol_layout(acc_o.layout())))::value;
  OnlineSoftmax<kRows> softmax(score_scale.log2_scale);
  if (w.n_tiles() > 0) {
    Sm90WsMainloop<Cfg>::template mma<kSoftcap>(st, pipes.k, pipes.v, w, tidx, score_scale, acc_o, softmax,
                                                 read_k, read_v, q_phase, q_done);
  }
  Tensor acc_o_rc = rowcol_view(acc_o);
  float lse[kRows];
  softmax.finalize(acc_o_rc, score_scale.natural, fwd_sink(p, w), lse);
  // O is staged over Q as soon as this warpgroup's own last QK^T is done, while the others may still be
  // computing: SmemLayoutO has Q's 8-row atoms (tile_size.h), so each warpgroup's 64 rows of O cover only the
  // bytes of its own 64 rows of Q. The consumer warpgroups (not the producer, which may have exited) then
  // meet on a named barrier and store the tile together. With O's own buffer they meet before staging too:
  // the previous tile's output has then been read out of it by every thread.
  auto consumers_meet = [] {
    cutlass::arch::NamedBarrier::sync(Cfg::kMmaThreads, int(Sm90WsBarrier::kOutputStaged));
  };
  if constexpr (Storage::kOwnO) consumers_meet();
  FwdEpilogue<Cfg>::stage_and_store(mma_pv, acc_o, lse, DenseOutRows<Cfg>::make(p, w),
                                    Storage::kOwnO ? st.o.data() : st.q.data(), tidx, consumers_meet);
}

template <class Cfg, bool kSoftcap>
__device__ __forceinline__ void attn_fwd_sm90_ws_cta(const Sm90WsKernelParams<Cfg>& kp) {
  using namespace cute;
  using Storage = Sm90WsSharedStorage<Cfg>;
  using PipelineState = typename Storage::Pipeline::PipelineState;
  const AttnFwdParams& p = kp.attn;

  extern __shared__ __align__(1024) char smem[];
  Storage& st = *reinterpret_cast<Storage*>(smem);

  const WorkTile tile = Sm90WsScheduler<Cfg>::get_tile(p);
  if (!tile.valid()) return;
  const FwdBlockWork w = FwdBlockWork::make<Cfg::kBlockM, Cfg::kBlockN>(p, tile);
  if (w.m_block * Cfg::kBlockM >= w.seq.seqlen_q) return;

  const bool producer = warpgroup_index() == 0;

  if (threadIdx.x == 0) st.barrier_q.init(/*arrive_count=*/1);
  Sm90WsFwdPipelines<Cfg> pipes(st, producer);
  __syncthreads();

  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    if (threadIdx.x == 0 && w.n_tiles() > 0) {
      PipelineState write_k = cutlass::make_producer_start_state<typename Storage::Pipeline>();
      PipelineState write_v = write_k;
      Sm90WsMainloop<Cfg>::load(kp.mainloop, p, st, pipes.k, pipes.v, w, write_k, write_v, [] {});
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMmaRegs>();
    PipelineState read_k, read_v;
    attn_fwd_sm90_ws_consume_tile<Cfg, kSoftcap>(p, st, pipes, w, int(threadIdx.x) - 128, read_k, read_v,
                                                 /*q_phase=*/0, [] {});
  }
}

// A persistent CTA's next tile with query rows, from tile index `index` on: {index, tile}, index = tile_count
// when there is none. Warp-level (Sm90WsPersistentScheduler::tile).
struct IndexedTile {
  int index;
  WorkTile tile;
};
template <class Cfg>
__device__ __forceinline__ IndexedTile sm90_ws_next_tile_with_rows(const AttnFwdParams& p, int index) {
  using Scheduler = Sm90WsPersistentScheduler<Cfg>;
  const int count = int(Scheduler::tile_count(p, p.heads_q));
  for (; index < count; index = Scheduler::next_index(index)) {
    const WorkTile tile = Scheduler::tile(p, p.heads_q, index);
    if (tile.valid() && tile.block * Cfg::kBlockM < SeqlenInfo::make(p, tile.bidb).seqlen_q) return {index, tile};
  }
  return {count, WorkTile{0, 0, -1, 0}};
}

// The persistent CTA: its roles walk the same tiles (each warp finds them itself) and hand each other
// one tile at a time through two barriers:
//   barrier_q       the producer's Q of tile j landed (a tile without keys: a plain arrival), phase j;
//   barrier_q_free  every consumer thread is done with the Q buffer of tile j, phase j: the producer loads Q of
//                   tile j + 1 after it, having issued that tile's first K tile before it. With O's own buffer
//                   (Storage::kOwnO) a thread arrives once its last Q K^T of tile j is complete, so the next Q
//                   lands under the last P V and the output; else once it wrote tile j's output out of the
//                   Q / O buffer (and only where a tile j + 1 follows).
// So the consumers are never more than one phase of either barrier ahead of the producer or behind it.
template <class Cfg, bool kSoftcap>
__device__ __forceinline__ void attn_fwd_sm90_ws_persistent_cta(const Sm90WsKernelParams<Cfg>& kp) {
  using namespace cute;
  using Storage = Sm90WsSharedStorage<Cfg, sm90_ws_fwd_own_output<Cfg>>;
  using PipelineState = typename Storage::Pipeline::PipelineState;
  using Scheduler = Sm90WsPersistentScheduler<Cfg>;
  const AttnFwdParams& p = kp.attn;

  extern __shared__ __align__(1024) char smem[];
  Storage& st = *reinterpret_cast<Storage*>(smem);

  const bool producer = warpgroup_index() == 0;
  if (threadIdx.x == 0) {
    st.barrier_q.init(/*arrive_count=*/1);
    st.barrier_q_free.init(/*arrive_count=*/Cfg::kMmaThreads);
  }
  Sm90WsFwdPipelines<Cfg> pipes(st, producer);
  __syncthreads();

  const int count = int(Scheduler::tile_count(p, p.heads_q));
  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    if (threadIdx.x >= 32) return;  // warp 0 walks the tiles (a packed search takes a warp); lane 0 loads
    PipelineState write_k = cutlass::make_producer_start_state<typename Storage::Pipeline>();
    PipelineState write_v = write_k;
    uint32_t j = 0;
    for (IndexedTile t = sm90_ws_next_tile_with_rows<Cfg>(p, Scheduler::first_index()); t.index < count;
         t = sm90_ws_next_tile_with_rows<Cfg>(p, Scheduler::next_index(t.index)), ++j) {
      if (threadIdx.x == 0) {
        const FwdBlockWork w = FwdBlockWork::make<Cfg::kBlockM, Cfg::kBlockN>(p, t.tile);
        auto wait_q_free = [&] {
          if (j > 0) st.barrier_q_free.wait((j - 1) & 1u);
        };
        if (w.n_tiles() > 0) {
          Sm90WsMainloop<Cfg>::load(kp.mainloop, p, st, pipes.k, pipes.v, w, write_k, write_v, wait_q_free);
        } else {
          wait_q_free();
          st.barrier_q.arrive();
        }
      }
      __syncwarp();
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMmaRegs>();
    PipelineState read_k, read_v;
    uint32_t j = 0;
    for (IndexedTile t = sm90_ws_next_tile_with_rows<Cfg>(p, Scheduler::first_index()); t.index < count; ++j) {
      {
        const FwdBlockWork w = FwdBlockWork::make<Cfg::kBlockM, Cfg::kBlockN>(p, t.tile);
        // Q is read by wgmma only (the async proxy, as the TMA writes it): no fence before the arrival.
        auto q_done = [&] {
          if constexpr (Storage::kOwnO) st.barrier_q_free.arrive();
        };
        // A tile without keys has no Q to wait for, but its phases keep the roles in step (above).
        if (w.n_tiles() == 0) {
          st.barrier_q.wait(j & 1u);
          q_done();
        }
        attn_fwd_sm90_ws_consume_tile<Cfg, kSoftcap>(p, st, pipes, w, int(threadIdx.x) - 128, read_k, read_v,
                                                     j & 1u, q_done);
      }
      // (Found after the tile, so that nothing of it is live through the mainloop.)
      const IndexedTile next = sm90_ws_next_tile_with_rows<Cfg>(p, Scheduler::next_index(t.index));
      if (!Storage::kOwnO && next.index < count) {
        // This thread's reads and writes of the Q / O buffer (generic proxy) before the next Q's TMA write.
        cutlass::arch::fence_view_async_shared();
        st.barrier_q_free.arrive();
      }
      t = next;
    }
  }
}

// kSoftcap: a separate instantiation keeps the tanh out of the uncapped kernel's mainloop. kPersistent: the
// persistent grid (Sm90WsPersistentScheduler::grid; only the check tool launches it so far), else one CTA per
// tile (Sm90WsScheduler::grid).
template <class Cfg, bool kSoftcap, bool kPersistent>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attn_fwd_sm90_ws_kernel(const __grid_constant__ Sm90WsKernelParams<Cfg> kp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (kPersistent) {
    attn_fwd_sm90_ws_persistent_cta<Cfg, kSoftcap>(kp);
  } else {
    attn_fwd_sm90_ws_cta<Cfg, kSoftcap>(kp);
  }
#endif
}

}  // namespace jax_flash
