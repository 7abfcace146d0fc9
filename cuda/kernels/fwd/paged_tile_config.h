// Tile shapes of the paged-KV forward kernel, per (Element, kHeadDim, kHeadDimV).
//
// PagedDefaultConfig, the cp.async kernels (every GPU, every query mode): 64 rows x 64 keys, 4 warps, two K/V
// stages, for every head dim. Rows are (query, query head) pairs of one kv head (GQA packing,
// paged_rows.h); a decode step of a 4-way group is 4 rows, and then the kernel splits each 64-key tile
// among the 4 warps instead (16 keys each). Three stages measured no faster than two on H100 (2026-11-22, both
// splits), so two stages keep 2 x 64 keys of K and V in flight per CTA. 64 x 64 also fits D = 256 (160 KB of
// shared memory) on sm_80.
// PagedDecodeSm90Config, the Hopper decode with TMA loads: below.
// cuda/host/kernel_table.h lists these tiles (the launcher static_asserts that they agree); Python chooses
// num_splits by the cp.async tile the module exports (the Hopper decode's 128-key tiles then count as two
// blocks: a split still gets at least 2 of its tiles).
#pragma once

#include "kernels/fwd/tile_config.h"

namespace jax_flash {

constexpr int kPagedBlockM = 64;
constexpr int kPagedBlockN = 64;

template <typename Element, int kHeadDim, int kHeadDimV>
struct PagedDefaultConfig {
  using type = FwdTileConfig<Element, kHeadDim, kHeadDimV, kPagedBlockM, kPagedBlockN, /*kNWarps=*/4,
                             /*kStages=*/2, /*kMinBlocksPerSm=*/(kHeadDim <= 128 && kHeadDimV <= 128) ? 2 : 1>;
  static_assert(type::kBlockM == 16 * type::kNWarps, "each warp owns one 16-row mma slice of the tile");
};

// Hopper decode with the TMA load path (paged_kv_tma.h; the keys of a tile split across the warps): 128-key
// tiles, 32 keys per warp, one K and one V buffer, the shape of cuDNN's decode kernel on the same problem
// (16 x 128 x 128, four warps along the keys; Nsight Compute, H200, 2026-11-22). Each warp reissues its K
// rows as soon as its QK^T is done and its V rows after PV, so a buffer is busy only while it is read, and a
// warp's chain of dependent steps covers 32 keys instead of 16. Head dims above 128 keep the 64-key tiles
// and two stages (the 32-key slices would not fit the registers with a D = 256 output).
template <typename Element, int kHeadDim, int kHeadDimV>
struct PagedDecodeSm90Config {
  static constexpr bool kWide = kHeadDim <= 128 && kHeadDimV <= 128;
  using type = FwdTileConfig<Element, kHeadDim, kHeadDimV, kPagedBlockM, kWide ? 2 * kPagedBlockN : kPagedBlockN,
                             /*kNWarps=*/4, /*kStages=*/kWide ? 1 : 2,
                             /*kMinBlocksPerSm=*/kWide ? 2 : 1>;
  // TMA boxes are 64 columns of the 128-byte swizzle atom.
  static constexpr bool kAvailable = kHeadDim % 64 == 0 && kHeadDimV % 64 == 0;
};

}  // namespace jax_flash
