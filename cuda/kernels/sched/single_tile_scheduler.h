// One CTA per (block, head, sequence) tile, dense or packed: the scheduler of the dense forward, the dK/dV
// kernels (blocks of keys, one kv head each) and the dq kernel.
//
// Grid (x, heads, sequences): dense x is the blocks of the longest sequence and z the batch; packed x is the
// tile bound of packed_tiles.h and z is 1. kReverse hands out the last blocks first (of each sequence, packed):
// along queries under a causal mask the last query blocks see the most keys, so the longest CTAs start early and
// the short ones fill in at the end; along keys the first key blocks see the most queries (ascending is longest
// first), and kReverse (the deterministic dK/dV kernel) sets the order of the CTAs' ordered dQ adds.
#pragma once

#include <cuda_runtime.h>

#include "kernels/common/seqlen.h"
#include "kernels/params.h"
#include "kernels/sched/packed_tiles.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

// Grid x-extent along one axis: blocks of the longest sequence (dense) or the packed bound.
__host__ __device__ __forceinline__ int tile_grid_x(const AttnFwdParams& p, int rows, int block) {
  return p.packed() ? ceil_div(rows, block) + p.batch : ceil_div(rows, block);
}

template <int kBlock, TileAxis kAxis, bool kReverse>
struct SingleTileScheduler {
  // heads: the grid's y extent (query heads, or kv heads for a kernel that owns a kv group).
  __host__ static dim3 grid(const AttnFwdParams& p, int heads) {
    const int rows = kAxis == TileAxis::kQuery ? p.seqlen_q : p.seqlen_k;
    return dim3(tile_grid_x(p, rows, kBlock), heads, p.layout_batch());
  }

  // The order in which the CTAs of one (head, sequence) are launched with their blocks: descending under
  // kReverse (dense and packed alike), else ascending. A CTA that waits on others of its (head, sequence) must
  // wait only on earlier ones.
  __device__ static bool launches_descending(const AttnFwdParams&) { return kReverse; }

  // Every thread of the CTA must call this (packed grids synchronize the CTA) and gets the same tile.
  __device__ static WorkTile get_tile(const AttnFwdParams& p) {
    if (!p.packed()) {
      const int block = kReverse ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x);
      return {block, int(blockIdx.y), int(blockIdx.z), 0};
    }
    const TileCoord coord = packed_tile_of_cta<kBlock, kAxis, kReverse>(p);
    return {coord.block, int(blockIdx.y), coord.bidb, 0};
  }
};

}  // namespace jax_flash
