// Tile shape of the dense forward kernel on Hopper (sm_90a), variant sm90: the products S = Q K^T and O += P V
// run as warpgroup MMAs (wgmma) on the Hopper operand tiles of tiles_sm90.h. Everything else (cp.async
// pipeline, masks, online softmax, epilogue) is the SM80 kernel's: fwd/kernel.cuh takes either config and
// fwd/products.h picks the products from `MmaKind`.
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "kernels/common/mma_kind.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/fwd/shared_storage.h"
#include "kernels/fwd/tiles_sm90.h"

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

  using Tiles = Sm90FwdTiles<Element, kBlockM, kBlockN, kHeadDim, kHeadDimV, kStages>;
  using TiledMmaS = typename Tiles::TiledMmaQK;  // S = Q K^T
  using TiledMma = typename Tiles::TiledMmaPV;   // O += P V
  using SmemLayoutQ = typename Tiles::SmemLayoutQ;
  using SmemLayoutK = typename Tiles::SmemLayoutK;
  using SmemLayoutV = typename Tiles::SmemLayoutV;
  using SmemLayoutVt = typename Tiles::SmemLayoutVt;
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
