// Where one (sequence, head) problem lives, and which one a CTA works on.
//
// SeqlenInfo: a sequence's lengths and the element offsets of its rows. Dense layout addresses sequence b
// through the batch strides; the packed (varlen) layout starts sequence b at token cu_seqlens[b] of one token
// axis and addresses it through the row stride. The offset helpers are the only code that knows which, so
// mainloops and epilogues stay layout-agnostic.
//
// schedule_tile: which (sequence, block) a CTA computes along the query or key axis. Dense grids have one
// CTA per block and sequence. Packed grids have ceil(T / kBlock) + N CTAs per head, a bound known from
// shapes alone (sum_b ceil(len_b / kBlock) <= T / kBlock + N); each CTA finds its tile from the lengths on
// the device, and CTAs beyond the real tile count exit. max_seqlen never enters: no value of it can make a
// kernel skip work or read out of bounds.
//
// Device data is never trusted: offsets are clamped to [0, T] and lengths to the rows that remain, so any
// cu_seqlens / seqused content keeps every access inside the tensors. (Offsets that decrease give
// overlapping sequences: memory-safe, but the result is unspecified.)
// Shared by the forward and backward kernels.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

__host__ __device__ __forceinline__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Rows [start, start + length) of one packed sequence along a token axis of `total` rows.
struct PackedSpan {
  int start, length;

  __device__ static PackedSpan load(const int* cu_seqlens, const int* seqused, int b, int total) {
    const int start = min(max(cu_seqlens[b], 0), total);
    const int end = min(max(cu_seqlens[b + 1], start), total);
    int length = end - start;
    if (seqused != nullptr) length = min(max(seqused[b], 0), length);
    return {start, length};
  }
};

struct SeqlenInfo {
  int seqlen_q;  // queries of this sequence
  int seqlen_k;  // keys of this sequence
  // Packed layouts only: first token of this sequence in the shared token dimension.
  bool packed;
  int64_t q_start, k_start;

  __device__ static SeqlenInfo make(const AttnFwdParams& p, int bidb) {
    if (!p.packed()) return SeqlenInfo{p.seqlen_q, p.seqlen_k, false, 0, 0};
    const PackedSpan q = PackedSpan::load(p.cu_seqlens_q, p.seqused_q, bidb, p.seqlen_q);
    const PackedSpan k = PackedSpan::load(p.cu_seqlens_k, p.seqused_k, bidb, p.seqlen_k);
    return SeqlenInfo{q.length, k.length, true, q.start, k.start};
  }

  // Element offset of row 0 of sequence `bidb` in a q-like (q, out, dout, dq) tensor.
  __device__ int64_t q_offset(int64_t batch_stride, int64_t row_stride, int bidb) const {
    return packed ? q_start * row_stride : int64_t(bidb) * batch_stride;
  }
  // Element offset of row 0 of sequence `bidb` in a k-like (k, v, dk, dv) tensor.
  __device__ int64_t k_offset(int64_t batch_stride, int64_t row_stride, int bidb) const {
    return packed ? k_start * row_stride : int64_t(bidb) * batch_stride;
  }
  // Element offset of query 0 of sequence `bidb`, head `bidh` in lse (dense (B, Hq, Sq); packed (Hq, Tq)).
  __device__ int64_t lse_offset(int64_t batch_stride, int64_t head_stride, int bidb, int bidh) const {
    return (packed ? q_start : int64_t(bidb) * batch_stride) + int64_t(bidh) * head_stride;
  }
  // Row offset of query 0 of sequence `bidb`, head `bidh` in contiguous (layout_batch, Hq, rows) scratch
  // (the backward's delta and dq accumulator), where rows is params.seqlen_q (Sq, or Tq when packed).
  __device__ int64_t scratch_row(const AttnFwdParams& p, int bidb, int bidh) const {
    return lse_offset(int64_t(p.heads_q) * p.seqlen_q, p.seqlen_q, bidb, bidh);
  }
};

// The (sequence, block) of one CTA; bidb < 0: this CTA has no tile.
struct TileCoord {
  int bidb, block;
};

enum class TileAxis { kQuery, kKey };

namespace block_info_detail {

// Packed grids: tile `tile` of the sequences' tiles laid end to end (sequence-major, each sequence's blocks
// last first, so its most expensive causal block starts early). One full warp runs this: each lane counts
// one sequence's tiles per 32-sequence chunk, a warp scan finds the chunk and sequence that hold `tile`.
// rows_per_token: tile rows per token of the axis (the paged kernel packs the query heads of one kv head
// along rows, so a sequence of L queries spans L * kv_group rows).
template <int kBlock, TileAxis kAxis>
__device__ TileCoord find_packed_tile(const AttnFwdParams& p, int tile, int rows_per_token = 1) {
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
      return {first + owner, end - 1 - tile};
    }
    before += chunk_tiles;
  }
  return {-1, 0};
}

}  // namespace block_info_detail

// The tile of this CTA along `kAxis` in blocks of kBlock rows. Dense: (blockIdx.z, blockIdx.x), the block
// index reversed when `reverse` (last query blocks first: under a causal mask they are the longest). Packed:
// blockIdx.x indexes the tiles of all sequences (see find_packed_tile). Every thread of the CTA must call
// it (it synchronizes the CTA in the packed case) and gets the same answer.
template <int kBlock, TileAxis kAxis>
__device__ TileCoord schedule_tile(const AttnFwdParams& p, bool reverse) {
  if (!p.packed()) {
    return {int(blockIdx.z), reverse ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x)};
  }
  __shared__ TileCoord shared_coord;
  if (threadIdx.x < 32) {
    const TileCoord coord = block_info_detail::find_packed_tile<kBlock, kAxis>(p, int(blockIdx.x));
    if (threadIdx.x == 0) shared_coord = coord;
  }
  __syncthreads();
  return shared_coord;
}

// Grid x-extent along one axis: blocks of the longest sequence (dense) or the packed bound.
__host__ __forceinline__ int tile_grid_x(const AttnFwdParams& p, int rows, int block) {
  return p.packed() ? ceil_div(rows, block) + p.batch : ceil_div(rows, block);
}

// GQA/MQA: query head h reads kv head h / kv_group.
__device__ __forceinline__ int kv_head_of(int bidh, int kv_group) { return bidh / kv_group; }

}  // namespace jax_flash
