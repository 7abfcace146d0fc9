// The paged forward's scheduler: one CTA per (row block, kv head, sequence, split of the key range).
//
// Rows are (query, query head) pairs of one kv head (GQA packing, fwd/paged_kernel.cuh), so a sequence of L
// queries spans L * kv_group rows. Dense grid: (row blocks, Hk, B * num_splits), its z the (sequence, split)
// pairs: sequence-major with equal splits, split-major with halving ones, so that every sequence's biggest
// split launches first and the small ones fill the slots that free up at different times. Packed grid: (the
// packed tile bound over Tq * kv_group rows, Hk, num_splits), tiles found on the device (packed_tiles.h).
// The scheduler also owns the split's share of the key blocks (split_key_blocks), the other half of the plan.
#pragma once

#include <cstdint>

#include "kernels/common/seqlen.h"
#include "kernels/params.h"
#include "kernels/sched/packed_tiles.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

template <int kBlockM>
struct PagedSplitScheduler {
  // Grid extents in 64 bits: the launcher checks them against the hardware limits before it narrows them.
  struct Extent {
    int64_t x, y, z;
  };
  __host__ static Extent grid(const PagedFwdParams& p) {
    const int64_t pair_rows = int64_t(p.seqlen_q) * p.kv_group;
    return {(pair_rows + kBlockM - 1) / kBlockM + (p.packed() ? p.batch : 0), p.heads_k,
            int64_t(p.packed() ? 1 : p.batch) * p.num_splits};
  }

  // Every thread of the CTA must call this (packed grids synchronize the CTA) and gets the same tile.
  __device__ static WorkTile get_tile(const PagedFwdParams& p) {
    if (!p.packed()) {
      const int z = int(blockIdx.z);
      const int bidb = p.split_halving ? z % p.batch : z / p.num_splits;
      const int split = p.split_halving ? z / p.batch : z % p.num_splits;
      return {int(blockIdx.x), int(blockIdx.y), bidb, split};
    }
    const TileCoord coord = packed_tile_of_cta<kBlockM, TileAxis::kQuery>(p, p.kv_group);
    return {coord.block, int(blockIdx.y), coord.bidb, int(blockIdx.z)};
  }

  // Key blocks [begin, end) of split `split` among the n = n_max - n_min visible ones. Equal parts, or halving:
  // split s < num_splits - 1 ends where ceil(n / 2^(s + 1)) blocks remain, and the last split takes those.
  __device__ static void split_key_blocks(const PagedFwdParams& p, int split, int n_min, int n_max, int& begin,
                                          int& end) {
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
};

}  // namespace jax_flash
