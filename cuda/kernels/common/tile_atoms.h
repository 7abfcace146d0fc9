// The mma.sync building blocks of every tile config: the MMA atom, swizzled shared-memory tiles, their
// transposed views, and the 16-byte-per-thread global <-> shared copies. Shared by the forward, paged and
// backward configs (fwd/tile_config.h, fwd/paged_tile_config.h, bwd/tile_config.h).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

namespace jax_flash {

// m16n8k16 mma.sync with fp32 accumulation for the element type.
template <typename Element>
using Sm80MmaAtom = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                       cute::MMA_Atom<cute::SM80_16x8x16_F32F16F16F32_TN>,
                                       cute::MMA_Atom<cute::SM80_16x8x16_F32BF16BF16F32_TN>>;

// kWarpsM x kWarpsN warps of m16n8k16; each warp's N is widened to 16 so B is read with 4-matrix ldmatrix.
template <typename Element, int kWarpsM, int kWarpsN>
using Sm80TiledMma =
    cute::TiledMMA<Sm80MmaAtom<Element>, cute::Layout<cute::Shape<cute::Int<kWarpsM>, cute::Int<kWarpsN>, cute::_1>>,
                   cute::Tile<cute::Int<16 * kWarpsM>, cute::Int<16 * kWarpsN>, cute::_16>>;

// A shared-memory tile with `kCols` (head dim) columns is stored as 8-row atoms of 64 (or 32) columns with an
// XOR swizzle on 16-byte chunks, so that 16-byte cp.async writes and ldmatrix reads (8 rows of one 16-byte
// column chunk) hit distinct banks.
template <typename Element, int kCols>
struct SmemTileAtom {
  static constexpr int kAtomCols = kCols % 64 == 0 ? 64 : 32;
  static_assert(kCols % kAtomCols == 0, "head dim tile must be a multiple of 32");
  using Layout = decltype(cute::composition(
      cute::Swizzle<kAtomCols == 64 ? 3 : 2, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::Int<kAtomCols>>, cute::Stride<cute::Int<kAtomCols>, cute::_1>>{}));
  // Global <-> shared copies move 16 bytes per thread; one row of an atom is kAtomCols / 8 threads.
  static constexpr int kThreadsPerRow = kAtomCols / 8;
};

// A row-major (kRows, kCols) shared-memory tile made of swizzled 8-row atoms (see SmemTileAtom).
template <typename Element, int kRows, int kCols>
using SmemTile = decltype(cute::tile_to_shape(typename SmemTileAtom<Element, kCols>::Layout{},
                                              cute::Shape<cute::Int<kRows>, cute::Int<kCols>>{}));

// The same, kStages of them one after the other (the last mode indexes the stage).
template <typename Element, int kRows, int kCols, int kStages>
using StagedSmemTile =
    decltype(cute::tile_to_shape(typename SmemTileAtom<Element, kCols>::Layout{},
                                 cute::Shape<cute::Int<kRows>, cute::Int<kCols>, cute::Int<kStages>>{}));

// The (kCols, kRows) transposed view of a (kRows, kCols) tile: the same storage, read as an operand whose
// contiguous dimension is its M/N mode (ldmatrix.trans).
template <class Layout, int kRows, int kCols>
using TransposedView = decltype(cute::composition(
    Layout{}, cute::make_layout(cute::Shape<cute::Int<kCols>, cute::Int<kRows>>{}, cute::GenRowMajor{})));

// The (kCols, kRows, kStages) transposed view of a staged (kRows, kCols, kStages) tile.
template <class Layout, int kRows, int kCols, int kStages>
using StagedTransposedView = decltype(cute::composition(
    Layout{}, cute::make_layout(cute::Shape<cute::Int<kCols>, cute::Int<kRows>, cute::Int<kStages>>{},
                                cute::Stride<cute::Int<kRows>, cute::_1, cute::Int<kRows * kCols>>{})));

// The same tensor with its storage moved by `offset` elements: another stage of a multi-buffered tile (stage
// sizes are whole swizzle periods, so the swizzle pattern is unchanged).
template <class Tensor>
__device__ __forceinline__ auto shifted(Tensor const& t, int offset) {
  return cute::make_tensor(t.data() + offset, t.layout());
}

// 16-byte-per-thread copy of a (rows, kCols) tile by kThreads threads, rows spread over threads.
template <typename Element, class CopyOp, int kCols, int kThreads>
using RowTiledCopy = decltype(cute::make_tiled_copy(
    cute::Copy_Atom<CopyOp, Element>{},
    cute::Layout<cute::Shape<cute::Int<kThreads / SmemTileAtom<Element, kCols>::kThreadsPerRow>,
                             cute::Int<SmemTileAtom<Element, kCols>::kThreadsPerRow>>,
                 cute::Stride<cute::Int<SmemTileAtom<Element, kCols>::kThreadsPerRow>, cute::_1>>{},
    cute::Layout<cute::Shape<cute::_1, cute::_8>>{}));

// The cp.async (zero-filling) and plain-store flavours every config uses.
template <typename Element, int kCols, int kThreads>
using ZfillRowCopy = RowTiledCopy<Element, cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, kCols, kThreads>;
template <typename Element, int kCols, int kThreads>
using StoreRowCopy = RowTiledCopy<Element, cute::UniversalCopy<cute::uint128_t>, kCols, kThreads>;

}  // namespace jax_flash
