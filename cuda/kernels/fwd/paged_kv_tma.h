// K / V load policy of the paged decode on Hopper: K / V tiles gathered from cache pages by the tensor-memory
// accelerator (TMA) instead of per-thread cp.async (the policy interface: paged_kv_cp_async.h).
//
// Why: decode reads every key once and does little math per byte, yet the cp.async gather made it issue-bound
// (Nsight Compute on an H200, 2026-11-22: 4.4 cycles per issued instruction with 2 warps per scheduler, DRAM at
// 60% of peak). Every thread computed a page lookup and a 64-bit address per 16 bytes. With TMA one lane per box
// does that per 8 or 16 rows, and the copy engine moves the bytes.
//
// Each cache is a 4-d tensor map over (num_pages, page_size, heads_k, head_dim) with the dimensions listed
// innermost first as (head_dim, head, slot, page). A box is 64 columns (128 bytes: the 128-byte swizzle of the
// shared tiles, SmemTileAtom of common/tile_atoms.h) of box_rows consecutive slots of one page and one head;
// box_rows = gcd(page_size, 16), so a box never crosses a page and each warp's 16 keys of a tile are a whole
// number of boxes. Each warp loads its own keys (the split-key decode reads no other warp's rows) into its own
// stages, so the warps never wait for one another inside the mainloop.
// A box whose page coordinate is outside [0, num_pages) is zero-filled by the TMA unit without a read: keys past
// the sequence use page -1, and page indices from the table outside the cache stay out of range.
#pragma once

#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include <cstdint>

#include "kernels/common/tile_atoms.h"
#include "kernels/fwd/paged_cache.h"
#include "kernels/params.h"

namespace jax_flash {

// Orders this thread's earlier generic-proxy accesses of shared memory (ldmatrix reads, plain stores) before
// later async-proxy (TMA) writes to it.
__device__ __forceinline__ void fence_view_async_shared() {
#if defined(CUTE_ARCH_TMA_SM90_ENABLED)
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Issue the boxes of rows [row0, row0 + kRows) of a (kBlockN, kCols) shared tile (one stage, a cute tensor)
// with tile row r holding key tile_key0 + r of kv head `head`, completing on `bar`. Called by the 32 lanes of
// one warp; page_of(key) returns the cache page holding key `key`, or -1 past the sequence. box_rows divides
// kRows and the page size.
//
// The shared tile must be SmemTileAtom's 64-column layout (common/tile_atoms.h): 8-row x 64-column atoms with the
// 16-byte-chunk XOR swizzle, repeated down the rows, then across the columns. That is the TMA unit's 128-byte
// swizzle, so a box starting at row 8 i lands exactly where the cp.async copy would have put it.
template <int kRows, int kCols, class Element, class Tile, class PageOf>
__device__ __forceinline__ void tma_load_rows(const CUtensorMap* map, uint64_t& bar, Tile&& tile, int row0,
                                              int tile_key0, int head, int page_size, int box_rows, int lane,
                                              PageOf page_of) {
#if defined(CUTE_ARCH_TMA_SM90_ENABLED)
  static_assert(kCols % 64 == 0, "whole 64-column boxes");
  if (lane == 0) cute::set_barrier_transaction_bytes(bar, kRows * kCols * int(sizeof(Element)));
  const int row_boxes = kRows / box_rows;
  const int boxes = row_boxes * (kCols / 64);
  for (int i = lane; i < boxes; i += 32) {
    const int row = row0 + (i % row_boxes) * box_rows, col = (i / row_boxes) * 64;
    const int key = tile_key0 + row;
    Element* dst = &tile(row, col);
    cute::SM90_TMA_LOAD_4D::copy(map, &bar, uint64_t(cute::TMA::CacheHintSm90::EVICT_FIRST), dst, col, head,
                                 key % page_size, page_of(key));
  }
#endif
}

// Zeroes rows [max(first_zero, row0), row0 + kRows) of a (rows, kCols) shared tile with the 32 lanes of one
// warp, after its TMA writes landed, and orders these (generic) writes before later TMA (async-proxy) writes to
// the same buffer.
template <int kRows, int kCols, class Tile>
__device__ __forceinline__ void zero_rows_from(Tile&& tile, int row0, int first_zero, int lane) {
#if defined(CUTE_ARCH_TMA_SM90_ENABLED)
  using Element = typename std::decay_t<Tile>::value_type;
  constexpr int kPerChunk = 16 / int(sizeof(Element));
  constexpr int kChunksPerRow = kCols / kPerChunk;
  for (int i = lane; i < kRows * kChunksPerRow; i += 32) {
    const int row = row0 + i / kChunksPerRow;
    if (row >= first_zero) *reinterpret_cast<cute::uint128_t*>(&tile(row, (i % kChunksPerRow) * kPerChunk)) = {};
  }
  fence_view_async_shared();
  __syncwarp();
#endif
}

// The TMA load policy. Each warp loads its own kWarpKeys keys of every tile (the split-key decode reads no
// other warp's rows): its K of stage s completes on full[warp][s][0], V on full[warp][s][1], and tile t uses
// phase (t / kStages) % 2. A warp reissues its K rows once its scores are final and its V rows after PV, so no
// CTA-wide barrier remains in the mainloop.
template <class Cfg, int kWarpKeys>
struct PagedKvTmaLoads {
  using Element = typename Cfg::Element;
  static constexpr int kStages = Cfg::kStages;
  static constexpr bool kQInRegisters = true;  // Q is waited for once, in the prologue
  static_assert(SmemTileAtom<Element, Cfg::kHeadDim>::kAtomCols == 64 &&
                    SmemTileAtom<Element, Cfg::kHeadDimV>::kAtomCols == 64,
                "TMA boxes: 64-column swizzle atoms");

  struct Barriers {
    uint64_t full[Cfg::kNWarps][kStages][2];
  };
  // The policy's own barriers, beside the config's SharedStorage (static shared memory).
  __device__ static Barriers& barriers() {
    __shared__ Barriers shared_barriers;
    return shared_barriers;
  }

  const PagedFwdParams& params;
  const PagedKvTma& maps;
  PagedCache cache;
  Element* smem_k;  // the K and V buffers, (kBlockN, head dim, kStages)
  Element* smem_v;
  int n_end, n_tiles;  // key tile of step t is n_end - 1 - t
  int warp, lane;

  __device__ auto sK() const {
    return cute::make_tensor(cute::make_smem_ptr(smem_k), typename Cfg::SmemLayoutK{});
  }
  __device__ auto sV() const {
    return cute::make_tensor(cute::make_smem_ptr(smem_v), typename Cfg::SmemLayoutV{});
  }

  // By the 32 lanes of the warp, for its own keys of tile t: K (operand 0) or V (operand 1).
  __device__ void load(int t, int operand) const {
    using namespace cute;
    const int stage = t % kStages, row0 = kWarpKeys * warp;
    const int key0 = (n_end - 1 - t) * Cfg::kBlockN;
    uint64_t& full = barriers().full[warp][stage][operand];
    auto page_of_key = [&](int key) { return cache.page_of_key(key); };
    if (operand == 0) {
      tma_load_rows<kWarpKeys, Cfg::kHeadDim, Element>(&maps.k, full, sK()(_, _, stage), row0, key0, cache.bidhk,
                                                       params.page_size, maps.box_rows, lane, page_of_key);
    } else {
      tma_load_rows<kWarpKeys, Cfg::kHeadDimV, Element>(&maps.v, full, sV()(_, _, stage), row0, key0, cache.bidhk,
                                                        params.page_size, maps.box_rows, lane, page_of_key);
    }
  }
  // Reissue this warp's rows of a buffer for tile t once its lanes are done reading them (ldmatrix, a generic
  // proxy read, before the TMA unit's async-proxy write).
  __device__ void reload(int t, int operand) const {
    if (t >= n_tiles) return;
    fence_view_async_shared();
    __syncwarp();
    load(t, operand);
  }

  // After the Q group: the barriers, then the first stages of this warp's K and V; Q itself is waited for here.
  __device__ void prologue() const {
    if (lane == 0) {
      CUTE_UNROLL
      for (int s = 0; s < kStages; ++s) {
        cute::initialize_barrier(barriers().full[warp][s][0], /*thread_count=*/1);
        cute::initialize_barrier(barriers().full[warp][s][1], /*thread_count=*/1);
      }
      cutlass::arch::fence_barrier_init();
    }
    __syncwarp();
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      if (s < n_tiles) {
        load(s, 0);
        load(s, 1);
      }
    }
    cute::cp_async_wait<0>();  // Q
    __syncthreads();
  }

  __device__ void before_qk(int t) const {
    cute::wait_barrier(barriers().full[warp][t % kStages][0], (t / kStages) % 2);
  }
  __device__ void before_pv(int t, int n_block) const {
    cute::wait_barrier(barriers().full[warp][t % kStages][1], (t / kStages) % 2);
    // Slots past the sequence in its last box are whatever the cache holds there (maybe never written: NaN).
    // Their P is 0, but 0 * NaN is not: each warp zeroes its own V rows past the sequence.
    if ((n_block + 1) * Cfg::kBlockN > cache.seqlen_k) {
      zero_rows_from<kWarpKeys, Cfg::kHeadDimV>(sV()(cute::_, cute::_, t % kStages), kWarpKeys * warp,
                                                cache.seqlen_k - n_block * Cfg::kBlockN, lane);
    }
  }
  __device__ void after_scores(int t) const { reload(t + kStages, 0); }  // the scores are final: K was read
  __device__ void after_pv(int t) const { reload(t + kStages, 1); }
};

}  // namespace jax_flash
