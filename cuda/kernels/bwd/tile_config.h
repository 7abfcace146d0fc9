// Tile sizes, shared-memory layouts and copy/mma atoms of the backward kernels, per (Element, kHeadDim,
// kHeadDimV). Two kernels, two configs:
//   BwdDkDvConfig: one CTA per key block; S, dP as (query, key) tiles, dK, dV as (key, head dim) tiles,
//                  P and dS staged in shared memory and read back transposed (ldmatrix.trans).
//   BwdDqConfig:   one CTA per query block, warps stacked along queries (like the forward): dS stays in
//                  registers and feeds dQ += dS K as the A operand.
// BwdDefaultConfig picks both per head-dim pair.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "kernels/bwd/shared_storage.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/tile_atoms.h"

namespace jax_flash {

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kNWarps_,
          int kWarpsMSdP_, int kWarpsNdKV_, int kWarpsMdQ_, bool kDoubleBuffer_>
struct BwdDkDvConfig {
  using Element = Element_;
  using MmaKind = MmaSync;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // queries per inner step
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = 32 * kNWarps;
  // Q and dO of the next step load while this one computes (two buffers each).
  static constexpr bool kDoubleBuffer = kDoubleBuffer_;
  static constexpr int kStages = kDoubleBuffer ? 2 : 1;

  static_assert(kHeadDim % 32 == 0 && kHeadDimV % 32 == 0 && kHeadDim <= 256 && kHeadDimV <= 256);
  static_assert(kBlockN % 64 == 0 && kBlockM % 16 == 0);

  // S = Q K^T and dP = dO V^T: (kBlockM, kBlockN).
  using TiledMmaSdP = Sm80TiledMma<Element, kWarpsMSdP_, kNWarps / kWarpsMSdP_>;
  // dV += P^T dO and dK += dS^T Q: (kBlockN, head dim).
  using TiledMmaDkDv = Sm80TiledMma<Element, kWarpsNdKV_, kNWarps / kWarpsNdKV_>;
  // dQ partial = dS K (atomic path): (kBlockM, kHeadDim).
  using TiledMmaDq = Sm80TiledMma<Element, kWarpsMdQ_, kNWarps / kWarpsMdQ_>;

  using SmemLayoutQ = SmemTile<Element, kBlockM, kHeadDim>;  // one stage
  using SmemLayoutDo = SmemTile<Element, kBlockM, kHeadDimV>;
  using SmemLayoutK = SmemTile<Element, kBlockN, kHeadDim>;
  using SmemLayoutV = SmemTile<Element, kBlockN, kHeadDimV>;
  using SmemLayoutPdS = SmemTile<Element, kBlockM, kBlockN>;
  using SmemLayoutQt = TransposedView<SmemLayoutQ, kBlockM, kHeadDim>;      // (D, M): B of dK
  using SmemLayoutDot = TransposedView<SmemLayoutDo, kBlockM, kHeadDimV>;   // (Dv, M): B of dV
  using SmemLayoutKt = TransposedView<SmemLayoutK, kBlockN, kHeadDim>;      // (D, N): B of dQ
  using SmemLayoutPdSt = TransposedView<SmemLayoutPdS, kBlockM, kBlockN>;   // (N, M): A of dV, dK

  static constexpr int kQElems = int(cute::cosize_v<SmemLayoutQ>);  // one stage
  static constexpr int kDoElems = int(cute::cosize_v<SmemLayoutDo>);
  using SharedStorage = DkdvSharedStorage<Element, kStages * kQElems, kStages * kDoElems, cute::cosize_v<SmemLayoutK>,
                                          cute::cosize_v<SmemLayoutV>, cute::cosize_v<SmemLayoutPdS>>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 163 * 1024, "must fit the sm_80 per-block shared memory limit");

  using GmemCopyQK = ZfillRowCopy<Element, kHeadDim, kNThreads>;
  using GmemCopyV = ZfillRowCopy<Element, kHeadDimV, kNThreads>;
  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomT = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  // Accumulator-shaped P / dS fragments to shared memory, two elements (32 bits) per store.
  using SmemStoreAtomPdS = cute::Copy_Atom<cute::AutoVectorizingCopyWithAssumedAlignment<32>, Element>;
};

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kNWarps_>
struct BwdDqConfig {
  using Element = Element_;
  using MmaKind = MmaSync;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // queries per CTA
  static constexpr int kBlockN = kBlockN_;  // keys per mainloop step
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kStages = 2;  // K and V buffers each

  static_assert(kBlockM % (16 * kNWarps) == 0, "each warp owns whole 16-row mma slices of the query tile");
  static_assert(kBlockN % 32 == 0);

  using TiledMma = Sm80TiledMma<Element, kNWarps, 1>;

  using SmemLayoutQ = SmemTile<Element, kBlockM, kHeadDim>;
  using SmemLayoutDo = SmemTile<Element, kBlockM, kHeadDimV>;
  using SmemLayoutK = SmemTile<Element, kBlockN, kHeadDim>;  // one stage
  using SmemLayoutV = SmemTile<Element, kBlockN, kHeadDimV>;
  using SmemLayoutKt = TransposedView<SmemLayoutK, kBlockN, kHeadDim>;  // (D, N): B of dQ

  static constexpr int kKElems = int(cute::cosize_v<SmemLayoutK>);  // one stage
  static constexpr int kVElems = int(cute::cosize_v<SmemLayoutV>);
  using SharedStorage = DqSharedStorage<Element, cute::cosize_v<SmemLayoutQ>, cute::cosize_v<SmemLayoutDo>,
                                        kStages * kKElems, kStages * kVElems>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 163 * 1024, "must fit the sm_80 per-block shared memory limit");

  using GmemCopyQK = ZfillRowCopy<Element, kHeadDim, kNThreads>;
  using GmemCopyV = ZfillRowCopy<Element, kHeadDimV, kNThreads>;
  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomT = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
};

// Per head-dim pair: FlashAttention-2's backward shapes for the dk/dv kernel (8 warps; 64 x 128 tiles up to
// head dim 128, 64 x 64 above, single-buffered at 256 to fit sm_80's 163 KB), forward-like shapes for dq.
template <typename Element, int kHeadDim, int kHeadDimV>
struct BwdDefaultConfig;

template <typename Element>
struct BwdDefaultConfig<Element, 64, 64> {
  using DkDv = BwdDkDvConfig<Element, 64, 64, 64, 128, 8, 2, 4, 4, true>;
  using Dq = BwdDqConfig<Element, 64, 64, 128, 64, 8>;
};
template <typename Element>
struct BwdDefaultConfig<Element, 96, 96> {
  using DkDv = BwdDkDvConfig<Element, 96, 96, 64, 128, 8, 2, 4, 4, true>;
  using Dq = BwdDqConfig<Element, 96, 96, 128, 64, 8>;
};
template <typename Element>
struct BwdDefaultConfig<Element, 128, 128> {
  using DkDv = BwdDkDvConfig<Element, 128, 128, 64, 128, 8, 2, 4, 2, true>;
  using Dq = BwdDqConfig<Element, 128, 128, 128, 64, 8>;
};
template <typename Element>
struct BwdDefaultConfig<Element, 192, 192> {
  using DkDv = BwdDkDvConfig<Element, 192, 192, 64, 64, 8, 4, 2, 2, true>;
  using Dq = BwdDqConfig<Element, 192, 192, 64, 32, 4>;
};
template <typename Element>
struct BwdDefaultConfig<Element, 192, 128> {
  using DkDv = BwdDkDvConfig<Element, 192, 128, 64, 64, 8, 4, 2, 2, true>;
  using Dq = BwdDqConfig<Element, 192, 128, 64, 32, 4>;
};
template <typename Element>
struct BwdDefaultConfig<Element, 256, 256> {
  using DkDv = BwdDkDvConfig<Element, 256, 256, 64, 64, 8, 4, 2, 2, false>;
  using Dq = BwdDqConfig<Element, 256, 256, 64, 32, 4>;
};

}  // namespace jax_flash
