// Tile sizes, shared-memory layouts and copy/mma atoms of the forward kernel, per (Element, kHeadDim,
// kHeadDimV). `FwdTileConfig` is the generic shape; `FwdDefaultConfig` picks one per head-dim pair.
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

// 16-byte-per-thread copy of a (rows, kCols) tile by kThreads threads, rows spread over threads.
template <typename Element, class CopyOp, int kCols, int kThreads>
using RowTiledCopy = decltype(cute::make_tiled_copy(
    cute::Copy_Atom<CopyOp, Element>{},
    cute::Layout<cute::Shape<cute::Int<kThreads / SmemTileAtom<Element, kCols>::kThreadsPerRow>,
                             cute::Int<SmemTileAtom<Element, kCols>::kThreadsPerRow>>,
                 cute::Stride<cute::Int<SmemTileAtom<Element, kCols>::kThreadsPerRow>, cute::_1>>{},
    cute::Layout<cute::Shape<cute::_1, cute::_8>>{}));

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kNWarps_,
          int kStages_, int kMinBlocksPerSm_>
struct FwdTileConfig {
  using Element = Element_;
  static constexpr bool kWgmma = false;         // mma.sync products (fwd_gemms.h)
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

  // Warps stacked along M: warp w owns query rows [16 w + 16 kNWarps i, ...). N is widened to 16 so the
  // B operand is read with 4-matrix ldmatrix.
  using TiledMma = cute::TiledMMA<Sm80MmaAtom<Element>, cute::Layout<cute::Shape<cute::Int<kNWarps>, cute::_1, cute::_1>>,
                                  cute::Tile<cute::Int<16 * kNWarps>, cute::_16, cute::_16>>;
  using TiledMmaS = TiledMma;  // S = Q K^T and O += P V share one tiled mma

  using SmemLayoutQ = decltype(cute::tile_to_shape(typename SmemTileAtom<Element, kHeadDim>::Layout{},
                                                   cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK =
      decltype(cute::tile_to_shape(typename SmemTileAtom<Element, kHeadDim>::Layout{},
                                   cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  using SmemLayoutV =
      decltype(cute::tile_to_shape(typename SmemTileAtom<Element, kHeadDimV>::Layout{},
                                   cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDimV>, cute::Int<kStages>>{}));
  // V read as the (kHeadDimV, kBlockN) B operand of O += P V: the same storage, transposed view.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutV{}, cute::make_layout(cute::Shape<cute::Int<kHeadDimV>, cute::Int<kBlockN>, cute::Int<kStages>>{},
                                       cute::Stride<cute::Int<kBlockN>, cute::_1, cute::Int<kBlockN * kHeadDimV>>{})));
  // The output tile is staged through shared memory (aliasing Q) for coalesced 16-byte stores.
  using SmemLayoutO = decltype(cute::tile_to_shape(typename SmemTileAtom<Element, kHeadDimV>::Layout{},
                                                   cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimV>>{}));

  static constexpr int kSmemQOElems =
      cute::cosize_v<SmemLayoutQ> > cute::cosize_v<SmemLayoutO> ? cute::cosize_v<SmemLayoutQ> : cute::cosize_v<SmemLayoutO>;
  static constexpr int kSmemKElems = cute::cosize_v<SmemLayoutK>;
  static constexpr int kSmemVElems = cute::cosize_v<SmemLayoutV>;
  static constexpr int kSmemBytes = (kSmemQOElems + kSmemKElems + kSmemVElems) * int(sizeof(Element));
  static_assert(kSmemBytes <= 163 * 1024, "must fit the sm_80 per-block shared memory limit");

  using SmemCopyAtomQK = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomVt = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  using GmemCopyQK = RowTiledCopy<Element, cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, kHeadDim, kNThreads>;
  using GmemCopyV = RowTiledCopy<Element, cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>, kHeadDimV, kNThreads>;
  using GmemCopyO = RowTiledCopy<Element, cute::UniversalCopy<cute::uint128_t>, kHeadDimV, kNThreads>;
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
