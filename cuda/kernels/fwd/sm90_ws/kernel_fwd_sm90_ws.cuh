// The warp-specialized Hopper forward (sm_90a), FlashAttention-3's design: scheduler x mainloop x epilogue.
//
//   warpgroup 0 (producer, 24 registers): its first thread issues the TMA loads of Q, K and V
//                                          (mainloop_tma_ws.h, load);
//   warpgroups 1, 2 (consumers, 240 registers): 64 query rows each, wgmma products, online softmax,
//                                          pingpong and intra-warpgroup overlap (mainloop_tma_ws.h, mma),
//                                          then the forward's epilogue (fwd/epilogue.h).
// One CTA per (query block, head, sequence) from the single-tile scheduler, longest (causal) blocks first.
// Semantics are the other forwards': bottom-right aligned causal / window mask, softcap, GQA, attention sinks,
// LSE for every row (-inf, or the sink, and O = 0 for a row that sees no key).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

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
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsKernelParams {
  AttnFwdParams attn;
  typename Sm90WsMainloop<Cfg>::Params mainloop;
};

template <class Cfg>
using Sm90WsScheduler = SingleTileScheduler<Cfg::kBlockM, TileAxis::kQuery, /*kReverse=*/true>;

template <class Cfg, bool kSoftcap>
__device__ __forceinline__ void attn_fwd_sm90_ws_cta(const Sm90WsKernelParams<Cfg>& kp) {
  using namespace cute;
  using Mainloop = Sm90WsMainloop<Cfg>;
  using Storage = Sm90WsSharedStorage<Cfg>;
  using Pipeline = typename Storage::Pipeline;
  const AttnFwdParams& p = kp.attn;

  extern __shared__ __align__(1024) char smem[];
  Storage& st = *reinterpret_cast<Storage*>(smem);

  const WorkTile tile = Sm90WsScheduler<Cfg>::get_tile(p);
  if (!tile.valid()) return;
  const FwdBlockWork w = FwdBlockWork::make<Cfg::kBlockM, Cfg::kBlockN>(p, tile);
  if (w.m_block * Cfg::kBlockM >= w.seq.seqlen_q) return;

  const bool producer = warpgroup_index() == 0;

  if (threadIdx.x == 0) st.barrier_q.init(/*arrive_count=*/1);
  auto pipeline_params = [&](int bytes) {
    return ws_pipeline_params<Pipeline>(bytes, producer, Cfg::kMmaWarpgroups);
  };
  // The constructors initialize the barriers (warp 0) and fence the initialization.
  Pipeline pipe_k(st.pipeline_k, pipeline_params(Cfg::kBytesK), Shape<_1, _1, _1>{});
  Pipeline pipe_v(st.pipeline_v, pipeline_params(Cfg::kBytesV), Shape<_1, _1, _1>{});
  __syncthreads();

  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    if (threadIdx.x == 0 && w.n_tiles() > 0) Mainloop::load(kp.mainloop, p, st, pipe_k, pipe_v, w);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMmaRegs>();
    const int tidx = int(threadIdx.x) - 128;
    typename Cfg::TiledMmaPV mma_pv;
    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Cfg::kBlockM>, Int<Cfg::kHeadDimV>>{});
    clear(acc_o);
    const ScoreScale score_scale = ScoreScale::make(p.scale, p.softcap);
    constexpr int kRows = decltype(size<0>(rowcol_layout(acc_o.layout())))::value;
    OnlineSoftmax<kRows> softmax(score_scale.log2_scale);
    if (w.n_tiles() > 0) {
      Mainloop::template mma<kSoftcap>(st, pipe_k, pipe_v, w, tidx, score_scale, acc_o, softmax);
    }
    Tensor acc_o_rc = rowcol_view(acc_o);
    float lse[kRows];
    softmax.finalize(acc_o_rc, score_scale.natural, fwd_sink(p, w), lse);
    // O is staged over Q as soon as this warpgroup's own last QK^T is done, while the other may still be
    // computing: SmemLayoutO has Q's 8-row atoms (tile_size.h), so each warpgroup's 64 rows of O cover only the
    // bytes of its own 64 rows of Q. The consumer warpgroups (not the producer, which may have exited) then
    // meet on a named barrier and store the tile together.
    auto consumers_staged = [] {
      cutlass::arch::NamedBarrier::sync(Cfg::kMmaThreads, int(Sm90WsBarrier::kOutputStaged));
    };
    FwdEpilogue<Cfg>::stage_and_store(mma_pv, acc_o, lse, DenseOutRows<Cfg>::make(p, w), st.q.data(), tidx,
                                      consumers_staged);
  }
}

// kSoftcap: a separate instantiation keeps the tanh out of the uncapped kernel's mainloop.
template <class Cfg, bool kSoftcap>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attn_fwd_sm90_ws_kernel(const __grid_constant__ Sm90WsKernelParams<Cfg> kp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  attn_fwd_sm90_ws_cta<Cfg, kSoftcap>(kp);
#endif
}

}  // namespace jax_flash
