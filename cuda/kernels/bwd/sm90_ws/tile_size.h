// Tile shapes, thread roles, products and register budget of the warp-specialized Hopper dK/dV kernel
// (sm_90a), per head dim.
//
// A CTA is 1 producer warpgroup + 2 consumer warpgroups and owns kBlockN = 128 keys of one kv head; consumer
// warpgroup w owns keys [64 w, 64 w + 64) of them for the whole query loop. Per query block of kBlockM queries:
//   S^T  = K Q^T      (kBlockN, kBlockM)   SS: K rows of the warpgroup x all of Q           (TiledMmaSdP)
//   dP^T = V dO^T     (kBlockN, kBlockM)   SS: V rows of the warpgroup x all of dO          (TiledMmaDpT)
//   dV  += P^T dO     (kBlockN, Dv)        RS: P^T straight from the S^T registers, dO^T MN-major
//   dK  += dS^T Q     (kBlockN, D)         RS: dS^T straight from the dP^T registers, Q^T MN-major
//   dQ   = dS K       (kBlockM, D)         SS: dS from shared memory (stored as dS^T, read MN-major) x K^T;
//                                          the warpgroups split D; summed over key blocks with fp32 atomics
// Computing S and dP swapped (keys along M) is FlashAttention-3's choice for D <= 128: the accumulators of
// S^T and dP^T are laid out as the A operands of the dV and dK products, so P never goes through shared
// memory and only dS does (for dQ, which needs every key of the block).
//
// Registers per consumer thread (fp32 values unless said), Dv = D:
//   dK, dV accumulators       2 x 64 D / 128 = D              (128 at D128), live for the whole query loop
//   S^T, dP^T accumulators    2 x 64 kBlockM / 128 = kBlockM   (64 at D128, 128 at D64), then P, dS in the
//                                                              element type (half as many registers)
//   dQ accumulator            kBlockM D / 256                  (32 at D128 and at D64), while P / dS are read
// The per-query statistics (lse, delta) are read from shared memory where they are used (transposed_math.h).
// setmaxnreg gives the consumers 240 (24 x 128 + 240 x 256 = 64,512 of the SM's 65,536). README.md has the
// table per head dim and what ptxas reports.
#pragma once

#include <cute/arch/mma_sm90_gmma_ext.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/atom/mma_traits_sm90_gmma_ext.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "kernels/bwd/workspace_layout.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/common/tile_atoms_sm90.h"
#include "kernels/bwd/sm90_ws/tile_size_split.h"

namespace jax_flash {

// wgmma 64 x 48 x 16 with both operands in shared memory: dQ's atom at D96 (D / 2 per warpgroup). CuTe's
// selector offers N = 48 only under CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED, a macro that would change the
// selector for every kernel of the build; the atom is taken from CuTe's extended-shape header by name instead.
template <typename Element, cute::GMMA::Major kMajorA, cute::GMMA::Major kMajorB>
using Sm90GmmaAtomN48SS =
    std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                       cute::SM90::GMMA::MMA_64x48x16_F32F16F16_SS<kMajorA, kMajorB>,
                       cute::SM90::GMMA::MMA_64x48x16_F32BF16BF16_SS<kMajorA, kMajorB>>;

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kStages_>
struct Sm90WsBwdConfig {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // queries per step
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kStages = kStages_;  // Q / dO (with their lse / delta rows) stages
  static constexpr int kDsStages = 2;       // dS is double-buffered: one named barrier per step (mainloop_tma_ws.h)
  // A step's dK product runs on under the next step's S^T and dP^T (mainloop_tma_ws.h), where registers allow
  // it: the 64-query tiles (D96, D128). With 128 queries (D64) the S^T / dP^T accumulators are twice as large
  // and ptxas serializes the wgmma instead (C7512, insufficient registers).
  static constexpr bool kDkIntoNextStep = kBlockM == 64;
  static constexpr bool kSplit = false;         // the swapped layout's mainloop (kernel_bwd_sm90_ws.cuh)
  static constexpr bool kDqSharedBlock = true;  // dQ through the shared dQ block and the dq writer warp
  // Chains of the ordered dQ sums: the workspace is sized by the same function.
  static constexpr int kOrderedDqCopies = sm90_ws_ordered_dq_copies(kHeadDim_);

  static constexpr int kMmaWarpgroups = 2;
  static constexpr int kMmaThreads = 128 * kMmaWarpgroups;
  static constexpr int kThreads = 128 + kMmaThreads;
  static constexpr int kProducerRegs = 24;
  static constexpr int kMmaRegs = 240;
  static_assert(kProducerRegs * 128 + kMmaRegs * kMmaThreads <= 64 * 1024, "registers of one SM");

  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);
  static_assert(kBlockN == 64 * kMmaWarpgroups, "each consumer warpgroup owns 64 keys (one wgmma M)");
  static_assert(kBlockM % 64 == 0 && kBlockM <= 256, "dS^T tile atom and the wgmma N of S^T / dP^T");
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "dQ splits D across the 2 warpgroups in wgmma N >= 16");
  // Dv != D: not written for this layout (its dK / dV atoms, dQ split, tiles); the split layout
  // (tile_size_split.h) has it.
  static_assert(kHeadDimV == kHeadDim, "Dv != D is not done yet");
  static_assert(kStages >= 2);

  using Major = cute::GMMA::Major;
  using WarpgroupsAlongM = cute::Layout<cute::Shape<cute::Int<kMmaWarpgroups>, cute::_1, cute::_1>>;
  using TiledMmaSdP = Sm90TiledMmaSS<Element, kBlockN, kBlockM, kHeadDim, kMmaWarpgroups, 1, Major::K, Major::K>;
  using TiledMmaDpT = Sm90TiledMmaSS<Element, kBlockN, kBlockM, kHeadDimV, kMmaWarpgroups, 1, Major::K, Major::K>;
  // dK / dV: A (dS^T / P^T) from registers, B (Q^T / dO^T) MN-major; one warpgroup's 64 keys per atom.
  template <int kN>
  using TiledMmaRS = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::Int<kN>, cute::Int<kBlockM>>,
                                 Major::K, Major::MN>(),
      WarpgroupsAlongM{}));
  using TiledMmaDk = TiledMmaRS<kHeadDim>;
  using TiledMmaDv = TiledMmaRS<kHeadDimV>;
  using TiledMmaDq = std::conditional_t<
      kHeadDim / kMmaWarpgroups == 48,
      decltype(cute::make_tiled_mma(Sm90GmmaAtomN48SS<Element, Major::MN, Major::MN>{},
                                    cute::Layout<cute::Shape<cute::_1, cute::Int<kMmaWarpgroups>, cute::_1>>{})),
      Sm90TiledMmaSS<Element, kBlockM, kHeadDim, kBlockN, 1, kMmaWarpgroups, Major::MN, Major::MN>>;
  // One wgmma instruction per k slice spans the warpgroup's whole tile (no narrower fallback atoms).
  static_assert(cute::size<1>(typename TiledMmaSdP::AtomShape_MNK{}) == kBlockM, "kBlockM needs a standard wgmma N");
  static_assert(cute::size<1>(typename TiledMmaDq::AtomShape_MNK{}) == kHeadDim / kMmaWarpgroups,
                "D / 2 needs a standard wgmma N");

  // Shared tiles, K-major with the wgmma atom (TMA boxes land as they are); the transposed operands are views.
  using SmemLayoutQ = GmmaTile<Element, kBlockM, kHeadDim, kStages>;
  using SmemLayoutDo = GmmaTile<Element, kBlockM, kHeadDimV, kStages>;
  // K is also dQ's B operand (K^T, MN-major), split along D between the warpgroups: a warpgroup's D / 2 columns
  // must be whole swizzle atoms. D96 splits at column 48, inside GmmaTile's 32-column (64-byte) atom, so K takes
  // the 16-column (32-byte) atom there (FlashAttention-3 chooses K's atom by the same width).
  using SmemLayoutK = std::conditional_t<
      (kHeadDim / kMmaWarpgroups) % 32 == 0, GmmaTile<Element, kBlockN, kHeadDim, 1>,
      decltype(cute::tile_to_shape(cute::GMMA::Layout_K_SW32_Atom<Element>{},
                                   cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::_1>{}))>;
  using SmemLayoutV = GmmaTile<Element, kBlockN, kHeadDimV, 1>;
  using SmemLayoutDsT = GmmaTile<Element, kBlockN, kBlockM, kDsStages>;  // dS^T as the registers hold it
  using SmemLayoutQt = StagedTransposedView<SmemLayoutQ, kBlockM, kHeadDim, kStages>;     // (D, M): B of dK
  using SmemLayoutDot = StagedTransposedView<SmemLayoutDo, kBlockM, kHeadDimV, kStages>;  // (Dv, M): B of dV
  using SmemLayoutKt = StagedTransposedView<SmemLayoutK, kBlockN, kHeadDim, 1>;           // (D, N): B of dQ
  using SmemLayoutDs = StagedTransposedView<SmemLayoutDsT, kBlockN, kBlockM, kDsStages>;  // (M, N): A of dQ
  // dS^T fragments to shared memory with stmatrix (8 x 8 blocks of the accumulator, keys as rows): shared-space
  // stores with 32-bit addresses. (Element-wise stores through CuTe's generic pointers came out as 64-bit
  // generic stores here, 16 address pairs that pushed the consumers over their registers.)
  using SmemStoreAtomDs = cute::Copy_Atom<cute::SM90_U32x4_STSM_N, Element>;
  static_assert(kBlockN * kBlockM / kMmaThreads % 8 == 0, "stmatrix x4: 8 values per thread per store");

  static constexpr int kBytesQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesDo = kBlockM * kHeadDimV * int(sizeof(Element));
  static constexpr int kBytesK = kBlockN * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesV = kBlockN * kHeadDimV * int(sizeof(Element));
};

// The tile of each head-dim pair. FlashAttention-3 runs D128 with 64 x 128 (80 x 128 without masks, which
// needs a wgmma N of 80) and D64 with 128 x 128, as here: at D64 the dK / dV accumulators are small enough
// that 128 queries per step fit without spills (each thread holds 64 + 64 S^T / dP^T accumulators), and the
// step's fixed costs (the pipeline waits, lse / delta loads, the dQ block's add) are shared by twice the work
// (H100: 1.17x the 64 x 128 tile's backward at S 16k, BENCHMARKS.md session 20).
template <int kHeadDim, int kHeadDimV>
struct Sm90WsBwdTileSize;
template <>
struct Sm90WsBwdTileSize<64, 64> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2;
};
template <>
struct Sm90WsBwdTileSize<96, 96> {
  static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2;
};
template <>
struct Sm90WsBwdTileSize<128, 128> {
  static constexpr int kBlockM = 64, kBlockN = 128, kStages = 2;
};

template <typename Element, int kHeadDim, int kHeadDimV>
struct Sm90WsBwdSwappedDefault {
  using type = Sm90WsBwdConfig<Element, kHeadDim, kHeadDimV, Sm90WsBwdTileSize<kHeadDim, kHeadDimV>::kBlockM,
                               Sm90WsBwdTileSize<kHeadDim, kHeadDimV>::kBlockN,
                               Sm90WsBwdTileSize<kHeadDim, kHeadDimV>::kStages>;
};
template <typename Element, int kHeadDim, int kHeadDimV>
struct Sm90WsBwdSplitDefault {
  using type = Sm90WsBwdSplitDefaultConfig<Element, kHeadDim, kHeadDimV>;
};

// The kernel's config for a head-dim pair: the swapped layout up to D128, the split layout (tile_size_split.h)
// above, where a warpgroup owning 64 keys cannot hold their dK and dV (the structs pick a tile table lazily).
template <typename Element, int kHeadDim, int kHeadDimV>
using Sm90WsBwdDefaultConfig =
    typename std::conditional_t<(kHeadDim > 128), Sm90WsBwdSplitDefault<Element, kHeadDim, kHeadDimV>,
                                Sm90WsBwdSwappedDefault<Element, kHeadDim, kHeadDimV>>::type;

}  // namespace jax_flash
