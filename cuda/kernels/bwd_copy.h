// load_tile_zfill (copy.h) that pays for the bounds checks only on ragged tiles: the mainloops of the
// backward reload a tile every step, and almost every step's tile is whole.
#pragma once

#include "kernels/copy.h"

namespace jax_flash {

// whole: the tile lies entirely within `rows` x `cols` (no predicate needed anywhere).
template <class TiledCopy, class Src, class Dst, class Coords>
__device__ __forceinline__ void load_tile(TiledCopy const& tiled_copy, Src const& src, Dst&& dst,
                                          Coords const& coords, int rows, int cols, bool whole) {
  if (whole) {
    load_tile_zfill<false>(tiled_copy, src, dst, coords, rows, cols);
  } else {
    load_tile_zfill<true>(tiled_copy, src, dst, coords, rows, cols);
  }
}

}  // namespace jax_flash
