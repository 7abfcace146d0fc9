// Attention of new queries over a paged KV cache (forward only): decode, multi-token decode and chunked
// prefill, split-KV. One CTA per (row block, kv head, sequence, split), composed like the dense forward:
//   scheduler   sched/paged_split_scheduler.h: the tile and its split, the split's share of the key blocks
//   rows        paged_rows.h: (query, head) pairs of one kv head (GQA packing) and where they live
//   mainloop    paged_mainloop.h, with a K / V load policy (paged_kv_cp_async.h: cp.async gathers on every GPU;
//               paged_kv_tma.h: TMA boxes for the Hopper decode, kTmaKv) and a key-split policy
//               (paged_key_split.h: rows or keys across the warps, kKeysAcrossWarps)
//   epilogue    epilogue.h, the dense forward's: O and LSE, or the split's fp32 partials (paged_combine.cuh
//               merges them)
// Work never depends on max_seqlen: the grid is a shape bound and every length is read on the device.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/mask.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/smem.h"
#include "kernels/common/seqlen.h"
#include "kernels/common/softmax.h"
#include "kernels/fwd/epilogue.h"
#include "kernels/fwd/paged_cache.h"
#include "kernels/fwd/paged_key_split.h"
#include "kernels/fwd/paged_kv_cp_async.h"
#include "kernels/fwd/paged_kv_tma.h"
#include "kernels/fwd/paged_mainloop.h"
#include "kernels/fwd/paged_rows.h"
#include "kernels/params.h"
#include "kernels/sched/paged_split_scheduler.h"

namespace jax_flash {

// The K / V load policy of the kernel variant, over the storage's K and V buffers.
template <class Cfg, class KeySplit, bool kTmaKv, class Storage>
__device__ __forceinline__ auto make_paged_kv_loads(const PagedFwdParams& params, const PagedKvTma& kv_tma,
                                                    const PagedCache& cache, Storage& storage, int n_end,
                                                    int n_tiles, int tidx) {
  using namespace cute;
  if constexpr (kTmaKv) {
    return PagedKvTmaLoads<Cfg, KeySplit::kWarpKeys>{params,       kv_tma, cache,   storage.k.data(), storage.v.data(),
                                                    n_end,        n_tiles, tidx / 32, tidx % 32};
  } else {
    Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{});
    return make_paged_kv_cp_async<Cfg>(params, cache, sK, sV, n_end, n_tiles, tidx);
  }
}

template <class Cfg, bool kSoftcap, bool kKeysAcrossWarps, bool kTmaKv>
__device__ __forceinline__ void paged_fwd_tile(const PagedFwdParams& params, const PagedKvTma& kv_tma) {
  using namespace cute;
  using KeySplit = PagedKeySplit<Cfg, kKeysAcrossWarps>;
  constexpr int kBlockM = KeySplit::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  static_assert(!kTmaKv || kKeysAcrossWarps, "TMA loads: each warp reads only its own keys");
  auto& storage = shared_storage<typename Cfg::SharedStorage>();
  const int tidx = threadIdx.x;

  using Scheduler = PagedSplitScheduler<kBlockM>;
  const WorkTile tile = Scheduler::get_tile(params);
  if (!tile.valid()) return;
  const PagedSeqInfo seq = PagedSeqInfo::make(params, tile.bidb);
  const PagedRows<typename Cfg::Element, kBlockM> rows(params, seq, tile.bidb, tile.head, tile.split, tile.block);
  if (rows.row0 >= rows.rows) return;

  // This split's share of the key blocks any row of the tile can see, last block first.
  const AttnMask mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right);
  int n_min, n_max, n_begin, n_end;
  mask.n_block_range_of_rows<kBlockN>(rows.query_first(), rows.query_last(), n_min, n_max);
  Scheduler::split_key_blocks(params, tile.split, n_min, n_max, n_begin, n_end);
  const int n_tiles = n_end - n_begin;
  const PagedCache cache(params, tile.bidb, seq.seqlen_k, tile.head);
  const auto kv = make_paged_kv_loads<Cfg, KeySplit, kTmaKv>(params, kv_tma, cache, storage, n_end, n_tiles, tidx);

  typename KeySplit::Mma mma;
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<Cfg::kHeadDimV>>{});
  static_assert(std::is_same_v<decltype(acc_o.layout()),
                               decltype(partition_fragment_C(typename Cfg::TiledMma{},
                                                             Shape<Int<Cfg::kBlockM>, Int<Cfg::kHeadDimV>>{})
                                            .layout())>,
                "the epilogue reads acc_o through the tile's mma");
  clear(acc_o);
  constexpr int kRows = decltype(size<0>(rowcol_layout(acc_o.layout())))::value;
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);
  OnlineSoftmax<kRows> softmax(score_scale.log2_scale);
  paged_mainloop<Cfg, kSoftcap, KeySplit>(params, rows, mask, n_end, n_tiles, kv, storage, score_scale, acc_o,
                                          softmax, tidx);

  KeySplit::merge(storage, softmax, acc_o, tidx);
  using Epilogue = FwdEpilogue<Cfg>;
  float lse[kRows];
  Epilogue::normalize(softmax, acc_o, score_scale.natural, lse);
  if (params.num_splits > 1) {
    Epilogue::store_partials(acc_o, lse, rows, params, tidx);
  } else {
    Epilogue::store(acc_o, lse, rows, storage.o.data(), tidx);
  }
}

template <class Cfg, bool kSoftcap, bool kKeysAcrossWarps, bool kTmaKv>
__global__ void __launch_bounds__(Cfg::kNThreads, Cfg::kMinBlocksPerSm)
    paged_fwd_kernel(const __grid_constant__ PagedFwdParams params, const __grid_constant__ PagedKvTma kv_tma) {
  // The TMA load path has code only in the sm_90a pass; the launcher never picks it elsewhere.
  if constexpr (kTmaKv && !sm90a_pass()) return;
  else paged_fwd_tile<Cfg, kSoftcap, kKeysAcrossWarps, kTmaKv>(params, kv_tma);
}

}  // namespace jax_flash
