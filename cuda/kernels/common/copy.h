// Predicated global <-> shared tile copies for ragged edges (rows past the sequence, columns past the real
// head dim). Loads zero-fill what they skip, so padded K rows / V rows / head-dim columns contribute exact
// zeros to the GEMMs instead of whatever shared memory held. Shared by the forward and backward kernels.
#pragma once

#include <cute/tensor.hpp>

namespace jax_flash {

// Async (cp.async, zero-fill) copy of one tile partition: src/dst are (CPY, CPY_ROWS, CPY_COLS) partitions
// of a zfill TiledCopy (SM80_CP_ASYNC_CACHEGLOBAL_ZFILL), coords the same partition of an identity tensor
// of the tile. Elements with tile-local row >= rows or col >= cols are written as 0. kCheckRows = false:
// the caller knows every row of the tile is in range (no row predicate math).
template <bool kCheckRows, class TiledCopy, class Src, class Dst, class Coords>
__device__ __forceinline__ void load_tile_zfill(TiledCopy const& tiled_copy, Src const& src, Dst&& dst,
                                                Coords const& coords, int rows, int cols) {
  using namespace cute;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    const bool row_ok = !kCheckRows || get<0>(coords(0, m, 0)) < rows;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(src); ++k) {
      const bool ok = row_ok && get<1>(coords(0, 0, k)) < cols;
      copy(tiled_copy.with(ok), src(_, m, k), dst(_, m, k));
    }
  }
}

// load_tile_zfill that pays for the bounds checks only on ragged tiles: the backward's mainloops reload a tile
// every step, and almost every step's tile is whole. whole: the tile lies entirely within `rows` x `cols`.
template <class TiledCopy, class Src, class Dst, class Coords>
__device__ __forceinline__ void load_tile(TiledCopy const& tiled_copy, Src const& src, Dst&& dst,
                                          Coords const& coords, int rows, int cols, bool whole) {
  if (whole) {
    load_tile_zfill<false>(tiled_copy, src, dst, coords, rows, cols);
  } else {
    load_tile_zfill<true>(tiled_copy, src, dst, coords, rows, cols);
  }
}

// Synchronous predicated store of a register tile partition to global memory: only elements with
// tile-local row < rows and col < cols are written (a column chunk is all-or-nothing: cols % chunk == 0).
template <class TiledCopy, class Src, class Dst, class Coords>
__device__ __forceinline__ void store_tile(TiledCopy const& tiled_copy, Src const& src, Dst&& dst,
                                           Coords const& coords, int rows, int cols) {
  using namespace cute;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coords(0, m, 0)) < rows) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) {
        if (get<1>(coords(0, 0, k)) < cols) copy(tiled_copy, src(_, m, k), dst(_, m, k));
      }
    }
  }
}

}  // namespace jax_flash
