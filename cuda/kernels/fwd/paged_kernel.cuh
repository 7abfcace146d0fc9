// Attention of new queries over a paged KV cache (forward only): decode, multi-token decode and chunked
// prefill, split-KV. Built from the dense forward's pieces (mask, online softmax, GEMMs, tile config).
//
// Rows of a tile are (query, query head) pairs of ONE kv head, query-major: row = query * kv_group + g for
// query head bidhk * kv_group + g (GQA packing). A decode step of a G-way group is G rows, so each page of
// K and V is read once per kv head, not once per query head. With the rows split across warps, warps whose
// 16 rows hold no pair skip their MMAs but still load and synchronize; decode splits the keys instead (below).
//
// Keys come from the pages of the sequence's page-table row: key j lives in page page_table[b, j / page_size]
// at slot j % page_size. Every K / V tile row is gathered on its own (paged_copy.h), so any page size that is
// a multiple of 8 works and tiles may straddle pages. Device data is clamped: seqlen_k = cache_seqlens[b] in
// [0, capacity]; a page index outside [0, num_pages) reads as zeros.
//
// CTA = (row block, kv head, sequence, split). Split s walks its share of the tile's visible key blocks and
// writes the normalized fp32 output and LSE to the partial buffers (paged_combine.cuh merges them); without
// splits the CTA writes out and lse directly. Work never depends on max_seqlen: the grid is a shape bound
// (block_info.h) and every length is read on the device.
//
// Pipeline as in fwd_kernel.cuh (K and V in kStages buffers, one cp.async group per tile, V[t] landing under
// QK^T of step t and K[t+1] under the softmax and PV of step t). On Hopper, decode loads K and V with the TMA
// unit instead (kTmaKv, paged_kv_tma.h, its own tile config in paged_tile_config.h): each warp loads its own
// keys of every tile, reissuing its K rows once its scores are final and its V rows after PV, with an mbarrier
// per (warp, stage, K or V); no CTA-wide barrier remains in the mainloop.
//
// Two ways to share a tile among the 4 warps (kKeysAcrossWarps, chosen by the launcher from static shapes):
//   false: 64 rows, warp w owns rows [16 w, 16 w + 16) and every key of the tile (prefill, long query runs);
//   true:  16 rows (decode: at most 16 (query, head) pairs per sequence and kv head), warp w owns keys
//          [w n, w n + n) of every key tile (n = kBlockN / 4) with its own online softmax; the 4 partial
//          results are merged through shared memory at the end. All warps compute instead of one.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/fragment.h"
#include "kernels/common/gather_copy.h"
#include "kernels/common/mask.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/common/seqlen.h"
#include "kernels/common/softmax.h"
#include "kernels/fwd/paged_kv_tma.h"
#include "kernels/params.h"

namespace jax_flash {

// Lengths of sequence b and where its queries start.
struct PagedSeqInfo {
  int seqlen_q, seqlen_k;
  int64_t q_start;  // packed: first token of the sequence; dense: 0

  __device__ static PagedSeqInfo make(const PagedFwdParams& p, int bidb) {
    const int capacity = p.max_pages * p.page_size;
    const int seqlen_k = min(max(p.cache_seqlens[bidb], 0), capacity);
    if (!p.packed()) return {p.seqlen_q, seqlen_k, 0};
    const PackedSpan q = PackedSpan::load(p.cu_seqlens_q, nullptr, bidb, p.seqlen_q);
    return {q.length, seqlen_k, q.start};
  }

  // Row of query `query` in the (B * Sq) or (Tq) query-row axis shared by out / lse / the partials.
  __device__ int64_t query_row(const PagedFwdParams& p, int bidb, int query) const {
    return p.packed() ? q_start + query : int64_t(bidb) * p.seqlen_q + query;
  }
  // Index of (query, head) in lse: dense (B, Hq, Sq), packed (Hq, Tq).
  __device__ int64_t lse_index(const PagedFwdParams& p, int bidb, int head, int query) const {
    return (p.packed() ? q_start : int64_t(bidb) * p.lse_batch_stride) + int64_t(head) * p.lse_head_stride + query;
  }
};

// Sequence and split of this CTA in the dense grid's z, its (sequence, split) pairs: sequence-major with equal
// splits, split-major with halving ones (every sequence's biggest split launches first).
struct PagedDenseZ {
  int bidb, split;
};
__device__ __forceinline__ PagedDenseZ paged_dense_z(const PagedFwdParams& p) {
  const int z = int(blockIdx.z);
  return p.split_halving ? PagedDenseZ{z % p.batch, z / p.batch} : PagedDenseZ{z / p.num_splits, z % p.num_splits};
}

// Split of this CTA: the packed grid's z is the split itself.
__device__ __forceinline__ int paged_split_of_cta(const PagedFwdParams& p) {
  return p.packed() ? int(blockIdx.z) : paged_dense_z(p).split;
}

// Key blocks [begin, end) of split `split` among the n = n_max - n_min visible ones. Equal parts, or halving:
// split s < num_splits - 1 ends where ceil(n / 2^(s + 1)) blocks remain, and the last split takes those.
__device__ __forceinline__ void paged_split_blocks(const PagedFwdParams& p, int split, int n_min, int n_max,
                                                   int& begin, int& end) {
  const int n = max(n_max - n_min, 0);
  if (p.split_halving) {
    auto left_after = [&](int s) {  // blocks after split s
      return s + 1 >= p.num_splits ? 0 : int((int64_t(n) + (int64_t(1) << (s + 1)) - 1) >> (s + 1));
    };
    begin = n_max - (split == 0 ? n : left_after(split - 1));
    end = n_max - left_after(split);
  } else {
    const int per_split = ceil_div(n, p.num_splits);
    begin = min(n_min + split * per_split, n_max);
    end = min(begin + per_split, n_max);
  }
}

// The (sequence, row block) of this CTA. Dense grid: (row blocks, Hk, B * num_splits). Packed grid:
// (ceil(Tq * kv_group / kBlockM) + B, Hk, num_splits), mapped to tiles by the lengths on the device.
template <int kBlockM>
__device__ TileCoord schedule_paged_tile(const PagedFwdParams& p) {
  if (!p.packed()) return {paged_dense_z(p).bidb, int(blockIdx.x)};
  __shared__ TileCoord shared_coord;
  if (threadIdx.x < 32) {
    const TileCoord coord =
        block_info_detail::find_packed_tile<kBlockM, TileAxis::kQuery>(p, int(blockIdx.x), p.kv_group);
    if (threadIdx.x == 0) shared_coord = coord;
  }
  __syncthreads();
  return shared_coord;
}

// Keys split across warps: every warp holds the online-softmax state and output accumulator of the same 16 rows
// over its own keys, in the same per-lane layout. Warps 1.. publish theirs through shared memory (the K / V
// buffers, free once every copy landed) and warp 0 folds them into its own, as if it had seen every key.
template <class Cfg, int kRows, class Acc>
__device__ __forceinline__ void merge_warp_partials(char* smem, OnlineSoftmax<kRows>& softmax, Acc& acc_o,
                                                    int tidx) {
  constexpr int kAcc = decltype(cute::size(acc_o))::value;
  constexpr int kPerLane = kAcc + 2 * kRows;  // acc_o, row_max, row_sum
  static_assert((Cfg::kNWarps - 1) * kPerLane * 32 * int(sizeof(float)) <=
                    (Cfg::kSmemKElems + Cfg::kSmemVElems) * int(sizeof(typename Cfg::Element)),
                "the partials fit in the K / V buffers");
  float* partials = reinterpret_cast<float*>(smem + Cfg::kSmemQOElems * sizeof(typename Cfg::Element));
  const int warp = tidx / 32, lane = tidx % 32;
  cute::cp_async_wait<0>();
  __syncthreads();  // every warp is done with K / V
  if (warp > 0) {
    float* mine = partials + (warp - 1) * kPerLane * 32 + lane;  // value i of this lane at mine[32 i]
    CUTE_UNROLL
    for (int i = 0; i < kAcc; ++i) mine[32 * i] = acc_o(i);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      mine[32 * (kAcc + r)] = softmax.row_max[r];
      mine[32 * (kAcc + kRows + r)] = softmax.row_sum[r];
    }
  }
  __syncthreads();
  if (warp != 0) return;
  auto acc_o_rc = rowcol_view(acc_o);
  for (int w = 1; w < Cfg::kNWarps; ++w) {
    const float* theirs = partials + (w - 1) * kPerLane * 32 + lane;
    float scale_mine[kRows], scale_theirs[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float their_max = theirs[32 * (kAcc + r)];
      const float m = fmaxf(softmax.row_max[r], their_max);
      const float offset = m == -INFINITY ? 0.f : m * softmax.log2_scale;  // as in OnlineSoftmax::step
      scale_mine[r] = fast_exp2(softmax.row_max[r] * softmax.log2_scale - offset);
      scale_theirs[r] = fast_exp2(their_max * softmax.log2_scale - offset);
      softmax.row_max[r] = m;
      softmax.row_sum[r] = softmax.row_sum[r] * scale_mine[r] + theirs[32 * (kAcc + kRows + r)] * scale_theirs[r];
    }
    // Element (r, c) of the row-col view is value value_of(r, c) of the fragment, stored in value order.
    constexpr auto value_of = rowcol_layout(decltype(acc_o.layout()){});
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(acc_o_rc); ++c) {
        acc_o_rc(r, c) = acc_o_rc(r, c) * scale_mine[r] + theirs[32 * value_of(r, c)] * scale_theirs[r];
      }
    }
  }
}

template <class Cfg, bool kSoftcap, bool kKeysAcrossWarps, bool kTmaKv>
__global__ void __launch_bounds__(Cfg::kNThreads, Cfg::kMinBlocksPerSm)
    paged_fwd_kernel(const __grid_constant__ PagedFwdParams params, const __grid_constant__ PagedKvTma kv_tma) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // The TMA load path exists only in sm_90a code; the launcher never picks it elsewhere.
  if constexpr (kTmaKv) return;
#endif
  using namespace cute;
  using Element = typename Cfg::Element;
  // Rows of the tile: the 4 warps' 16-row slices, or one slice shared by the 4 warps (see above).
  constexpr int kBlockM = kKeysAcrossWarps ? 16 : Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  constexpr int kStages = Cfg::kStages;
  constexpr int kGroupsInFlight = 2 * kStages - 2;
  constexpr int kWarps = Cfg::kNWarps;
  // Keys of a tile each warp multiplies: all of them (row split), or its own slice (keys split).
  constexpr int kWarpKeys = kKeysAcrossWarps ? kBlockN / kWarps : kBlockN;
  static_assert(!kKeysAcrossWarps || kBlockN % (16 * kWarps) == 0, "each warp owns a multiple of 16 keys of a tile");
  static_assert(!kTmaKv || (kKeysAcrossWarps && SmemTileAtom<Element, kHeadDim>::kAtomCols == 64 &&
                            SmemTileAtom<Element, kHeadDimV>::kAtomCols == 64),
                "TMA boxes: 64-column swizzle atoms, each warp reading only its own keys");

  // 1024-byte alignment: TMA boxes with the 128-byte swizzle start on 1024-byte boundaries.
  extern __shared__ __align__(1024) char smem[];

  const TileCoord tile = schedule_paged_tile<kBlockM>(params);
  if (tile.bidb < 0) return;
  const int bidb = tile.bidb;
  const int bidhk = blockIdx.y;
  const int split = paged_split_of_cta(params);
  const int tidx = threadIdx.x;
  const int warp = tidx / 32;
  const int group = params.kv_group;

  const PagedSeqInfo seq = PagedSeqInfo::make(params, bidb);
  const int rows = seq.seqlen_q * group;  // (query, head) pairs of this sequence and kv head
  const int row0 = tile.block * kBlockM;
  if (row0 >= rows) return;
  const int rows_left = rows - row0;
  const int query_first = row0 / group;
  const int query_last = (row0 + min(kBlockM, rows_left) - 1) / group;

  // This split's share of the key blocks any row of the tile can see, last block first.
  const AttnMask mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right);
  int n_min, n_max, n_begin, n_end;
  mask.n_block_range_of_rows<kBlockN>(query_first, query_last, n_min, n_max);
  paged_split_blocks(params, split, n_min, n_max, n_begin, n_end);
  const int n_tiles = n_end - n_begin;
  auto tile_fully_visible = [&](int n_block) {
    const int key_first = n_block * kBlockN;
    const int key_last = key_first + kBlockN - 1;
    return key_last < seq.seqlen_k && key_first >= mask.key_begin(query_last) &&
           key_last < mask.key_end(query_first);
  };

  // ---- Row addresses ------------------------------------------------------------------------------------
  // Tile row r -> element offset of its (query, head) row in a q-like tensor, or -1 past the pairs.
  auto pair_offset = [&](int r, int64_t row_stride, int64_t head_stride) -> int64_t {
    const int pair = row0 + r;
    if (r >= kBlockM || pair >= rows) return -1;
    const int query = pair / group;
    const int head = bidhk * group + (pair - query * group);
    return seq.query_row(params, bidb, query) * row_stride + int64_t(head) * head_stride;
  };
  const int* page_row = params.page_table + int64_t(bidb) * params.page_table_stride;
  // Key `key` -> element offset of its row in the cache (head bidhk included), or -1: past the sequence
  // (masked anyway) or in a page outside the cache (reads as zeros).
  auto key_offset = [&](int key, int64_t page_stride, int64_t row_stride, int64_t head_stride) -> int64_t {
    if (key >= seq.seqlen_k) return -1;
    const int page_slot = key / params.page_size;
    const int page = page_row[page_slot];
    if (page < 0 || page >= params.num_pages) return -1;
    return int64_t(page) * page_stride + int64_t(key - page_slot * params.page_size) * row_stride +
           int64_t(bidhk) * head_stride;
  };

  // ---- Shared tiles -------------------------------------------------------------------------------------
  Element* smem_q = reinterpret_cast<Element*>(smem);
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutQ{});
  Tensor sO = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutO{});
  Tensor sK = make_tensor(make_smem_ptr(smem_q + Cfg::kSmemQOElems), typename Cfg::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(smem_q + Cfg::kSmemQOElems + Cfg::kSmemKElems), typename Cfg::SmemLayoutV{});
  Tensor sVt = make_tensor(sV.data(), typename Cfg::SmemLayoutVt{});

  // ---- Global -> shared copies (gathered rows, cp.async, zero fill) ---------------------------------------
  typename Cfg::GmemCopyQK gmem_copy_qk;
  typename Cfg::GmemCopyV gmem_copy_v;
  auto gmem_thr_qk = gmem_copy_qk.get_thread_slice(tidx);
  auto gmem_thr_v = gmem_copy_v.get_thread_slice(tidx);
  Tensor tQsQ = gmem_thr_qk.partition_D(sQ);
  Tensor tKsK = gmem_thr_qk.partition_D(sK);  // (CPY, CPY_N, CPY_K, stage)
  Tensor tVsV = gmem_thr_v.partition_D(sV);
  Tensor tQcQ = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<Cfg::kBlockM>, Int<kHeadDim>>{}));
  Tensor tKcK = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tVcV = gmem_thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDimV>>{}));

  const auto* q_base = static_cast<const Element*>(params.q);
  const auto* k_base = static_cast<const Element*>(params.k);
  const auto* v_base = static_cast<const Element*>(params.v);
  // Key tile of step t is n_end - 1 - t.
  auto load_k = [&](int t) {
    const int key0 = (n_end - 1 - t) * kBlockN;
    load_rows_gather(k_base, tKsK(_, _, _, t % kStages), tKcK, [&](int r) {
      return key_offset(key0 + r, params.k_page_stride, params.k_row_stride, params.k_head_stride);
    }, params.head_dim);
  };
  auto load_v = [&](int t) {
    const int key0 = (n_end - 1 - t) * kBlockN;
    load_rows_gather(v_base, tVsV(_, _, _, t % kStages), tVcV, [&](int r) {
      return key_offset(key0 + r, params.v_page_stride, params.v_row_stride, params.v_head_stride);
    }, params.head_dim_v);
  };

  // TMA path: each warp loads its own keys of every tile. Its K of stage s completes on
  // kv_full[warp][s][0], V on kv_full[warp][s][1]; tile t uses phase (t / kStages) % 2.
  __shared__ uint64_t kv_full[kTmaKv ? kWarps : 1][kStages][2];
  // Cache page of key `key`, -1 past the sequence (the TMA unit zero-fills boxes outside the cache).
  auto page_of_key = [&](int key) { return key < seq.seqlen_k ? page_row[key / params.page_size] : -1; };
  // By the 32 lanes of each warp, for its own keys of tile t: K (operand 0) or V (operand 1).
  auto tma_load = [&](int t, int operand) {
    if constexpr (kTmaKv) {
      const int stage = t % kStages, lane = tidx % 32, row0 = kWarpKeys * warp;
      const int key0 = (n_end - 1 - t) * kBlockN;
      uint64_t& full = kv_full[warp][stage][operand];
      if (operand == 0) {
        tma_load_rows<kWarpKeys, kHeadDim, Element>(&kv_tma.k, full, sK(_, _, stage), row0, key0, bidhk,
                                                    params.page_size, kv_tma.box_rows, lane, page_of_key);
      } else {
        tma_load_rows<kWarpKeys, kHeadDimV, Element>(&kv_tma.v, full, sV(_, _, stage), row0, key0, bidhk,
                                                     params.page_size, kv_tma.box_rows, lane, page_of_key);
      }
    }
  };
  // Reissue this warp's rows of a buffer for tile t once its lanes are done reading them (ldmatrix, a generic
  // proxy read, before the TMA unit's async-proxy write).
  auto tma_reload = [&](int t, int operand) {
    if (t >= n_tiles) return;
    fence_view_async_shared();
    __syncwarp();
    tma_load(t, operand);
  };

  load_rows_gather(q_base, tQsQ, tQcQ, [&](int r) { return pair_offset(r, params.q_row_stride, params.q_head_stride); },
                   params.head_dim);
  cute::cp_async_fence();
  if constexpr (kTmaKv) {
    if (tidx % 32 == 0) {
      CUTE_UNROLL
      for (int s = 0; s < kStages; ++s) {
        initialize_barrier(kv_full[warp][s][0], /*thread_count=*/1);
        initialize_barrier(kv_full[warp][s][1], /*thread_count=*/1);
      }
      cutlass::arch::fence_barrier_init();
    }
    __syncwarp();
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      if (s < n_tiles) {
        tma_load(s, 0);
        tma_load(s, 1);
      }
    }
    cute::cp_async_wait<0>();  // Q
    __syncthreads();
  } else {
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      if (s < n_tiles) load_k(s);
      cute::cp_async_fence();
      if (s + 1 < kStages) {
        if (s < n_tiles) load_v(s);
        cute::cp_async_fence();
      }
    }
  }

  // ---- MMA partitions -------------------------------------------------------------------------------------
  // Products of this thread's warp: the (Cfg::kBlockM)-row tiled mma over all keys, or one warp's mma over its
  // 16 rows x kWarpKeys keys. acc_o has the same per-thread layout either way (one 16-row slice per warp).
  typename Cfg::TiledMma tiled_mma;  // the epilogue's view of acc_o
  auto thr_mma = tiled_mma.get_thread_slice(tidx);
  using WarpMma = TiledMMA<Sm80MmaAtom<Element>, Layout<Shape<_1, _1, _1>>, Tile<_16, _16, _16>>;
  using Mma = std::conditional_t<kKeysAcrossWarps, WarpMma, typename Cfg::TiledMma>;
  constexpr int kMmaRows = kKeysAcrossWarps ? 16 : Cfg::kBlockM;
  constexpr int kMmaKeys = kWarpKeys;
  const int mma_tidx = kKeysAcrossWarps ? tidx % 32 : tidx;
  const int warp_key0 = kKeysAcrossWarps ? kWarpKeys * warp : 0;  // first key of this warp's products in a tile
  Mma mma;
  auto thr = mma.get_thread_slice(mma_tidx);
  Tensor sQm = local_tile(sQ, Shape<Int<kMmaRows>, Int<kHeadDim>>{}, make_coord(0, 0));
  Tensor sKm = local_tile(sK, Shape<Int<kMmaKeys>, Int<kHeadDim>, Int<kStages>>{},
                          make_coord(kKeysAcrossWarps ? warp : 0, 0, 0));
  Tensor sVtm = local_tile(sVt, Shape<Int<kHeadDimV>, Int<kMmaKeys>, Int<kStages>>{},
                           make_coord(0, kKeysAcrossWarps ? warp : 0, 0));
  Tensor tSrQ = thr.partition_fragment_A(sQm);
  Tensor tSrK = thr.partition_fragment_B(sKm(_, _, 0));
  Tensor tOrVt = thr.partition_fragment_B(sVtm(_, _, 0));
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kMmaRows>, Int<kHeadDimV>>{});
  static_assert(std::is_same_v<decltype(acc_o.layout()),
                               decltype(partition_fragment_C(tiled_mma, Shape<Int<Cfg::kBlockM>, Int<kHeadDimV>>{})
                                            .layout())>,
                "the epilogue reads acc_o through the tile's mma");
  clear(acc_o);

  auto smem_copy_q = make_tiled_copy_A(typename Cfg::SmemCopyAtomQK{}, mma);
  auto smem_copy_k = make_tiled_copy_B(typename Cfg::SmemCopyAtomQK{}, mma);
  auto smem_copy_v = make_tiled_copy_B(typename Cfg::SmemCopyAtomVt{}, mma);
  Tensor tSsQ = smem_copy_q.get_thread_slice(mma_tidx).partition_S(sQm);
  Tensor tSsK = smem_copy_k.get_thread_slice(mma_tidx).partition_S(sKm);
  Tensor tOsVt = smem_copy_v.get_thread_slice(mma_tidx).partition_S(sVtm);

  Tensor tScS_rc = rowcol_view(thr.partition_C(make_identity_tensor(Shape<Int<kMmaRows>, Int<kMmaKeys>>{})));
  auto query_of_row = [&](int r) { return (row0 + r) / group; };

  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);
  constexpr int kRows = decltype(size<0>(rowcol_layout(acc_o.layout())))::value;
  OnlineSoftmax<kRows> softmax(score_scale.log2_scale);
  Tensor acc_o_rc = rowcol_view(acc_o);
  // Without a (query, head) pair in its rows a warp skips its math (row split only: decode fills one warp).
  const bool warp_has_rows = kKeysAcrossWarps || warp * 16 < rows_left;

  // The TMA path has Q in shared memory already (waited above): every tile reuses the warp's Q fragments.
  if constexpr (kTmaKv) copy(smem_copy_q, tSsQ, smem_copy_q.get_thread_slice(mma_tidx).retile_D(tSrQ));

  // ---- Mainloop ---------------------------------------------------------------------------------------------
#pragma unroll 1
  for (int t = 0; t < n_tiles; ++t) {
    const int n_block = n_end - 1 - t;
    const int stage = t % kStages;

    if constexpr (kTmaKv) {
      wait_barrier(kv_full[warp][stage][0], (t / kStages) % 2);
    } else {
      cute::cp_async_wait<kGroupsInFlight>();
      __syncthreads();
      if (t + kStages - 1 < n_tiles) load_v(t + kStages - 1);
      cute::cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kMmaRows>, Int<kMmaKeys>>{});
    if (warp_has_rows) {
      if constexpr (kTmaKv) {  // Q already in registers
        clear(acc_s);
        gemm_rs(acc_s, tSrQ, tSrK, tSsK(_, _, _, stage), mma, smem_copy_k);
      } else {
        gemm_ss</*kZeroInit=*/true>(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), mma, smem_copy_q, smem_copy_k);
      }
      if constexpr (kSoftcap) apply_softcap(acc_s, score_scale.pre_tanh);
    }

    if constexpr (kTmaKv) {
      wait_barrier(kv_full[warp][stage][1], (t / kStages) % 2);
      // Slots past the sequence in its last box are whatever the cache holds there (maybe never written: NaN).
      // Their P is 0, but 0 * NaN is not: each warp zeroes its own V rows past the sequence.
      if ((n_block + 1) * kBlockN > seq.seqlen_k) {
        zero_rows_from<kWarpKeys, kHeadDimV>(sV(_, _, stage), warp_key0, seq.seqlen_k - n_block * kBlockN,
                                             tidx % 32);
      }
    } else {
      cute::cp_async_wait<kGroupsInFlight>();
      __syncthreads();
      if (t + kStages < n_tiles) load_k(t + kStages);
      cute::cp_async_fence();
    }

    if (warp_has_rows) {
      Tensor scores = rowcol_view(acc_s);
      if (!tile_fully_visible(n_block)) {
        mask.apply_to_rows(scores, tScS_rc, query_of_row, n_block * kBlockN + warp_key0);
      }
      softmax.step</*kSkipKeptMax=*/kKeysAcrossWarps>(scores, acc_o_rc);
      if constexpr (kTmaKv) tma_reload(t + kStages, 0);  // the scores are final: K of this stage was read
      Tensor p = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(p.data(), acc_as_a_layout(p.layout()));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), mma, smem_copy_v);
    }

    if constexpr (kTmaKv) tma_reload(t + kStages, 1);
  }

  // ---- Epilogue ---------------------------------------------------------------------------------------------
  if constexpr (kKeysAcrossWarps) merge_warp_partials<Cfg>(smem, softmax, acc_o, tidx);
  // A split (or a tile) that saw no key leaves out 0 and lse -inf, which the combine treats as "no weight".
  float lse[kRows];
  softmax.finalize(acc_o_rc, score_scale.natural, lse);
  Tensor tOcO_rc =
      rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<Cfg::kBlockM>, Int<kHeadDimV>>{})));
  // (query, head) of tile row r, or query -1 past the pairs.
  auto pair_of_row = [&](int r, int& query, int& head) {
    const int pair = row0 + r;
    query = r < kBlockM && pair < rows ? pair / group : -1;
    head = bidhk * group + (pair - (pair / group) * group);
  };

  if (params.num_splits > 1) {
    cute::cp_async_wait<0>();  // no copy may land in shared memory after the CTA exits (a split without keys
                               // never waited for Q)
    // fp32 partials straight from the accumulators: (split, query row, head, Dv) and (split, query row, head).
    const int64_t query_rows = int64_t(params.layout_batch()) * params.seqlen_q;
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      int query, head;
      pair_of_row(get<0>(tOcO_rc(r, 0)), query, head);
      if (query < 0) continue;
      const int64_t row = (split * query_rows + seq.query_row(params, bidb, query)) * params.heads_q + head;
      if (get<1>(tOcO_rc(r, 0)) == 0) params.lse_partial[row] = lse[r];
      float* out_row = params.out_partial + row * params.head_dim_v;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(acc_o_rc); ++c) {
        const int col = get<1>(tOcO_rc(r, c));
        if (col < params.head_dim_v) out_row[col] = acc_o_rc(r, c);
      }
    }
    return;
  }

  // sO aliases sQ: wait for every warp's last read of Q (and, with no key tile at all, for Q's own load).
  cute::cp_async_wait<0>();
  __syncthreads();
  Tensor o = convert_fragment<Element>(acc_o);
  auto smem_copy_o = make_tiled_copy_C(typename Cfg::SmemCopyAtomO{}, tiled_mma);
  auto smem_thr_o = smem_copy_o.get_thread_slice(tidx);
  copy(smem_copy_o, smem_thr_o.retile_S(o), smem_thr_o.partition_D(sO));

  // One thread per row (the one holding column 0) writes the row's LSE.
  if (get<1>(tOcO_rc(0, 0)) == 0) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      int query, head;
      pair_of_row(get<0>(tOcO_rc(r, 0)), query, head);
      if (query < 0) continue;
      params.lse[seq.lse_index(params, bidb, head, query)] = lse[r];
    }
  }

  __syncthreads();
  typename Cfg::GmemCopyO gmem_copy_o;
  auto gmem_thr_o = gmem_copy_o.get_thread_slice(tidx);
  Tensor tOsO = gmem_thr_o.partition_S(sO);
  Tensor tOrO = make_tensor<Element>(shape(tOsO));
  copy(gmem_copy_o, tOsO, tOrO);
  Tensor tOcO = gmem_thr_o.partition_D(make_identity_tensor(Shape<Int<Cfg::kBlockM>, Int<kHeadDimV>>{}));
  store_rows_gather(static_cast<Element*>(params.out), tOrO, tOcO,
                    [&](int r) { return pair_offset(r, params.out_row_stride, params.out_head_stride); },
                    params.head_dim_v);
}

}  // namespace jax_flash
