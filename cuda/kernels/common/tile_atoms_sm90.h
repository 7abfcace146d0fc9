// The wgmma building blocks of the Hopper tile configs (fwd/tile_config_sm90.h, bwd/tile_config_sm90.h):
// canonical K-major shared-memory atoms, staged tiles of them, and warpgroup-tiled MMAs.
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include <type_traits>

namespace jax_flash {

// Canonical wgmma K-major shared-memory atom for a tile with kCols (contiguous) columns: the widest swizzle whose
// atom divides them: 128-byte (64 columns), 64-byte (32 columns, e.g. head dims 96 and 160) or 32-byte (16
// columns, e.g. a 176-key P tile).
template <typename Element, int kCols>
using GmmaKMajorAtom = std::conditional_t<
    kCols % 64 == 0, cute::GMMA::Layout_K_SW128_Atom<Element>,
    std::conditional_t<kCols % 32 == 0, cute::GMMA::Layout_K_SW64_Atom<Element>,
                       cute::GMMA::Layout_K_SW32_Atom<Element>>>;

// (kRows, kCols, kStages) K-major tile with the wgmma atom; StagedTransposedView (tile_atoms.h) reads it
// MN-major.
template <typename Element, int kRows, int kCols, int kStages>
using GmmaTile = decltype(cute::tile_to_shape(
    GmmaKMajorAtom<Element, kCols>{}, cute::Shape<cute::Int<kRows>, cute::Int<kCols>, cute::Int<kStages>>{}));

// wgmma tiled over (kWgM, kWgN) warpgroups for a (kM, kN, kK) product with operand majors A, B, both operands
// in shared memory.
template <typename Element, int kM, int kN, int kK, int kWgM, int kWgN, cute::GMMA::Major kMajorA,
          cute::GMMA::Major kMajorB>
using Sm90TiledMmaSS = decltype(cute::make_tiled_mma(
    cute::GMMA::ss_op_selector<Element, Element, float,
                               cute::Shape<cute::Int<kM / kWgM>, cute::Int<kN / kWgN>, cute::Int<kK>>, kMajorA,
                               kMajorB>(),
    cute::Layout<cute::Shape<cute::Int<kWgM>, cute::Int<kWgN>, cute::_1>>{}));

}  // namespace jax_flash
