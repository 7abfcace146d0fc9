// Tile copies whose rows live at unrelated addresses: keys and values gathered from cache pages, query and
// output rows spread over the query heads of a kv group. Each row's element offset comes from a functor;
// a negative offset means "no row here": loads zero-fill it, stores skip it. The thread/value partitions
// are those of the contiguous copies (copy.h), so the shared-memory side is unchanged.
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

namespace jax_flash {

// cp.async (zero-fill) of a (rows, cols) tile from rows at base + row_offset(row). dst: the
// (CPY, CPY_ROWS, CPY_COLS) partition of a 16-byte-per-thread zfill TiledCopy over the shared tile; coords:
// the same partition of the tile's identity tensor. Columns >= cols are zero-filled.
template <class Element, class Dst, class Coords, class RowOffset>
__device__ __forceinline__ void load_rows_gather(const Element* base, Dst&& dst, Coords const& coords,
                                                 RowOffset row_offset, int cols) {
  using namespace cute;
  using Chunk = uint128_t;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(dst); ++m) {
    const int64_t offset = row_offset(get<0>(coords(0, m, 0)));
    CUTE_UNROLL
    for (int k = 0; k < size<2>(dst); ++k) {
      const int col = get<1>(coords(0, m, k));
      const bool ok = offset >= 0 && col < cols;
      const Element* src = base + (ok ? offset + col : 0);  // a valid address even when skipped
      SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<Chunk>::copy(*reinterpret_cast<const Chunk*>(src),
                                                    *reinterpret_cast<Chunk*>(&dst(0, m, k)), ok);
    }
  }
}

// Synchronous store of a register tile partition (src, 16 bytes per chunk) to rows at
// base + row_offset(row); rows with a negative offset and columns >= cols are skipped.
template <class Element, class Src, class Coords, class RowOffset>
__device__ __forceinline__ void store_rows_gather(Element* base, Src const& src, Coords const& coords,
                                                  RowOffset row_offset, int cols) {
  using namespace cute;
  using Chunk = uint128_t;
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    const int64_t offset = row_offset(get<0>(coords(0, m, 0)));
    if (offset < 0) continue;
    CUTE_UNROLL
    for (int k = 0; k < size<2>(src); ++k) {
      const int col = get<1>(coords(0, m, k));
      if (col < cols) {
        *reinterpret_cast<Chunk*>(base + offset + col) = *reinterpret_cast<const Chunk*>(&src(0, m, k));
      }
    }
  }
}

}  // namespace jax_flash
