// Tile shape of the backward dK / dV kernel on Hopper (sm_90a): bwd_dkdv_kernel_sm90.cuh, the SM80 kernel's
// algorithm with its five products as wgmma read straight from shared memory.
//
// Two warpgroups. Products and how the warpgroups split them:
//   S = Q K^T, dP = dO V^T   (kBlockM, kBlockN)    warpgroups side by side along the keys
//   dV += P^T dO, dK += dS^T Q (kBlockN, head dim) warpgroups stacked along the keys
//   dQ = dS K                (kBlockM, kHeadDim)   warpgroups side by side along the head dim
// Operands stored K-major with the 128-byte swizzle (tile_to_shape of the wgmma atom) are read transposed,
// MN-major, through composed views of the same storage (P^T, dS^T, Q^T, dO^T, K^T).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/numeric_types.h>

#include "kernels/bwd/tile_config.h"
#include "kernels/fwd/tile_config_sm90.h"

namespace jax_flash {

// wgmma tiled over (kWgM, kWgN) warpgroups for a (kM, kN, kK) product with operand majors A, B.
template <typename Element, int kM, int kN, int kK, int kWgM, int kWgN, cute::GMMA::Major kMajorA,
          cute::GMMA::Major kMajorB>
using Sm90TiledMmaSS = decltype(cute::make_tiled_mma(
    cute::GMMA::ss_op_selector<Element, Element, float,
                               cute::Shape<cute::Int<kM / kWgM>, cute::Int<kN / kWgN>, cute::Int<kK>>, kMajorA,
                               kMajorB>(),
    cute::Layout<cute::Shape<cute::Int<kWgM>, cute::Int<kWgN>, cute::_1>>{}));

// (kRows, kCols, kStages) K-major tile with the wgmma atom, and its (kCols, kRows, kStages) transposed view.
template <typename Element, int kRows, int kCols, int kStages>
using GmmaTile = decltype(cute::tile_to_shape(
    GmmaKMajorAtom<Element, kCols>{}, cute::Shape<cute::Int<kRows>, cute::Int<kCols>, cute::Int<kStages>>{}));
template <class Layout, int kRows, int kCols, int kStages>
using GmmaTileTransposed = decltype(cute::composition(
    Layout{}, cute::make_layout(cute::Shape<cute::Int<kCols>, cute::Int<kRows>, cute::Int<kStages>>{},
                                cute::Stride<cute::Int<kRows>, cute::_1, cute::Int<kRows * kCols>>{})));

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_>
struct Sm90BwdDkDvConfig {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // queries per inner step
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kNWarps = 8;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kStages = 2;  // Q and dO of the next step load while this one computes

  static_assert(kBlockM == 64 && kBlockN == 128, "one warpgroup's M for S / dP, two for dK / dV");
  static_assert(kHeadDim % 64 == 0 && kHeadDimV % 64 == 0);

  using Major = cute::GMMA::Major;
  using TiledMmaSdP = Sm90TiledMmaSS<Element, kBlockM, kBlockN, kHeadDim, 1, 2, Major::K, Major::K>;
  using TiledMmaDkDv = Sm90TiledMmaSS<Element, kBlockN, kHeadDim, kBlockM, 2, 1, Major::MN, Major::MN>;
  using TiledMmaDq = Sm90TiledMmaSS<Element, kBlockM, kHeadDim, kBlockN, 1, 2, Major::K, Major::MN>;

  using SmemLayoutQ = GmmaTile<Element, kBlockM, kHeadDim, kStages>;
  using SmemLayoutDo = GmmaTile<Element, kBlockM, kHeadDimV, kStages>;
  using SmemLayoutK = GmmaTile<Element, kBlockN, kHeadDim, 1>;
  using SmemLayoutV = GmmaTile<Element, kBlockN, kHeadDimV, 1>;
  using SmemLayoutPdS = GmmaTile<Element, kBlockM, kBlockN, 1>;
  using SmemLayoutQt = GmmaTileTransposed<SmemLayoutQ, kBlockM, kHeadDim, kStages>;     // (D, M): B of dK
  using SmemLayoutDot = GmmaTileTransposed<SmemLayoutDo, kBlockM, kHeadDimV, kStages>;  // (Dv, M): B of dV
  using SmemLayoutKt = GmmaTileTransposed<SmemLayoutK, kBlockN, kHeadDim, 1>;           // (D, N): B of dQ
  using SmemLayoutPdSt = GmmaTileTransposed<SmemLayoutPdS, kBlockM, kBlockN, 1>;        // (N, M): A of dV, dK

  static constexpr int kQElems = int(cute::cosize_v<SmemLayoutQ>);  // both stages
  static constexpr int kDoElems = int(cute::cosize_v<SmemLayoutDo>);
  static constexpr int kKElems = int(cute::cosize_v<SmemLayoutK>);
  static constexpr int kVElems = int(cute::cosize_v<SmemLayoutV>);
  static constexpr int kPElems = int(cute::cosize_v<SmemLayoutPdS>);
  static constexpr int kOffDo = kQElems;
  static constexpr int kOffK = kOffDo + kDoElems;
  static constexpr int kOffV = kOffK + kKElems;
  static constexpr int kOffP = kOffV + kVElems;
  static constexpr int kOffDs = kOffP + kPElems;
  static constexpr int kSmemBytes = (kOffDs + kPElems) * int(sizeof(Element));
  static_assert(kSmemBytes <= 227 * 1024, "must fit the sm_90 per-block shared memory limit");

  using GmemCopyQK = RowTiledCopy<Element, cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, kHeadDim, kNThreads>;
  using GmemCopyV = RowTiledCopy<Element, cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, kHeadDimV, kNThreads>;
  // Accumulator-shaped P / dS fragments to shared memory, two elements (32 bits) per store.
  using SmemStoreAtomPdS = cute::Copy_Atom<cute::AutoVectorizingCopyWithAssumedAlignment<32>, Element>;
};

// The head-dim pairs with a Hopper dK / dV kernel (atomic dQ path); the others run the SM80 kernels.
template <typename Element, int kHeadDim, int kHeadDimV>
struct Sm90BwdDefaultConfig {
  static constexpr bool kAvailable = false;
};
template <typename Element>
struct Sm90BwdDefaultConfig<Element, 128, 128> {
  static constexpr bool kAvailable = true;
  using DkDv = Sm90BwdDkDvConfig<Element, 128, 128, 64, 128>;
};

}  // namespace jax_flash
