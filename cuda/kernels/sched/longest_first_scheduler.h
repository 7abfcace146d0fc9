// One CTA per (block, head, sequence) tile, as SingleTileScheduler, with the dense causal grid's tiles handed out
// longest first across heads and sequences, in groups that keep the streamed operand in L2.
//
// Under a causal mask (window_left < 0, window_right >= 0) the blocks of a (head, sequence) pair differ in
// length: query block m sees about m + 1 key blocks (the forward), key block n about N - n query blocks (dK/dV).
// The single-tile order runs each pair's blocks one after the other, longest to shortest, then the next pair's:
// the SMs hold a mix of lengths throughout and the grid ends on whatever the last pairs leave. Longest first
// across pairs (the LPT rule; FlashAttention-3's causal scheduler takes tiles that way from an atomic counter)
// balances the waves, but a CTA's streamed operand (K and V of its kv head in the forward; Q and dO of its kv
// group in dK/dV) is shared by the pair's blocks only: interleaving every pair would stream each operand from
// HBM once per block instead of once per pair. So the pairs go in groups of G, sized so that a group's
// operands fit in kGroupL2Bytes of L2, and each group's blocks go longest first across its pairs:
//   linear CTA index L (x fastest, then y, then z) -> group g = L / (G X), i = (L - g G X) / G_g,
//   pair = g G + (L - g G X) % G_g, where G_g = min(G, pairs - g G) and X the blocks per pair;
//   block = the i-th longest of the pair. Every L in [0, pairs X) maps to a distinct (block, pair).
// Dense grids without a causal mask, and packed grids (one sequence's blocks, packed_tiles.h), keep the
// single-tile order. The grid is the single-tile grid: the order is a function of the tile, not of the launch.
// G depends only on shapes (sequence length, head dims, kv group), so the order is the same on every call.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/params.h"
#include "kernels/sched/single_tile_scheduler.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

// A block index (i-th longest) and its (head, sequence) pair.
struct InterleavedTile {
  int rank;
  int64_t pair;
};

// The linear CTA index -> (rank, pair) map of the interleaved order above. Host-callable for the check tool's
// bijection test.
__host__ __device__ inline InterleavedTile interleaved_tile(int64_t linear, int blocks, int64_t pairs, int group) {
  const int64_t per_group = int64_t(group) * blocks;
  const int64_t g = linear / per_group;
  const int64_t in_group = pairs - g * group < group ? pairs - g * group : group;
  const int64_t r = linear - g * per_group;
  return {int(r / in_group), g * group + r % in_group};
}

template <int kBlock, TileAxis kAxis, bool kReverse>
struct LongestFirstScheduler {
  using SingleTile = SingleTileScheduler<kBlock, kAxis, kReverse>;
  // L2 bytes a group's streamed operands may take (of the H100's 50 MB: the running CTAs' other traffic, the
  // outputs, and the two L2 partitions' duplication take the rest).
  static constexpr int64_t kGroupL2Bytes = int64_t(16) << 20;

  __host__ static dim3 grid(const AttnFwdParams& p, int heads) { return SingleTile::grid(p, heads); }
  __device__ static bool launches_descending(const AttnFwdParams& p) { return SingleTile::launches_descending(p); }

  __host__ __device__ static bool interleaves(const AttnFwdParams& p) {
    return !p.packed() && p.window_left < 0 && p.window_right >= 0;
  }

  // Pairs per group: the streamed bytes of one pair (16-bit elements) into kGroupL2Bytes, at least 1.
  __host__ __device__ static int pairs_per_group(const AttnFwdParams& p) {
    const int64_t row_bytes = 2 * int64_t(p.head_dim + p.head_dim_v);
    const int64_t pair_bytes = kAxis == TileAxis::kQuery ? int64_t(p.seqlen_k) * row_bytes / p.kv_group
                                                         : int64_t(p.seqlen_q) * row_bytes * p.kv_group;
    const int64_t group = pair_bytes > 0 ? kGroupL2Bytes / pair_bytes : 1;
    return group < 1 ? 1 : group > (1 << 20) ? (1 << 20) : int(group);
  }

  // Every thread of the CTA must call this (packed grids synchronize the CTA) and gets the same tile.
  __device__ static WorkTile get_tile(const AttnFwdParams& p) {
    if (!interleaves(p)) return SingleTile::get_tile(p);
    const int blocks = int(gridDim.x), heads = int(gridDim.y);
    const int64_t pairs = int64_t(heads) * gridDim.z;  // heads and batch are each <= 65535
    const int64_t linear = int64_t(blockIdx.x) + int64_t(blocks) * (int64_t(blockIdx.y) + int64_t(heads) * blockIdx.z);
    const InterleavedTile t = interleaved_tile(linear, blocks, pairs, pairs_per_group(p));
    // Longest first: the last query blocks (kReverse, the forward), the first key blocks (dK/dV).
    return {kReverse ? blocks - 1 - t.rank : t.rank, int(t.pair % heads), int(t.pair / heads), 0};
  }
};

}  // namespace jax_flash
