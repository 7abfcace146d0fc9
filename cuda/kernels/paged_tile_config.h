// Tile shape of the paged-KV forward kernel, per (Element, kHeadDim, kHeadDimV).
//
// One tile shape for every head dim: 64 rows x 64 keys, 4 warps, two K/V stages. Rows are (query, query head)
// pairs of one kv head (GQA packing, paged_fwd_kernel.cuh); a decode step of a 4-way group is 4 rows, and then
// the kernel splits each 64-key tile among the 4 warps instead (16 keys each). Three stages measured no faster
// than two on H100 (2026-11-22, both splits), so two stages keep 2 x 64 keys of K and V in flight per CTA. 64 x 64 also fits D = 256 (160 KB of shared memory) on sm_80.
// jax_flash/_ffi.py mirrors kBlockM / kBlockN (PAGED_BLOCK_M / PAGED_BLOCK_N) to choose num_splits.
#pragma once

#include "kernels/tile_config.h"

namespace jax_flash {

constexpr int kPagedBlockM = 64;
constexpr int kPagedBlockN = 64;

template <typename Element, int kHeadDim, int kHeadDimV>
struct PagedDefaultConfig {
  using type = FwdTileConfig<Element, kHeadDim, kHeadDimV, kPagedBlockM, kPagedBlockN, /*kNWarps=*/4,
                             /*kStages=*/2, /*kMinBlocksPerSm=*/(kHeadDim <= 128 && kHeadDimV <= 128) ? 2 : 1>;
  static_assert(type::kBlockM == 16 * type::kNWarps, "each warp owns one 16-row mma slice of the tile");
};

}  // namespace jax_flash
