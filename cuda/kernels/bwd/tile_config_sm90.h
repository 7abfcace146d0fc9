// Tile shape of the backward dK / dV kernel on Hopper (sm_90a): the dK/dV skeleton (dkdv_kernel.cuh) with its
// five products as wgmma read straight from shared memory (dkdv_products_sm90.h).
//
// Two warpgroups. Products and how the warpgroups split them:
//   S = Q K^T, dP = dO V^T   (kBlockM, kBlockN)    warpgroups side by side along the keys
//   dV += P^T dO, dK += dS^T Q (kBlockN, head dim) warpgroups stacked along the keys
//   dQ = dS K                (kBlockM, kHeadDim)   warpgroups side by side along the head dim
// Operands stored K-major with the 128-byte swizzle (tile_to_shape of the wgmma atom) are read transposed,
// MN-major, through composed views of the same storage (P^T, dS^T, Q^T, dO^T, K^T).
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "kernels/bwd/shared_storage.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/common/tile_atoms_sm90.h"

namespace jax_flash {

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_>
struct Sm90BwdDkDvConfig {
  using Element = Element_;
  using MmaKind = Wgmma;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // queries per inner step
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kNWarps = 8;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr bool kDoubleBuffer = true;  // Q and dO of the next step load while this one computes
  static constexpr int kStages = 2;

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
  using SmemLayoutQt = StagedTransposedView<SmemLayoutQ, kBlockM, kHeadDim, kStages>;     // (D, M): B of dK
  using SmemLayoutDot = StagedTransposedView<SmemLayoutDo, kBlockM, kHeadDimV, kStages>;  // (Dv, M): B of dV
  using SmemLayoutKt = StagedTransposedView<SmemLayoutK, kBlockN, kHeadDim, 1>;           // (D, N): B of dQ
  using SmemLayoutPdSt = StagedTransposedView<SmemLayoutPdS, kBlockM, kBlockN, 1>;        // (N, M): A of dV, dK

  using SharedStorage = DkdvSharedStorage<Element, cute::cosize_v<SmemLayoutQ>, cute::cosize_v<SmemLayoutDo>,
                                          cute::cosize_v<SmemLayoutK>, cute::cosize_v<SmemLayoutV>,
                                          cute::cosize_v<SmemLayoutPdS>>;  // Q and dO: both stages
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 227 * 1024, "must fit the sm_90 per-block shared memory limit");

  using GmemCopyQK = ZfillRowCopy<Element, kHeadDim, kNThreads>;
  using GmemCopyV = ZfillRowCopy<Element, kHeadDimV, kNThreads>;
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
