// How the paged forward shares a tile among its 4 warps (a static choice of the launcher, from shapes):
//   PagedKeySplit<Cfg, false>, rows across warps: 64 rows, warp w owns rows [16 w, 16 w + 16) and every key of
//     the tile (prefill, long query runs). Warps whose 16 rows hold no (query, head) pair skip their MMAs but
//     still load and synchronize.
//   PagedKeySplit<Cfg, true>, keys across warps: 16 rows (decode: at most 16 (query, head) pairs per sequence
//     and kv head), warp w owns keys [w n, w n + n) of every key tile (n = kBlockN / 4) with its own online
//     softmax; the 4 partial results are merged through shared memory at the end. All warps compute instead of
//     one.
// Either way acc_o has the same per-thread layout (one 16-row slice per warp), so the epilogue is the same.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "kernels/common/fragment.h"
#include "kernels/common/softmax.h"
#include "kernels/common/tile_atoms.h"

namespace jax_flash {

template <class Cfg, bool kKeysAcrossWarps>
struct PagedKeySplit;

template <class Cfg>
struct PagedKeySplit<Cfg, false> {
  static constexpr int kBlockM = Cfg::kBlockM;    // rows of the tile
  static constexpr int kWarpKeys = Cfg::kBlockN;  // keys of a tile each warp multiplies
  static constexpr bool kSkipKeptMax = false;     // OnlineSoftmax::step's option
  using Mma = typename Cfg::TiledMma;             // the products of this thread's warp

  __device__ static int mma_thread(int tidx) { return tidx; }
  __device__ static int key_slice(int) { return 0; }  // this warp's slice of a key tile, in kWarpKeys
  // Without a (query, head) pair in its rows a warp skips its math (decode fills one warp).
  __device__ static bool warp_has_rows(int warp, int rows_left) { return warp * 16 < rows_left; }

  template <class Storage, int kRows, class Acc>
  __device__ static void merge(Storage&, OnlineSoftmax<kRows>&, Acc&, int) {}
};

template <class Cfg>
struct PagedKeySplit<Cfg, true> {
  static constexpr int kBlockM = 16;
  static constexpr int kWarpKeys = Cfg::kBlockN / Cfg::kNWarps;
  static constexpr bool kSkipKeptMax = true;  // 16 keys per warp: the rescale is a large share of the work
  using Mma = Sm80TiledMma<typename Cfg::Element, 1, 1>;
  static_assert(Cfg::kBlockN % (16 * Cfg::kNWarps) == 0, "each warp owns a multiple of 16 keys of a tile");

  __device__ static int mma_thread(int tidx) { return tidx % 32; }
  __device__ static int key_slice(int warp) { return warp; }
  __device__ static bool warp_has_rows(int, int) { return true; }

  // Every warp holds the online-softmax state and output accumulator of the same 16 rows over its own keys, in
  // the same per-lane layout. Warps 1.. publish theirs through shared memory (the K / V buffers, free once every
  // copy landed) and warp 0 folds them into its own, as if it had seen every key.
  template <class Storage, int kRows, class Acc>
  __device__ static void merge(Storage& storage, OnlineSoftmax<kRows>& softmax, Acc& acc_o, int tidx) {
    constexpr int kAcc = decltype(cute::size(acc_o))::value;
    constexpr int kPerLane = kAcc + 2 * kRows;  // acc_o, row_max, row_sum
    static_assert((Cfg::kNWarps - 1) * kPerLane * 32 * sizeof(float) <= sizeof(storage.k) + sizeof(storage.v),
                  "the partials fit in the K / V buffers (adjacent: both are whole 1024-byte blocks)");
    float* partials = reinterpret_cast<float*>(storage.k.data());
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
        softmax.row_sum[r] =
            softmax.row_sum[r] * scale_mine[r] + theirs[32 * (kAcc + kRows + r)] * scale_theirs[r];
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
};

}  // namespace jax_flash
