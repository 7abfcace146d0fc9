// Packed (varlen) grids: which (sequence, block) tile a CTA of the packed bound computes, found on the device.
//
// A packed grid has ceil(rows / kBlock) + N CTAs per head along x, a bound known from shapes alone
// (sum_b ceil(len_b / kBlock) <= T / kBlock + N); each CTA finds its tile from the lengths on the device, and
// CTAs beyond the real tile count get none and exit. max_seqlen never enters: no value of it can make a
// kernel skip work or read out of bounds. Used by every scheduler that serves packed layouts.
#pragma once

#include "kernels/common/seqlen.h"
#include "kernels/params.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

// The (sequence, block) of one CTA; bidb < 0: this CTA has no tile.
struct TileCoord {
  int bidb, block;
};

// Tile `tile` of the sequences' tiles laid end to end (sequence-major; each sequence's blocks last first when
// kDescending, else first first: the most expensive causal block starts early when it is the last query block
// (the forward) or the first key block (dK/dV)). One full warp runs this: each lane counts one sequence's
// tiles per 32-sequence chunk, a warp scan finds the chunk and sequence that hold `tile`.
// rows_per_token: tile rows per token of the axis (the paged kernel packs the query heads of one kv head
// along rows, so a sequence of L queries spans L * kv_group rows).
template <int kBlock, TileAxis kAxis, bool kDescending = true>
__device__ TileCoord find_packed_tile(const AttnFwdParams& p, int tile, int rows_per_token) {
  const int lane = threadIdx.x % 32;
  const int* cu = kAxis == TileAxis::kQuery ? p.cu_seqlens_q : p.cu_seqlens_k;
  const int* used = kAxis == TileAxis::kQuery ? p.seqused_q : p.seqused_k;
  const int total = kAxis == TileAxis::kQuery ? p.seqlen_q : p.seqlen_k;
  int before = 0;  // tiles of the chunks already passed
#pragma unroll 1
  for (int first = 0; first < p.batch; first += 32) {
    const int b = first + lane;
    const int tiles =
        b < p.batch ? ceil_div(PackedSpan::load(cu, used, b, total).length * rows_per_token, kBlock) : 0;
    int inclusive = tiles;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    const int chunk_tiles = __shfl_sync(0xffffffffu, inclusive, 31);
    if (tile < before + chunk_tiles) {
      const int owner = __ffs(__ballot_sync(0xffffffffu, tile < before + inclusive)) - 1;
      const int end = before + __shfl_sync(0xffffffffu, inclusive, owner);
      if constexpr (kDescending) {
        return {first + owner, end - 1 - tile};
      } else {
        const int start = end - __shfl_sync(0xffffffffu, tiles, owner);
        return {first + owner, tile - start};
      }
    }
    before += chunk_tiles;
  }
  return {-1, 0};
}

// The tile of this CTA's blockIdx.x: the first warp finds it, shared memory hands it to the others. Every
// thread of the CTA must call this (it synchronizes the CTA) and gets the same answer.
template <int kBlock, TileAxis kAxis, bool kDescending = true>
__device__ TileCoord packed_tile_of_cta(const AttnFwdParams& p, int rows_per_token = 1) {
  __shared__ TileCoord shared_coord;
  if (threadIdx.x < 32) {
    const TileCoord coord = find_packed_tile<kBlock, kAxis, kDescending>(p, int(blockIdx.x), rows_per_token);
    if (threadIdx.x == 0) shared_coord = coord;
  }
  __syncthreads();
  return shared_coord;
}

}  // namespace jax_flash
