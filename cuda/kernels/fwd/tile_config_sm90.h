// Tile shape of the dense forward kernel on Hopper (sm_90a): the products S = Q K^T and O += P V run as
// warpgroup MMAs (wgmma), Q K V staying in shared memory and P feeding the second product from registers.
// Everything else (cp.async pipeline, masks, online softmax, epilogue) is the SM80 kernel's: fwd/kernel.cuh
// takes either config and fwd/products.h picks the products from `MmaKind`.
//
// kBlockM query rows = kBlockM / 64 warpgroups stacked along M, each owning 64 rows (one wgmma M).
// Shared-memory tiles use the wgmma canonical layouts: Q and K K-major, V read through its transposed
// (MN-major) view, all with the 128-byte (64-column) swizzle, or 64-byte (32 columns) for head dims that are
// not multiples of 64.
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "kernels/common/mma_kind.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/common/tile_atoms_sm90.h"
#include "kernels/fwd/shared_storage.h"

namespace jax_flash {

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kStages_>
struct Sm90FwdTileConfig {
  using Element = Element_;
  using MmaKind = Wgmma;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNWarps = kBlockM / 16;  // 4 warps (one warpgroup) per 64 rows
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kStages = kStages_;
  static constexpr int kMinBlocksPerSm = 1;

  static_assert(kBlockM % 64 == 0 && kBlockN % 16 == 0 && kBlockN <= 256);
  static_assert(kHeadDim % 32 == 0 && kHeadDimV % 32 == 0 && kHeadDimV <= 256);

  using WarpgroupsAlongM = cute::Layout<cute::Shape<cute::Int<kBlockM / 64>, cute::_1, cute::_1>>;
  // S (kBlockM, kBlockN) = Q K^T: both operands K-major in shared memory.
  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::Int<kHeadDim>>>(),
      WarpgroupsAlongM{}));
  // O (kBlockM, kHeadDimV) += P V: P from registers, V^T MN-major in shared memory.
  using TiledMma = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimV>, cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      WarpgroupsAlongM{}));

  using SmemLayoutQ = decltype(cute::tile_to_shape(GmmaKMajorAtom<Element, kHeadDim>{},
                                                   cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = GmmaTile<Element, kBlockN, kHeadDim, kStages>;
  using SmemLayoutV = GmmaTile<Element, kBlockN, kHeadDimV, kStages>;
  using SmemLayoutVt = StagedTransposedView<SmemLayoutV, kBlockN, kHeadDimV, kStages>;
  // The output tile is staged through shared memory (aliasing Q) with the SM80 layout: plain stores.
  using SmemLayoutO = SmemTile<Element, kBlockM, kHeadDimV>;

  using SharedStorage = FwdSharedStorage<Element, SmemLayoutQ, SmemLayoutO, SmemLayoutK, SmemLayoutV>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "must fit the sm_90 per-block shared memory limit");

  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;
  using GmemCopyQK = ZfillRowCopy<Element, kHeadDim, kNThreads>;
  using GmemCopyV = ZfillRowCopy<Element, kHeadDimV, kNThreads>;
  using GmemCopyO = StoreRowCopy<Element, kHeadDimV, kNThreads>;
};

// The head-dim pairs with a Hopper forward; the others run the SM80 kernel on every GPU. Measured on H100
// (2026-11-22, bf16, 16k tokens): D128 379 -> 422 TFLOP/s at S=16k (causal 344 -> 424); the same 128 x 128
// tile at D64 was slower than the SM80 kernel (305 vs 350), so D64 stays there.
template <typename Element, int kHeadDim, int kHeadDimV>
struct Sm90FwdDefaultConfig {
  static constexpr bool kAvailable = false;
};
template <typename Element>
struct Sm90FwdDefaultConfig<Element, 128, 128> {
  static constexpr bool kAvailable = true;
  using type = Sm90FwdTileConfig<Element, 128, 128, 128, 128, 2>;
};

}  // namespace jax_flash
