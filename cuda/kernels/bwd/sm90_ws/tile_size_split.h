// Tile shapes, products and register budget of the warp-specialized Hopper dK/dV kernel's split layout
// (FlashAttention-3's for large head dims; mainloop_tma_ws_split.h), D192 and D256.
//
// The swapped layout (tile_size.h) gives each consumer warpgroup 64 keys for the whole query loop, so its dK and
// dV accumulators are 2 x 64 x D / 128 = D registers per thread: 256 at D256, beyond the 240 a consumer has. The
// split layout shares one block of kBlockN = 64 keys between the two consumer warpgroups and splits every product
// between them (warpgroup w, per query block of kBlockM = 64 queries):
//   S  = Q K^T     (kBlockM, kBlockN)   SS: all queries x keys [32 w, 32 w + 32)         (TiledMmaS)
//   dP = dO V^T    (kBlockM, kBlockN)   SS: likewise                                     (TiledMmaDp)
//   P and dS (element type) -> shared memory, each warpgroup its 32 keys, then:
//   dV += P^T dO   (kBlockN, Dv)        SS: all keys x Dv columns [Dv / 2 w, ...)        (TiledMmaDv)
//   dK += dS^T Q   (kBlockN, D)         SS: all keys x D columns [D / 2 w, ...)          (TiledMmaDk)
//   dQ  = dS K     (kBlockM, D)         SS: all queries x D columns [D / 2 w, ...)       (TiledMmaDq)
// Registers per consumer thread (fp32 values): dK, dV 64 x (D / 2) / 128 = D / 4 each (64 + 64 at D256, 48 + 48
// at D192), live for the whole loop; S, dP 64 x 32 / 128 = 16 each; dQ 64 x (D / 2) / 128 = D / 4 (64 at D256),
// live while dK and dV are computed (S and dP are dead by then). README.md has ptxas's figures.
//
// Shared memory (bytes): Q, dO kStages x 64 x D x 2; K, V 64 x D x 2; P, dS 2 buffers x 64 x 64 x 2 each;
// with kDqSharedBlock the step's dQ block (64 x D x 4, dq_accum_blocks.h) for the dq writer warp's bulk
// reduce-add. D256: 64 + 64 + 32 + 32 + 32 = 224 KB, no room for the 64 KB dQ block: the consumers add dQ into
// the workspace's blocks with float4 atomics (same layout, same convert kernel; ordered: in their turn).
// D192: 48 + 48 + 24 + 24 + 32 + 48 (dQ block) = 224 KB: the bulk reduce-add, and with it the writer warp's
// ordered (deterministic) sums.
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "kernels/bwd/workspace_layout.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/common/tile_atoms_sm90.h"

namespace jax_flash {

// K-major wgmma atom whose columns divide kHalfCols: a warpgroup's half of a head dim must be whole atoms where
// the tile is an MN-major B operand split between the warpgroups (Q^T of dK, dO^T of dV, K^T of dQ). D192
// splits at column 96, inside the 64-column 128-byte swizzle atom, so it takes the 32-column (64-byte) one.
template <typename Element, int kHalfCols>
using SplitKMajorAtom = std::conditional_t<
    kHalfCols % 64 == 0, cute::GMMA::Layout_K_SW128_Atom<Element>,
    std::conditional_t<kHalfCols % 32 == 0, cute::GMMA::Layout_K_SW64_Atom<Element>,
                       cute::GMMA::Layout_K_SW32_Atom<Element>>>;

template <typename Element, int kRows, int kCols, int kStages>
using SplitHalvesTile = decltype(cute::tile_to_shape(
    SplitKMajorAtom<Element, kCols / 2>{}, cute::Shape<cute::Int<kRows>, cute::Int<kCols>, cute::Int<kStages>>{}));

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kStages_,
          bool kDqSharedBlock_>
struct Sm90WsBwdSplitConfig {
  using Element = Element_;
  static constexpr bool kSplit = true;  // the kernel's mainloop (kernel_bwd_sm90_ws.cuh)
  // dQ through the shared dQ block and the dq writer warp (bulk reduce-add; ordered sums possible), else fp32
  // atomics from the consumers' registers into the same blocks.
  static constexpr bool kDqSharedBlock = kDqSharedBlock_;
  // Chains of the ordered dQ sums, by the function that sizes the workspace (workspace_layout.h: two for these
  // head dims, whose 64-key blocks are twice as many links per query block as the swapped layout's).
  static constexpr int kOrderedDqCopies = sm90_ws_ordered_dq_copies(kHeadDim_);
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // queries per step
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kStages = kStages_;  // Q / dO stages
  static constexpr int kPdsStages = 2;      // P and dS double-buffered: one named barrier per step

  static constexpr int kMmaWarpgroups = 2;
  static constexpr int kMmaThreads = 128 * kMmaWarpgroups;
  static constexpr int kThreads = 128 + kMmaThreads;
  static constexpr int kProducerRegs = 24;
  static constexpr int kMmaRegs = 240;
  static_assert(kProducerRegs * 128 + kMmaRegs * kMmaThreads <= 64 * 1024, "registers of one SM");

  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);
  static_assert(kBlockM == 64, "S / dP / dQ: every query of the step in one wgmma M");
  static_assert(kBlockN == 64, "dK / dV: every key of the block in one wgmma M");
  static_assert(kHeadDim % 32 == 0 && kHeadDimV % 32 == 0 && kHeadDim <= 256 && kHeadDimV <= 256,
                "the head dims split between the 2 warpgroups in whole 16-column atoms");

  using Major = cute::GMMA::Major;
  using TiledMmaS = Sm90TiledMmaSS<Element, kBlockM, kBlockN, kHeadDim, 1, kMmaWarpgroups, Major::K, Major::K>;
  using TiledMmaDp = Sm90TiledMmaSS<Element, kBlockM, kBlockN, kHeadDimV, 1, kMmaWarpgroups, Major::K, Major::K>;
  // A: P^T / dS^T, views of the (query, key) tiles (MN-major); B: dO^T / Q^T (MN-major).
  using TiledMmaDv = Sm90TiledMmaSS<Element, kBlockN, kHeadDimV, kBlockM, 1, kMmaWarpgroups, Major::MN, Major::MN>;
  using TiledMmaDk = Sm90TiledMmaSS<Element, kBlockN, kHeadDim, kBlockM, 1, kMmaWarpgroups, Major::MN, Major::MN>;
  // A: dS as stored (K-major); B: K^T (MN-major). Also the convert kernel's partition of the dQ blocks.
  using TiledMmaDq = Sm90TiledMmaSS<Element, kBlockM, kHeadDim, kBlockN, 1, kMmaWarpgroups, Major::K, Major::MN>;
  // One wgmma instruction per k slice spans a warpgroup's part (standard wgmma N: no extended shapes).
  static_assert(cute::size<1>(typename TiledMmaS::AtomShape_MNK{}) == kBlockN / kMmaWarpgroups);
  static_assert(cute::size<1>(typename TiledMmaDv::AtomShape_MNK{}) == kHeadDimV / kMmaWarpgroups,
                "Dv / 2 needs a standard wgmma N");
  static_assert(cute::size<1>(typename TiledMmaDk::AtomShape_MNK{}) == kHeadDim / kMmaWarpgroups,
                "D / 2 needs a standard wgmma N");
  static_assert(cute::size<1>(typename TiledMmaDq::AtomShape_MNK{}) == kHeadDim / kMmaWarpgroups);

  // Shared tiles, K-major (TMA boxes land as they are); the transposed operands are views.
  using SmemLayoutQ = SplitHalvesTile<Element, kBlockM, kHeadDim, kStages>;
  using SmemLayoutDo = SplitHalvesTile<Element, kBlockM, kHeadDimV, kStages>;
  using SmemLayoutK = SplitHalvesTile<Element, kBlockN, kHeadDim, 1>;
  using SmemLayoutV = GmmaTile<Element, kBlockN, kHeadDimV, 1>;  // only dP's B operand (K-major)
  using SmemLayoutP = GmmaTile<Element, kBlockM, kBlockN, kPdsStages>;  // (query, key), as S's registers hold it
  using SmemLayoutDs = SmemLayoutP;
  using SmemLayoutQt = StagedTransposedView<SmemLayoutQ, kBlockM, kHeadDim, kStages>;     // (D, M): B of dK
  using SmemLayoutDot = StagedTransposedView<SmemLayoutDo, kBlockM, kHeadDimV, kStages>;  // (Dv, M): B of dV
  using SmemLayoutKt = StagedTransposedView<SmemLayoutK, kBlockN, kHeadDim, 1>;           // (D, N): B of dQ
  using SmemLayoutPt = StagedTransposedView<SmemLayoutP, kBlockM, kBlockN, kPdsStages>;   // (N, M): A of dV, dK
  // P / dS fragments to shared memory with stmatrix (as the swapped layout stores dS^T: tile_size.h).
  using SmemStoreAtomPds = cute::Copy_Atom<cute::SM90_U32x4_STSM_N, Element>;
  static_assert(kBlockM * kBlockN / kMmaThreads % 8 == 0, "stmatrix x4: 8 values per thread per store");

  static constexpr int kBytesQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesDo = kBlockM * kHeadDimV * int(sizeof(Element));
  static constexpr int kBytesK = kBlockN * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesV = kBlockN * kHeadDimV * int(sizeof(Element));
};

// The split layout's tiles. FlashAttention-3 runs its D256 backward with 64 x 64 tiles as well (and D192 with
// 64 x 80 or 64 x 96, which split the keys in wgmma N of 40 or 48: extended shapes, not taken here).
template <int kHeadDim, int kHeadDimV>
struct Sm90WsBwdSplitTileSize;
template <>
struct Sm90WsBwdSplitTileSize<192, 128> {
  static constexpr int kBlockM = 64, kBlockN = 64, kStages = 2;
  static constexpr bool kDqSharedBlock = true;  // 200 KB with the dQ block
};
template <>
struct Sm90WsBwdSplitTileSize<192, 192> {
  static constexpr int kBlockM = 64, kBlockN = 64, kStages = 2;
  static constexpr bool kDqSharedBlock = true;  // 224 KB with the dQ block
};
template <>
struct Sm90WsBwdSplitTileSize<256, 256> {
  static constexpr int kBlockM = 64, kBlockN = 64, kStages = 2;
  static constexpr bool kDqSharedBlock = false;  // 224 KB without it
};

template <typename Element, int kHeadDim, int kHeadDimV>
using Sm90WsBwdSplitDefaultConfig =
    Sm90WsBwdSplitConfig<Element, kHeadDim, kHeadDimV, Sm90WsBwdSplitTileSize<kHeadDim, kHeadDimV>::kBlockM,
                         Sm90WsBwdSplitTileSize<kHeadDim, kHeadDimV>::kBlockN,
                         Sm90WsBwdSplitTileSize<kHeadDim, kHeadDimV>::kStages,
                         Sm90WsBwdSplitTileSize<kHeadDim, kHeadDimV>::kDqSharedBlock>;

}  // namespace jax_flash
