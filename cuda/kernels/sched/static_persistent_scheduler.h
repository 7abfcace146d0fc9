// A persistent grid over the single-tile scheduler's tiles: one CTA per SM (or fewer, for small problems), CTA c
// running tiles c, c + gridDim.x, c + 2 gridDim.x, ... of the single-tile grid's order (blocks fastest, then
// heads, then sequences; blocks last first under kReverse, and packed grids' tiles as find_packed_tile lays them
// out). A CTA that keeps its shared memory, barriers and pipelines across tiles can start the next tile's loads
// while it writes the last tile's output, and pays the launch and setup once (FlashAttention-3's static
// persistent scheduler; its causal and varlen grids take tiles from an atomic counter instead, not done here).
// kLongestFirst: the dense causal grid's index runs through LongestFirstScheduler's order instead (longest
// blocks first across the (head, sequence) pairs of an L2-sized group), so that the tiles a CTA takes,
// gridDim.x apart, are of similar lengths across CTAs rather than each CTA's own run of a pair's blocks.
//
// The CTA-independent interface: first_index(), next_index(i), tile(i) for i < tile_count. Unlike
// SingleTileScheduler::get_tile, tile() is warp-level and synchronizes nothing beyond the calling warp:
// every warp that needs the tile computes it (packed grids: a 32-lane search of the sequence lengths), so the
// roles of a warp-specialized CTA walk the same tiles without meeting.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/params.h"
#include "kernels/sched/longest_first_scheduler.h"
#include "kernels/sched/packed_tiles.h"
#include "kernels/sched/single_tile_scheduler.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

template <int kBlock, TileAxis kAxis, bool kReverse, bool kLongestFirst = false>
struct StaticPersistentScheduler {
  // Tiles of the single-tile grid: (x, heads, sequences) flattened. The device indexes them with 32-bit ints
  // (the launcher refuses more, fits_int_index).
  __host__ __device__ static int64_t tile_count(const AttnFwdParams& p, int heads) {
    const int rows = kAxis == TileAxis::kQuery ? p.seqlen_q : p.seqlen_k;
    return int64_t(tile_grid_x(p, rows, kBlock)) * heads * p.layout_batch();
  }
  // An index steps past tile_count by less than gridDim.x (one CTA per SM at most) before the walk ends.
  __host__ static bool fits_int_index(const AttnFwdParams& p, int heads) {
    return tile_count(p, heads) <= int64_t(INT32_MAX) - 65536;
  }

  // sm_count: the device's multiprocessors (a property of the device, not of the data).
  __host__ static dim3 grid(const AttnFwdParams& p, int heads, int sm_count) {
    return dim3(unsigned(std::max<int64_t>(1, std::min<int64_t>(tile_count(p, heads), sm_count))));
  }

  __device__ static int first_index() { return int(blockIdx.x); }
  __device__ static int next_index(int index) { return index + int(gridDim.x); }

  // The tile at `index` (< tile_count); an invalid one (bidb < 0) where a packed grid's bound has no tile. Every
  // lane of the calling warp must call this and gets the same answer.
  __device__ static WorkTile tile(const AttnFwdParams& p, int heads, int index) {
    const int rows = kAxis == TileAxis::kQuery ? p.seqlen_q : p.seqlen_k;
    const int x_extent = tile_grid_x(p, rows, kBlock);
    if constexpr (kLongestFirst) {
      using LongestFirst = LongestFirstScheduler<kBlock, kAxis, kReverse>;
      if (LongestFirst::interleaves(p)) {
        const InterleavedTile t =
            interleaved_tile(index, x_extent, int64_t(heads) * p.layout_batch(), LongestFirst::pairs_per_group(p));
        return {kReverse ? x_extent - 1 - t.rank : t.rank, int(t.pair % heads), int(t.pair / heads), 0};
      }
    }
    const int x = index % x_extent;
    const int rest = index / x_extent;
    const int head = rest % heads, z = rest / heads;
    if (!p.packed()) return {kReverse ? x_extent - 1 - x : x, head, z, 0};
    const TileCoord coord = find_packed_tile<kBlock, kAxis, kReverse>(p, x, /*rows_per_token=*/1);
    return {coord.block, head, coord.bidb, 0};
  }
};

}  // namespace jax_flash
