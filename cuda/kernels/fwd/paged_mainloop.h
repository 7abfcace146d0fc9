// The paged forward's mainloop: stream this split's key tiles of the cache (last first) through the K / V load
// policy (paged_kv_cp_async.h on every GPU, paged_kv_tma.h for the Hopper decode), each warp multiplying the
// rows and keys its key-split policy gives it (paged_key_split.h), with the dense forward's mask and online
// softmax. Products are mma.sync: the decode is bound by memory, not by the tensor cores.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/fragment.h"
#include "kernels/common/gather_copy.h"
#include "kernels/common/mask.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/common/softmax.h"
#include "kernels/params.h"

namespace jax_flash {

// On return acc_o (the accumulator of KeySplit::Mma over (KeySplit::kBlockM, kHeadDimV), cleared by the caller)
// and softmax hold this warp's unnormalized output and row statistics over its keys of tiles n_end - 1 down to
// n_end - n_tiles. rows: PagedRows (paged_rows.h); kv: a K / V load policy over the storage's K and V buffers.
template <class Cfg, bool kSoftcap, class KeySplit, class Rows, class KvLoads, class Storage, class AccO, int kRows>
__device__ __forceinline__ void paged_mainloop(const PagedFwdParams& params, const Rows& rows, const AttnMask& mask,
                                               int n_end, int n_tiles, const KvLoads& kv, Storage& storage,
                                               const ScoreScale& score_scale, AccO& acc_o,
                                               OnlineSoftmax<kRows>& softmax, int tidx) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  constexpr int kStages = Cfg::kStages;
  constexpr int kMmaRows = KeySplit::kBlockM;
  constexpr int kWarpKeys = KeySplit::kWarpKeys;
  const int warp = tidx / 32;
  const int mma_tidx = KeySplit::mma_thread(tidx);
  const int warp_key0 = kWarpKeys * KeySplit::key_slice(warp);  // first key of this warp's products in a tile

  Tensor sQ = make_tensor(make_smem_ptr(storage.q.data()), typename Cfg::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{});
  Tensor sVt = make_tensor(sV.data(), typename Cfg::SmemLayoutVt{});

  // Q rows gathered over the query heads of the group (cp.async, zero fill), then the first K / V tiles.
  auto gmem_thr_q = typename Cfg::GmemCopyQK{}.get_thread_slice(tidx);
  Tensor tQcQ = gmem_thr_q.partition_S(make_identity_tensor(Shape<Int<Cfg::kBlockM>, Int<kHeadDim>>{}));
  load_rows_gather(static_cast<const Element*>(params.q), gmem_thr_q.partition_D(sQ), tQcQ,
                   [&](int r) { return rows.pair_offset(r, params.q_row_stride, params.q_head_stride); },
                   params.head_dim);
  cute::cp_async_fence();
  kv.prologue();

  // This warp's products: its rows (or the tile's) x its keys of each tile (or all of them).
  typename KeySplit::Mma mma;
  auto thr = mma.get_thread_slice(mma_tidx);
  Tensor sQm = local_tile(sQ, Shape<Int<kMmaRows>, Int<kHeadDim>>{}, make_coord(0, 0));
  Tensor sKm = local_tile(sK, Shape<Int<kWarpKeys>, Int<kHeadDim>, Int<kStages>>{},
                          make_coord(KeySplit::key_slice(warp), 0, 0));
  Tensor sVtm = local_tile(sVt, Shape<Int<kHeadDimV>, Int<kWarpKeys>, Int<kStages>>{},
                           make_coord(0, KeySplit::key_slice(warp), 0));
  Tensor tSrQ = thr.partition_fragment_A(sQm);
  Tensor tSrK = thr.partition_fragment_B(sKm(_, _, 0));
  Tensor tOrVt = thr.partition_fragment_B(sVtm(_, _, 0));
  auto smem_copy_q = make_tiled_copy_A(typename Cfg::SmemCopyAtomQK{}, mma);
  auto smem_copy_k = make_tiled_copy_B(typename Cfg::SmemCopyAtomQK{}, mma);
  auto smem_copy_v = make_tiled_copy_B(typename Cfg::SmemCopyAtomVt{}, mma);
  Tensor tSsQ = smem_copy_q.get_thread_slice(mma_tidx).partition_S(sQm);
  Tensor tSsK = smem_copy_k.get_thread_slice(mma_tidx).partition_S(sKm);
  Tensor tOsVt = smem_copy_v.get_thread_slice(mma_tidx).partition_S(sVtm);
  Tensor tScS_rc = rowcol_view(thr.partition_C(make_identity_tensor(Shape<Int<kMmaRows>, Int<kWarpKeys>>{})));
  Tensor acc_o_rc = rowcol_view(acc_o);
  const bool warp_has_rows = KeySplit::warp_has_rows(warp, rows.rows_left);
  const int query_first = rows.query_first(), query_last = rows.query_last();

  // Q in shared memory already (the policy's prologue waited for it): every tile reuses the warp's fragments.
  if constexpr (KvLoads::kQInRegisters) copy(smem_copy_q, tSsQ, smem_copy_q.get_thread_slice(mma_tidx).retile_D(tSrQ));

#pragma unroll 1
  for (int t = 0; t < n_tiles; ++t) {
    const int n_block = n_end - 1 - t;
    const int stage = t % kStages;
    kv.before_qk(t);
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kMmaRows>, Int<kWarpKeys>>{});
    if (warp_has_rows) {
      if constexpr (KvLoads::kQInRegisters) {
        clear(acc_s);
        gemm_rs(acc_s, tSrQ, tSrK, tSsK(_, _, _, stage), mma, smem_copy_k);
      } else {
        gemm_ss</*kZeroInit=*/true>(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), mma, smem_copy_q, smem_copy_k);
      }
      if constexpr (kSoftcap) apply_softcap(acc_s, score_scale.pre_tanh);
    }
    kv.before_pv(t, n_block);
    if (warp_has_rows) {
      Tensor scores = rowcol_view(acc_s);
      if (!mask.keys_fully_visible<kBlockN>(query_first, query_last, n_block)) {
        mask.apply_to_rows(scores, tScS_rc, [&](int r) { return rows.query_of_row(r); }, n_block * kBlockN + warp_key0);
      }
      softmax.template step<KeySplit::kSkipKeptMax>(scores, acc_o_rc);
      kv.after_scores(t);
      Tensor p = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(p.data(), acc_as_a_layout(p.layout()));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), mma, smem_copy_v);
    }
    kv.after_pv(t);
  }
}

}  // namespace jax_flash
