// Tile sizes, shared memory and copy / mma atoms of the mma.sync forward kernel (dense and paged), per
// (Element, kHeadDim, kHeadDimV). `FwdTileConfig` is the generic shape; `FwdDefaultConfig` picks one per
// head-dim pair for the dense forward (fwd/paged_tile_config.h picks the paged ones).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "kernels/common/mma_kind.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/fwd/shared_storage.h"

namespace jax_flash {

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kNWarps_,
          int kStages_, int kMinBlocksPerSm_>
struct FwdTileConfig {
  using Element = Element_;
  using MmaKind = MmaSync;
  static constexpr int kHeadDim = kHeadDim_;    // tile of q/k head dim (real head_dim <= this)
  static constexpr int kHeadDimV = kHeadDimV_;  // tile of v/out head dim
  static constexpr int kBlockM = kBlockM_;      // queries per CTA
  static constexpr int kBlockN = kBlockN_;      // keys per mainloop step
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = 32 * kNWarps;
  static constexpr int kStages = kStages_;      // K and V shared-memory buffers each
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;

  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>,
                "Element must be cutlass::half_t or cutlass::bfloat16_t");
  static_assert(kBlockM % (16 * kNWarps) == 0, "each warp owns whole 16-row mma slices of the query tile");
  static_assert(kBlockN % 16 == 0, "key tile is a multiple of the mma k (16)");
  static_assert(kHeadDim % 32 == 0 && kHeadDimV % 32 == 0 && kHeadDim <= 256 && kHeadDimV <= 256,
                "head dim tiles are multiples of 32 up to 256");
  static_assert(kStages >= 1 && kStages <= 3, "1 to 3 K/V stages");

  // Warps stacked along M: warp w owns query rows [16 w + 16 kNWarps i, ...).
  using TiledMma = Sm80TiledMma<Element, kNWarps, 1>;
  using TiledMmaS = TiledMma;  // S = Q K^T and O += P V share one tiled mma

  using SmemLayoutQ = SmemTile<Element, kBlockM, kHeadDim>;
  using SmemLayoutK = StagedSmemTile<Element, kBlockN, kHeadDim, kStages>;
  using SmemLayoutV = StagedSmemTile<Element, kBlockN, kHeadDimV, kStages>;
  // V read as the (kHeadDimV, kBlockN) B operand of O += P V: the same storage, transposed view.
  using SmemLayoutVt = StagedTransposedView<SmemLayoutV, kBlockN, kHeadDimV, kStages>;
  // The output tile is staged through shared memory (aliasing Q) for coalesced 16-byte stores.
  using SmemLayoutO = SmemTile<Element, kBlockM, kHeadDimV>;

  using SharedStorage = FwdSharedStorage<Element, SmemLayoutQ, SmemLayoutO, SmemLayoutK, SmemLayoutV>;
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
  static_assert(kSmemBytes <= 163 * 1024, "must fit the sm_80 per-block shared memory limit");

  using SmemCopyAtomQK = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomVt = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  using GmemCopyQK = ZfillRowCopy<Element, kHeadDim, kNThreads>;
  using GmemCopyV = ZfillRowCopy<Element, kHeadDimV, kNThreads>;
  using GmemCopyO = StoreRowCopy<Element, kHeadDimV, kNThreads>;
};

// Per head-dim pair defaults, chosen by measurement on H100 (bf16, 16k tokens, causal and not) among
// FlashAttention-2's shapes: 4 warps of 32 query rows while the fp32 accumulators fit in registers, 64-row
// tiles for the wide head dims (better than 128 rows x 8 warps there, causal especially). Two K/V stages
// pay off only for D=128 (for the others the second buffer costs more address math than it hides); they
// take 96 KB of shared memory, i.e. 2 CTAs per SM on sm_90 but 1 on sm_80.
template <typename Element, int kHeadDim, int kHeadDimV>
struct FwdDefaultConfig;

template <typename Element>
struct FwdDefaultConfig<Element, 64, 64> {
  using type = FwdTileConfig<Element, 64, 64, 128, 128, 4, 1, 2>;
};
template <typename Element>
struct FwdDefaultConfig<Element, 96, 96> {
  using type = FwdTileConfig<Element, 96, 96, 128, 64, 4, 1, 2>;
};
template <typename Element>
struct FwdDefaultConfig<Element, 128, 128> {
  using type = FwdTileConfig<Element, 128, 128, 128, 64, 4, 2, 2>;
};
template <typename Element>
struct FwdDefaultConfig<Element, 192, 192> {
  using type = FwdTileConfig<Element, 192, 192, 64, 64, 4, 1, 1>;
};
template <typename Element>
struct FwdDefaultConfig<Element, 192, 128> {
  using type = FwdTileConfig<Element, 192, 128, 64, 64, 4, 1, 1>;
};
template <typename Element>
struct FwdDefaultConfig<Element, 256, 256> {
  using type = FwdTileConfig<Element, 256, 256, 64, 64, 4, 1, 1>;
};

}  // namespace jax_flash
