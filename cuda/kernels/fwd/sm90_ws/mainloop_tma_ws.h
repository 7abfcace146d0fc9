// Mainloop of the warp-specialized Hopper forward: the producer's TMA loads and the consumers' products and
// online softmax, meeting in two mbarrier pipelines (K stages, V stages) and one barrier for Q.
//
// Producer (one thread): Q once, then the key tiles from the last visible block down, K of tile t+1 ahead of
// V of tile t, because the consumers need them in that order (below). Each tile is one TMA box set completing
// on its stage's full barrier; a stage is reused once every consumer warpgroup released it.
//
// Consumers (each warpgroup its 64 rows), with intra-warpgroup overlap: step t issues S(t) = Q K(t)^T and
// O += P(t-1) V(t-1) back to back, then runs the softmax of S(t) while P(t-1) V(t-1) is still on the tensor
// cores; only then is P(t) written over P(t-1). With the pingpong (named_barriers.h), the warpgroups issue
// their step's GEMMs in turn, so one's softmax also runs under the other's GEMMs. Without the overlap
// (Cfg::kIntraWgOverlap false, to measure what it buys): S(t), its softmax, then P(t) V(t), each waited for;
// the pingpong turn then covers S(t) alone.
//
// P reaches P V from registers, or (Cfg::kPvFromSmem) through shared memory: each warpgroup stores its rows of
// P with stmatrix once its previous P V is complete and meets its own warps on a named barrier before the next
// P V reads them.
//
// Rows past the sequence and columns past the real head dims arrive as zeros (the tensor maps are the real
// shapes, and the TMA unit fills out-of-range boxes with zeros). Packed layouts: a key tile reaching past
// its sequence reads the next sequence's rows (or the padding between sequences, which may hold anything).
// The mask hides those keys (probabilities exactly 0), and the consumers zero those rows of V before any
// P V reads them, since 0 * NaN is NaN.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/detail/helper_macros.hpp>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <algorithm>
#include <cstdint>

#include "kernels/common/fragment.h"
#include "kernels/common/mma_sm90.h"
#include "kernels/common/softmax.h"
#include "kernels/common/warp_specialized.h"
#include "kernels/fwd/block_work.h"
#include "kernels/fwd/sm90_ws/named_barriers.h"
#include "kernels/fwd/sm90_ws/shared_storage.h"
#include "kernels/params.h"

namespace jax_flash {

// One online-softmax step that leaves the output accumulator alone: the caller rescales O by `correction`
// later, when no wgmma in flight is writing it. (OnlineSoftmax::step rescales what it is given: here a column
// of ones, which it turns into each row's correction factor.)
template <int kRows, class Scores>
__device__ __forceinline__ void softmax_step_deferred(OnlineSoftmax<kRows>& softmax, Scores& scores,
                                                      float (&correction)[kRows]) {
  using namespace cute;
  Tensor ones = make_tensor<float>(Shape<Int<kRows>, _1>{});
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) ones(r, 0) = 1.f;
  softmax.step(scores, ones);
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) correction[r] = ones(r, 0);
}

// acc(r, c) *= correction[r] on a (row, col) view.
template <int kRows, class RowCol>
__device__ __forceinline__ void rescale_rows(RowCol& acc, const float (&correction)[kRows]) {
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    CUTE_UNROLL
    for (int c = 0; c < cute::size<1>(acc); ++c) acc(r, c) *= correction[r];
  }
}

template <class Cfg>
struct Sm90WsMainloop {
  using Element = typename Cfg::Element;
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kHeadDimV = Cfg::kHeadDimV;
  using Pipeline = typename Sm90WsSharedStorage<Cfg>::Pipeline;  // (the same with O's own buffer)
  using PipelineState = typename Pipeline::PipelineState;

  using Rows = TmaRows<Element>;  // the global tensors as the maps see them (common/warp_specialized.h)
  using Shape4 = typename Rows::Shape4;
  using TileQ = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>;
  using TileK = cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>;
  using TileV = cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDimV>>;
  using TmaQ = typename Rows::template Load<typename Cfg::SmemLayoutQ, TileQ>;
  using TmaK = typename Rows::template Load<typename Cfg::SmemLayoutK, TileK>;
  using TmaV = typename Rows::template Load<typename Cfg::SmemLayoutV, TileV>;

  // The tensor maps (they hold the tensors' addresses, so they are encoded on the host at each launch).
  struct Params {
    TmaQ tma_q;
    TmaK tma_k;
    TmaV tma_v;
  };

  // Shapes of the three maps; the device builds its coordinate tensors from the same values (an empty key
  // axis is mapped differently, see make_params, but then no key tile is ever loaded).
  __host__ __device__ static Shape4 shape_q(const AttnFwdParams& p) {
    return cute::make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.layout_batch());
  }
  __host__ __device__ static Shape4 shape_k(const AttnFwdParams& p) {
    return cute::make_shape(p.seqlen_k, p.head_dim, p.heads_k, p.layout_batch());
  }
  __host__ __device__ static Shape4 shape_v(const AttnFwdParams& p) {
    return cute::make_shape(p.seqlen_k, p.head_dim_v, p.heads_k, p.layout_batch());
  }

  // Host: encode the maps. The caller checked what a map needs (16-byte aligned bases and strides).
  static Params make_params(const AttnFwdParams& p) {
    using namespace cute;
    const bool packed = p.packed();
    auto q = Rows::tensor(p.q, shape_q(p), p.q_row_stride, p.q_head_stride, p.q_batch_stride, packed);
    // No key at all: the K / V maps are never read, but their buffers may be empty (null) and their strides
    // zero, which a map refuses. One row of Q has an address and strides a map accepts.
    const bool no_keys = p.seqlen_k == 0;
    auto k = no_keys ? Rows::tensor(p.q, make_shape(1, p.head_dim, 1, 1), p.q_row_stride, p.q_head_stride,
                                    p.q_batch_stride, packed)
                     : Rows::tensor(p.k, shape_k(p), p.k_row_stride, p.k_head_stride, p.k_batch_stride, packed);
    auto v = no_keys ? Rows::tensor(p.q, make_shape(1, p.head_dim_v, 1, 1), p.q_row_stride, p.q_head_stride,
                                    p.q_batch_stride, packed)
                     : Rows::tensor(p.v, shape_v(p), p.v_row_stride, p.v_head_stride, p.v_batch_stride, packed);
    return {Rows::template load<typename Cfg::SmemLayoutQ, TileQ>(q),
            Rows::template load<typename Cfg::SmemLayoutK, TileK>(k),
            Rows::template load<typename Cfg::SmemLayoutV, TileV>(v)};
  }

  // Producer: run by one thread, for a block with at least one key tile. write_k / write_v: the pipelines'
  // states, carried from tile to tile by a persistent CTA (cutlass::make_producer_start_state for the first).
  // before_q() runs after the first K tile is issued and before Q is: a persistent CTA waits there for the
  // Q buffer, so that the first K load overlaps the end of the previous tile. Storage: Sm90WsSharedStorage<Cfg,
  // with or without O's own buffer>.
  template <class Storage, class BeforeQ>
  __device__ static void load(const Params& mp, const AttnFwdParams& p, Storage& st, Pipeline& pipe_k,
                              Pipeline& pipe_v, const FwdBlockWork& w, PipelineState& write_k,
                              PipelineState& write_v, BeforeQ&& before_q) {
    using namespace cute;
    prefetch_tma_descriptor(mp.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(mp.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(mp.tma_v.get_tma_descriptor());
    Tensor mQ = mp.tma_q.get_tma_tensor(shape_q(p))(_, _, w.bidh, w.batch_coord());
    Tensor mK = mp.tma_k.get_tma_tensor(shape_k(p))(_, _, w.bidh_kv, w.batch_coord());
    Tensor mV = mp.tma_v.get_tma_tensor(shape_v(p))(_, _, w.bidh_kv, w.batch_coord());
    Tensor gQ = local_tile(domain_offset(make_coord(w.q_row0(), _0{}), mQ), TileQ{}, make_coord(w.m_block, _0{}));
    Tensor gK = local_tile(domain_offset(make_coord(w.k_row0(), _0{}), mK), TileK{}, make_coord(_, _0{}));
    Tensor gV = local_tile(domain_offset(make_coord(w.k_row0(), _0{}), mV), TileV{}, make_coord(_, _0{}));
    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(st.v.data()), typename Cfg::SmemLayoutV{});

    auto cta_q = mp.tma_q.get_slice(_0{});
    auto cta_k = mp.tma_k.get_slice(_0{});
    auto cta_v = mp.tma_v.get_slice(_0{});
    Tensor tQgQ = cta_q.partition_S(gQ);
    Tensor tQsQ = cta_q.partition_D(sQ);
    Tensor tKgK = group_modes<0, 3>(cta_k.partition_S(gK));  // (TMA, key block)
    Tensor tKsK = group_modes<0, 3>(cta_k.partition_D(sK));  // (TMA, stage)
    Tensor tVgV = group_modes<0, 3>(cta_v.partition_S(gV));
    Tensor tVsV = group_modes<0, 3>(cta_v.partition_D(sV));

    // K / V are read by every query block of the head: keep them in L2; Q is read once.
    auto load_k = [&](int n_block) CUTLASS_LAMBDA_FUNC_INLINE {
      pipe_k.producer_acquire(write_k);
      copy(mp.tma_k.with(*pipe_k.producer_get_barrier(write_k), 0, TMA::CacheHintSm90::EVICT_LAST),
           tKgK(_, n_block), tKsK(_, write_k.index()));
      ++write_k;
    };
    auto load_v = [&](int n_block) CUTLASS_LAMBDA_FUNC_INLINE {
      pipe_v.producer_acquire(write_v);
      copy(mp.tma_v.with(*pipe_v.producer_get_barrier(write_v), 0, TMA::CacheHintSm90::EVICT_LAST),
           tVgV(_, n_block), tVsV(_, write_v.index()));
      ++write_v;
    };

    load_k(w.n_max - 1);
    before_q();
    st.barrier_q.arrive_and_expect_tx(Cfg::kBytesQ);
    copy(mp.tma_q.with(reinterpret_cast<uint64_t&>(st.barrier_q), 0, TMA::CacheHintSm90::EVICT_FIRST), tQgQ, tQsQ);
#pragma unroll 1
    for (int n_block = w.n_max - 2; n_block >= w.n_min; --n_block) {
      load_k(n_block);
      load_v(n_block + 1);
    }
    load_v(w.n_min);
  }

  // Consumers: acc_o (the PV accumulator partition of thread tidx, 0 .. kMmaThreads - 1, zeroed) and softmax
  // end holding the unnormalized output and the row statistics of every visible key. Needs >= 1 key tile.
  // read_k / read_v: the pipelines' states (carried from tile to tile by a persistent CTA); q_phase: the phase
  // of barrier_q that this tile's Q completes. q_done() runs once this thread's last Q K^T is complete (no
  // wgmma of it reads Q any more): a persistent CTA with O's own buffer frees Q for the next tile there.
  template <bool kSoftcap, class Storage, class AccO, int kRows, class QDone>
  __device__ static void mma(Storage& st, Pipeline& pipe_k, Pipeline& pipe_v, const FwdBlockWork& w, int tidx,
                             const ScoreScale& score_scale, AccO& acc_o, OnlineSoftmax<kRows>& softmax,
                             PipelineState& read_k, PipelineState& read_v, uint32_t q_phase, QDone&& q_done) {
    using namespace cute;
    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(st.v.data()), typename Cfg::SmemLayoutVt{});
    typename Cfg::TiledMmaQK mma_qk;
    typename Cfg::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(tidx);
    // The shared-memory operands' descriptors depend on the warpgroup only: sliced with a warp-uniform index
    // (a shuffle), they are uniform values, which ptxas may keep in uniform registers or rematerialize, where
    // from tidx they hold a pair of vector registers each across the key loop (ptxas spills at 160 registers).
    const int warpgroup_thread0 = (__shfl_sync(0xffffffffu, tidx, 0) / 128) * 128;
    auto wg_qk = mma_qk.get_thread_slice(warpgroup_thread0);
    auto wg_pv = mma_pv.get_thread_slice(warpgroup_thread0);
    Tensor tSrQ = wg_qk.partition_fragment_A(sQ);    // descriptors
    Tensor tSrK = wg_qk.partition_fragment_B(sK);    // (MMA, N, K, stage)
    Tensor tOrVt = wg_pv.partition_fragment_B(sVt);  // (MMA, Dv, N, stage)
    // Tile-local (row, col) of each score this thread holds, for the mask.
    Tensor tScS_rc = rowcol_view(thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
    Tensor acc_o_rc = rowcol_view(acc_o);
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});

    const WarpgroupTurns<Cfg::kPingpong, Cfg::kMmaWarpgroups> turns{tidx / 128};
    // One arrival per warpgroup frees a stage (the empty barriers count warpgroups): a warpgroup's wgmma
    // reads of a stage are complete once its wait returns.
    const bool signals_release = tidx % 128 == 0;
    auto wait = [](Pipeline& pipe, PipelineState& s) CUTLASS_LAMBDA_FUNC_INLINE {
      pipe.consumer_wait(s, pipe.consumer_try_wait(s));
    };
    auto release = [&](Pipeline& pipe, PipelineState& s) CUTLASS_LAMBDA_FUNC_INLINE {
      if (signals_release) pipe.consumer_release(s);
      ++s;
    };
    // Softcap, then the mask where the tile needs one; returns the (row, col) view of the scores.
    auto finish_scores = [&](int n_block, auto masked_tag) CUTLASS_LAMBDA_FUNC_INLINE {
      if constexpr (kSoftcap) apply_softcap(acc_s, score_scale.pre_tanh);
      Tensor scores = rowcol_view(acc_s);
      if constexpr (decltype(masked_tag)::value) {
        w.mask.apply(scores, tScS_rc, w.m_block * kBlockM, n_block * kBlockN);
      }
      return scores;
    };

    // First key tile: nothing to overlap with yet, and O is zero, so the softmax may rescale it directly.
    st.barrier_q.wait(q_phase);
    wait(pipe_k, read_k);
    wgmma_gemm<true>(mma_qk, tSrQ, tSrK(_, _, _, read_k.index()), acc_s);
    release(pipe_k, read_k);
    const int n_tiles = w.n_tiles();
    if (n_tiles == 1) q_done();
    {
      Tensor scores = finish_scores(w.n_max - 1, cute::true_type{});
      softmax.step(scores, acc_o_rc);
    }
    // Packed layouts: the first key tile is the only one that can reach past the sequence; its rows of V
    // there are zeroed (the consumer warpgroups split them, then meet) before any P V. Done before the
    // pingpong turns start, because it waits for the other warpgroups. The stage's TMA load must have landed.
    const int v_tail_valid_rows = w.seq.seqlen_k - (w.n_max - 1) * kBlockN;
    if (w.seq.packed && v_tail_valid_rows < kBlockN) {
      Tensor sV = make_tensor(make_smem_ptr(st.v.data()), typename Cfg::SmemLayoutV{});
      wait(pipe_v, read_v);
      zero_tile_rows<kHeadDimV>(sV(_, _, read_v.index()), v_tail_valid_rows, kBlockN, tidx, Cfg::kMmaThreads);
      publish_to_wgmma(Cfg::kMmaThreads, int(Sm90WsBarrier::kVTailZeroed));
    }
    // P of the tile whose P V is next, and the A operand of P V that reads it: a register fragment, or
    // (kPvFromSmem) this warpgroup's rows of sP through descriptors (p_tile is then unused: no registers).
    auto p_tile = convert_fragment<Element>(acc_s);
    Tensor tOrP = [&] {
      if constexpr (Cfg::kPvFromSmem) {
        return wg_pv.partition_fragment_A(make_tensor(make_smem_ptr(st.p.data()), typename Cfg::SmemLayoutP{}));
      } else {
        return make_tensor(p_tile.data(), acc_as_a_layout(p_tile.layout()));
      }
    }();
    auto store_p = make_tiled_copy_C(typename Cfg::SmemStoreAtomP{}, mma_qk);
    auto thr_store_p = store_p.get_thread_slice(tidx);
    static_assert(int(Sm90WsBarrier::kPStoredFirst) + Cfg::kMmaWarpgroups <= 8, "CUTLASS's 8 user barrier ids");
    // P of the scores in acc_s, where P V reads it. Shared memory: the caller has waited for this warpgroup's
    // previous P V (its wgmma reads of sP are complete).
    auto stash_p = [&] CUTLASS_LAMBDA_FUNC_INLINE {
      if constexpr (Cfg::kPvFromSmem) {
        Tensor sP = make_tensor(make_smem_ptr(st.p.data()), typename Cfg::SmemLayoutP{});
        // ((stmatrix values, stmatrix count), M, N): the destination, and the scores in the same order (fp32).
        Tensor tPsP = thr_store_p.partition_D(as_position_independent_swizzle_tensor(sP));
        Tensor tPrS = thr_store_p.retile_S(acc_s);
        // One stmatrix worth at a time: acc_s stays allocated (the next QK^T writes it), so converting the
        // whole tile first would hold a second, half-size copy of it in registers.
        CUTE_UNROLL
        for (int m = 0; m < size<1>(tPrS); ++m) {
          CUTE_UNROLL
          for (int n = 0; n < size<2>(tPrS); ++n) {
            Tensor src = tensor<0>(tPrS(_, m, n));  // (stmatrix values, stmatrix count)
            Tensor dst = tensor<0>(tPsP(_, m, n));
            CUTE_UNROLL
            for (int i = 0; i < size<1>(dst); ++i) {
              Tensor chunk = make_tensor<float>(make_layout(shape<0>(src)));
              copy(src(_, i), chunk);
              copy(typename Cfg::SmemStoreAtomP{}, convert_fragment<Element>(chunk), dst(_, i));
            }
          }
        }
        publish_to_wgmma(128, int(Sm90WsBarrier::kPStoredFirst) + tidx / 128);
      } else {
        copy(convert_fragment<Element>(acc_s), p_tile);
      }
    };
    if constexpr (Cfg::kPvFromSmem) stash_p();
    auto fence_p = [&] CUTLASS_LAMBDA_FUNC_INLINE {
      if constexpr (!Cfg::kPvFromSmem) warpgroup_fence_operand(tOrP);
    };
    float correction[kRows];  // pending rescale of O (kRescaleBeforePv)
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) correction[r] = 1.f;
    // O += P V of the tile whose P is stashed, waited for.
    auto pv_now = [&] CUTLASS_LAMBDA_FUNC_INLINE {
      wait(pipe_v, read_v);
      fence_p();
      wgmma_gemm<false>(mma_pv, tOrP, tOrVt(_, _, _, read_v.index()), acc_o);
      release(pipe_v, read_v);
    };
    if constexpr (!Cfg::kIntraWgOverlap) pv_now();

    if (n_tiles > 1) turns.open_first();

    // Step t >= 1 begins with its pingpong turn and S(t) = Q K(t)^T issued as one batch.
    auto take_turn_and_issue_s = [&] CUTLASS_LAMBDA_FUNC_INLINE {
      wait(pipe_k, read_k);
      turns.sync_own();
      warpgroup_fence_operand(acc_s);
      warpgroup_arrive();
      wgmma_issue<true>(mma_qk, tSrQ, tSrK(_, _, _, read_k.index()), acc_s);
      warpgroup_commit_batch();
    };
    // Step t >= 1: S(t) and P(t-1) V(t-1) on the tensor cores, then the softmax of S(t).
    auto overlapped_step = [&](int t, auto masked_tag) CUTLASS_LAMBDA_FUNC_INLINE {
      const int n_block = w.n_max - 1 - t;
      take_turn_and_issue_s();
      if constexpr (Cfg::kRescaleBeforePv) rescale_rows(acc_o_rc, correction);
      wait(pipe_v, read_v);
      warpgroup_fence_operand(acc_o);
      fence_p();
      warpgroup_arrive();
      wgmma_issue<false>(mma_pv, tOrP, tOrVt(_, _, _, read_v.index()), acc_o);
      warpgroup_commit_batch();
      turns.open_next(t == n_tiles - 1);
      warpgroup_wait<1>();  // S(t) is in
      warpgroup_fence_operand(acc_s);
      release(pipe_k, read_k);
      if (t == n_tiles - 1) q_done();
      Tensor scores = finish_scores(n_block, masked_tag);
      softmax_step_deferred(softmax, scores, correction);
      warpgroup_wait<0>();  // P(t-1) V(t-1) is in: P(t-1) may be overwritten
      warpgroup_fence_operand(acc_o);
      release(pipe_v, read_v);
      stash_p();
      if constexpr (!Cfg::kRescaleBeforePv) rescale_rows(acc_o_rc, correction);
    };
    // Step t >= 1 without the overlap: S(t) (the pingpong turn), its softmax (which rescales O directly: no
    // P V is in flight), then P(t) V(t).
    auto serial_step = [&](int t, auto masked_tag) CUTLASS_LAMBDA_FUNC_INLINE {
      const int n_block = w.n_max - 1 - t;
      take_turn_and_issue_s();
      turns.open_next(t == n_tiles - 1);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      release(pipe_k, read_k);
      if (t == n_tiles - 1) q_done();
      Tensor scores = finish_scores(n_block, masked_tag);
      softmax.step(scores, acc_o_rc);
      stash_p();
      pv_now();
    };
    auto step = [&](int t, auto masked_tag) CUTLASS_LAMBDA_FUNC_INLINE {
      if constexpr (Cfg::kIntraWgOverlap) {
        overlapped_step(t, masked_tag);
      } else {
        serial_step(t, masked_tag);
      }
    };

    // Tiles run from the last key block down in three phases: masked tiles at the seqlen-k / right-window
    // edge, fully visible tiles, masked tiles at the left-window edge (one loop body per kind).
    int n_hi, n_lo;  // fully visible key blocks: [n_lo, n_hi)
    w.mask.full_n_block_range<kBlockM, kBlockN>(w.m_block, n_hi, n_lo);
    n_hi = max(min(n_hi, w.n_max), w.n_min);
    n_lo = max(min(n_lo, n_hi), w.n_min);
    int t = 1;
#pragma unroll 1
    for (; t < w.n_max - n_hi; ++t) step(t, cute::true_type{});
#pragma unroll 1
    for (; t < w.n_max - n_lo; ++t) step(t, cute::false_type{});
#pragma unroll 1
    for (; t < n_tiles; ++t) step(t, cute::true_type{});

    // The last P V.
    if constexpr (Cfg::kIntraWgOverlap) {
      if constexpr (Cfg::kRescaleBeforePv) rescale_rows(acc_o_rc, correction);
      pv_now();
    }
  }
};

}  // namespace jax_flash
