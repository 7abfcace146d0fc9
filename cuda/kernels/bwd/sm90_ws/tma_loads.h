// The producer side of the warp-specialized Hopper dK/dV kernel, shared by its mainloops (mainloop_tma_ws.h,
// the swapped layout; mainloop_tma_ws_split.h, the split layout): the TMA maps of Q, dO, K, V and the backward's
// workspace pointers (Params), the pipelines' state as a function of the step, and the loads of one producer
// thread: K and V once (one transaction barrier), then Q and dO of every step (query head, query block:
// dkdv_work.h) into two PipelineTmaAsync pipelines. It waits for a stage's release before it refills it.
//
// Cfg provides Element, kBlockM, kBlockN, kHeadDim, kHeadDimV, kStages, the shared layouts SmemLayoutQ / Do / K
// / V (K-major tiles with a stage mode) and kBytesK / kBytesV. Rows past the sequence and columns past the real
// head dims arrive as zeros in dense layouts (the tensor maps are the real shapes).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <cstdint>

#include "kernels/bwd/dkdv_work.h"
#include "kernels/common/warp_specialized.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsBwdTmaLoads {
  using Element = typename Cfg::Element;
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kHeadDimV = Cfg::kHeadDimV;
  using Pipeline = cutlass::PipelineTmaAsync<Cfg::kStages>;  // Q, dO: one each
  using PipelineState = typename Pipeline::PipelineState;
  using Work = DkdvWork<kBlockM, kBlockN>;

  using Rows = TmaRows<Element>;  // the global tensors as the maps see them (common/warp_specialized.h)
  using Shape4 = typename Rows::Shape4;
  using TileQ = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>;
  using TileDo = cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimV>>;
  using TileK = cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>>;
  using TileV = cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDimV>>;
  using TmaQ = typename Rows::template Load<typename Cfg::SmemLayoutQ, TileQ>;
  using TmaDo = typename Rows::template Load<typename Cfg::SmemLayoutDo, TileDo>;
  using TmaK = typename Rows::template Load<typename Cfg::SmemLayoutK, TileK>;
  using TmaV = typename Rows::template Load<typename Cfg::SmemLayoutV, TileV>;

  // The tensor maps (they hold the tensors' addresses, so they are encoded on the host at each launch) and
  // the backward's workspace: delta (read) and the dq accumulator in blocks (added to; nullptr without dQ),
  // workspace_layout.h.
  struct Params {
    TmaQ tma_q;
    TmaDo tma_do;
    TmaK tma_k;
    TmaV tma_v;
    const float* delta;
    float* dq_accum;
    int* dq_semaphores;  // the ordered adds' (dq_accum_blocks.h), one per block; else nullptr
  };

  // The pipelines' state at step `step`: both pipelines (same stages) move once per step, so the state is a
  // function of the step alone and no state is carried through the loops (registers, the producer's most).
  // The producer starts on the opposite phase, as cutlass::make_producer_start_state.
  __device__ static PipelineState pipeline_state(int step, bool producer) {
    const uint32_t phase = uint32_t(step / Cfg::kStages) & 1u;
    return PipelineState(step % Cfg::kStages, producer ? phase ^ 1u : phase, uint32_t(step));
  }

  __host__ __device__ static Shape4 shape_q(const AttnBwdParams& p) {
    return cute::make_shape(p.seqlen_q, p.head_dim, p.heads_q, p.layout_batch());
  }
  __host__ __device__ static Shape4 shape_do(const AttnBwdParams& p) {
    return cute::make_shape(p.seqlen_q, p.head_dim_v, p.heads_q, p.layout_batch());
  }
  __host__ __device__ static Shape4 shape_k(const AttnBwdParams& p) {
    return cute::make_shape(p.seqlen_k, p.head_dim, p.heads_k, p.layout_batch());
  }
  __host__ __device__ static Shape4 shape_v(const AttnBwdParams& p) {
    return cute::make_shape(p.seqlen_k, p.head_dim_v, p.heads_k, p.layout_batch());
  }

  // Host: encode the maps. The caller checked what a map needs (16-byte aligned bases and strides) and that
  // there are keys (seqlen_k > 0).
  static Params make_params(const AttnBwdParams& p, const float* delta, float* dq_accum, int* dq_semaphores) {
    const bool packed = p.packed();
    auto k = Rows::tensor(p.k, shape_k(p), p.k_row_stride, p.k_head_stride, p.k_batch_stride, packed);
    auto v = Rows::tensor(p.v, shape_v(p), p.v_row_stride, p.v_head_stride, p.v_batch_stride, packed);
    // No query at all: no step ever loads Q or dO (every CTA only writes zero dK / dV), but a map of zero rows
    // cannot be encoded; K and V stand in.
    const bool no_queries = p.seqlen_q == 0;
    auto q = no_queries ? k
                        : Rows::tensor(p.q, shape_q(p), p.q_row_stride, p.q_head_stride, p.q_batch_stride, packed);
    auto dout = no_queries ? v
                           : Rows::tensor(p.dout, shape_do(p), p.dout_row_stride, p.dout_head_stride,
                                          p.dout_batch_stride, packed);
    return {Rows::template load<typename Cfg::SmemLayoutQ, TileQ>(q),
            Rows::template load<typename Cfg::SmemLayoutDo, TileDo>(dout),
            Rows::template load<typename Cfg::SmemLayoutK, TileK>(k),
            Rows::template load<typename Cfg::SmemLayoutV, TileV>(v),
            delta,
            dq_accum,
            dq_semaphores};
  }

  // Producer: run by one thread (lane 0 of the producer's warp 0), for a CTA with at least one step. K and V
  // once, then per step Q and dO; producer_acquire waits for the stage's release and arrives with the TMA
  // bytes.
  // Storage: the mainloop's shared storage (q, dout, k, v tiles with Cfg's layouts, barrier_kv).
  template <class Storage>
  __device__ static void load_tiles(const Params& mp, const AttnBwdParams& p, Storage& st, Pipeline& pipe_q,
                                    Pipeline& pipe_do, const Work& w) {
    using namespace cute;
    prefetch_tma_descriptor(mp.tma_q.get_tma_descriptor());
    prefetch_tma_descriptor(mp.tma_do.get_tma_descriptor());
    prefetch_tma_descriptor(mp.tma_k.get_tma_descriptor());
    prefetch_tma_descriptor(mp.tma_v.get_tma_descriptor());
    const int batch = w.seq.packed ? 0 : w.bidb;
    {
      const int k_row0 = int(w.seq.k_start);
      Tensor mK = mp.tma_k.get_tma_tensor(shape_k(p))(_, _, w.bidhk, batch);
      Tensor mV = mp.tma_v.get_tma_tensor(shape_v(p))(_, _, w.bidhk, batch);
      Tensor gK = local_tile(domain_offset(make_coord(k_row0, _0{}), mK), TileK{}, make_coord(w.n_block, _0{}));
      Tensor gV = local_tile(domain_offset(make_coord(k_row0, _0{}), mV), TileV{}, make_coord(w.n_block, _0{}));
      Tensor sK = make_tensor(make_smem_ptr(st.k.data()), typename Cfg::SmemLayoutK{});
      Tensor sV = make_tensor(make_smem_ptr(st.v.data()), typename Cfg::SmemLayoutV{});
      auto cta_k = mp.tma_k.get_slice(_0{});
      auto cta_v = mp.tma_v.get_slice(_0{});
      // K / V: read by this CTA only. Q / dO: read by every key block of the head, so kept in L2.
      st.barrier_kv.arrive_and_expect_tx(Cfg::kBytesK + Cfg::kBytesV);
      auto& bar_kv = reinterpret_cast<uint64_t&>(st.barrier_kv);
      copy(mp.tma_k.with(bar_kv, 0, TMA::CacheHintSm90::EVICT_FIRST), cta_k.partition_S(gK),
           cta_k.partition_D(sK(_, _, 0)));
      copy(mp.tma_v.with(bar_kv, 0, TMA::CacheHintSm90::EVICT_FIRST), cta_v.partition_S(gV),
           cta_v.partition_D(sV(_, _, 0)));
    }
    const int q_row0 = int(w.seq.q_start);
    Tensor sQ = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutQ{});
    Tensor sDo = make_tensor(make_smem_ptr(st.dout.data()), typename Cfg::SmemLayoutDo{});
    auto cta_q = mp.tma_q.get_slice(_0{});
    auto cta_do = mp.tma_do.get_slice(_0{});
    Tensor tQsQ = cta_q.partition_D(sQ);     // (TMA, 1, 1, stage)
    Tensor tDosDo = cta_do.partition_D(sDo);  // (TMA, 1, 1, stage)
#pragma unroll 1
    for (int step = 0; step < w.steps; ++step) {
      const PipelineState write = pipeline_state(step, /*producer=*/true);
      int bidh, m_block;
      w.query_tile(step, p.kv_group, bidh, m_block);
      pipe_q.producer_acquire(write);
      Tensor mQ = mp.tma_q.get_tma_tensor(shape_q(p))(_, _, bidh, batch);
      Tensor gQ = local_tile(domain_offset(make_coord(q_row0, _0{}), mQ), TileQ{}, make_coord(m_block, _0{}));
      copy(mp.tma_q.with(*pipe_q.producer_get_barrier(write), 0, TMA::CacheHintSm90::EVICT_LAST),
           cta_q.partition_S(gQ), tQsQ(_, _, _, write.index()));
      pipe_do.producer_acquire(write);
      Tensor mDo = mp.tma_do.get_tma_tensor(shape_do(p))(_, _, bidh, batch);
      Tensor gDo = local_tile(domain_offset(make_coord(q_row0, _0{}), mDo), TileDo{}, make_coord(m_block, _0{}));
      copy(mp.tma_do.with(*pipe_do.producer_get_barrier(write), 0, TMA::CacheHintSm90::EVICT_LAST),
           cta_do.partition_S(gDo), tDosDo(_, _, _, write.index()));
    }
  }
};

}  // namespace jax_flash
