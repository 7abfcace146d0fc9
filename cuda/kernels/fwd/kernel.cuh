// Dense attention forward: one CTA per (query block, head, sequence) tile computes O = softmax(s(Q K^T)) V and
// the row LSE, the head's attention sink in the softmax when params.sinks is set. The kernel is the composition
// scheduler (sched/single_tile_scheduler.h) x mainloop (mainloop.h: cp.async pipeline, products on mma.sync for
// every GPU or wgmma on sm_90a, chosen by the tile config's MmaKind) x epilogue (epilogue.h, shared with the
// paged forward).
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/mma_kind.h"
#include "kernels/common/smem.h"
#include "kernels/common/softmax.h"
#include "kernels/fwd/block_work.h"
#include "kernels/fwd/dense_out_rows.h"
#include "kernels/fwd/epilogue.h"
#include "kernels/fwd/mainloop.h"
#include "kernels/params.h"
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

template <class Cfg, bool kSoftcap>
__device__ __forceinline__ void attn_fwd_tile(const AttnFwdParams& params) {
  using namespace cute;
  constexpr int kBlockM = Cfg::kBlockM;
  auto& storage = shared_storage<typename Cfg::SharedStorage>();
  const int tidx = threadIdx.x;

  // Longest (causal) query blocks first: they start early and the short ones fill in at the end.
  const WorkTile tile = SingleTileScheduler<kBlockM, TileAxis::kQuery, /*kReverse=*/true>::get_tile(params);
  if (!tile.valid()) return;
  const FwdBlockWork work = FwdBlockWork::make<kBlockM, Cfg::kBlockN>(params, tile);
  if (work.m_block * kBlockM >= work.seq.seqlen_q) return;

  typename Cfg::TiledMma tiled_mma;
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<Cfg::kHeadDimV>>{});
  constexpr int kRows = decltype(size<0>(rowcol_layout(acc_o.layout())))::value;
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);
  OnlineSoftmax<kRows> softmax(score_scale.log2_scale);
  fwd_mainloop<Cfg, kSoftcap>(params, work, storage, score_scale, acc_o, softmax, tidx);

  using Epilogue = FwdEpilogue<Cfg>;
  float lse[kRows];
  Epilogue::normalize(softmax, acc_o, score_scale.natural, fwd_sink(params, work), lse);
  Epilogue::store(acc_o, lse, DenseOutRows<Cfg>::make(params, work), storage.o.data(), tidx);
}

template <class Cfg, bool kSoftcap>
__global__ void __launch_bounds__(Cfg::kNThreads, Cfg::kMinBlocksPerSm)
    attn_fwd_kernel(const __grid_constant__ AttnFwdParams params) {
  // wgmma configs have code only in the sm_90a pass; the launcher never picks them elsewhere.
  if constexpr (Cfg::MmaKind::kNeedsSm90a && !sm90a_pass()) return;
  else attn_fwd_tile<Cfg, kSoftcap>(params);
}

}  // namespace jax_flash
