// The kernels jax_flash has and their tiles: the one list the host chooses from (kernel_choice.cc) and the
// nanobind module exports to Python. Plain data, no CuTe: each launcher (*_launch.cuh) static_asserts that the
// tile configs it instantiates (kernels/*/tile_config*.h) have these tiles, so the two cannot drift apart.
#pragma once

#include <cstdint>

namespace jax_flash {

// A kernel family. The values are the FFI attribute `variant`; jax_flash/_ffi.py KERNEL_VARIANTS lists the
// names in this order (kernel_variant_name below), and the module exports them.
enum class KernelVariant : int32_t {
  kAuto = 0,  // the table's choice for the device (kernel_choice.cc)
  kSm80 = 1,  // mma.sync products and cp.async loads: every GPU of the build
  kSm90 = 2,  // Hopper (sm_90a builds on a compute capability 9.0 device): wgmma forward, wgmma dK/dV with
              // atomic dQ, TMA loads for the paged decode
  kSm90Ws = 3,  // Hopper, warp-specialized: TMA producer warpgroup, two consumer warpgroups (forward; dK/dV
                // with dQ sums, atomic or, deterministic, in key-block order)
};
inline constexpr int kNumKernelVariants = 4;

inline const char* kernel_variant_name(KernelVariant variant) {
  switch (variant) {
    case KernelVariant::kAuto: return "auto";
    case KernelVariant::kSm80: return "sm80";
    case KernelVariant::kSm90: return "sm90";
    case KernelVariant::kSm90Ws: return "sm90_ws";
  }
  return "unknown";
}

// The kernels a tile config is written for: forward (dense and packed), the backward's dK/dV kernel (it also
// sums dQ with atomics, or leaves dQ to the dq kernel), the paged-KV forward.
enum class KernelKind { kFwd, kBwdDkDv, kPaged };

// auto_min_keys: the automatic choice (KernelVariant::kAuto) takes the row only for calls with at least this
// many keys (seqlen_k, a static shape), else it goes on to the next family; kPinnedOnly: never, the row runs
// only when its variant is pinned. A pinned variant ignores the field.
inline constexpr int kPinnedOnly = 0x7fffffff;

struct KernelTile {
  KernelKind kind;
  KernelVariant variant;
  int tile_d, tile_dv;   // head-dim tile: serves head_dim <= tile_d, head_dim_v <= tile_dv
  int block_m, block_n;  // kFwd / kPaged: query rows per CTA, keys per mainloop step;
                         // kBwdDkDv: queries per inner step, keys per CTA
  int auto_min_keys = 0;
};

// The paged kernels' cp.async tile for every head dim: rows are (query, query head) pairs of one kv head, keys
// are one mainloop step. Python sizes its split plan by it (exported as paged_block_m / paged_block_n).
inline constexpr int kPagedTileRows = 64;
inline constexpr int kPagedTileKeys = 64;

// Every compiled-for kernel tile. A build holds the rows of its head-dim tiles (JAX_FLASH_HEAD_DIMS), and the
// kSm90 / kSm90Ws rows only when it has sm_90a code (JAX_FLASH_ARCHS).
inline constexpr KernelTile kKernelTable[] = {
    // Forward, mma.sync (kernels/fwd/tile_config.h FwdDefaultConfig).
    {KernelKind::kFwd, KernelVariant::kSm80, 64, 64, 128, 128},
    {KernelKind::kFwd, KernelVariant::kSm80, 96, 96, 128, 64},
    {KernelKind::kFwd, KernelVariant::kSm80, 128, 128, 128, 64},
    {KernelKind::kFwd, KernelVariant::kSm80, 192, 128, 64, 64},
    {KernelKind::kFwd, KernelVariant::kSm80, 192, 192, 64, 64},
    {KernelKind::kFwd, KernelVariant::kSm80, 256, 256, 64, 64},
    // Forward, wgmma (kernels/fwd/tile_config_sm90.h Sm90FwdDefaultConfig).
    {KernelKind::kFwd, KernelVariant::kSm90, 128, 128, 128, 128},
    // Forward, warp-specialized (kernels/fwd/sm90_ws/tile_size.h Sm90WsFwdDefaultConfig). D64 up to 1024 keys:
    // the mma.sync kernel is faster there (H100, B16 H32 S1k bf16: 328 vs 294 TFLOP/s at this 192 x 128 tile,
    // 267 at the 128 x 192 one before it; BENCHMARKS.md session 21): a CTA runs only 8 steps.
    {KernelKind::kFwd, KernelVariant::kSm90Ws, 64, 64, 192, 128, 1025},
    {KernelKind::kFwd, KernelVariant::kSm90Ws, 96, 96, 128, 128},
    {KernelKind::kFwd, KernelVariant::kSm90Ws, 128, 128, 128, 128},
    {KernelKind::kFwd, KernelVariant::kSm90Ws, 192, 128, 128, 128},
    {KernelKind::kFwd, KernelVariant::kSm90Ws, 192, 192, 128, 96},
    {KernelKind::kFwd, KernelVariant::kSm90Ws, 256, 256, 128, 64},
    // dK/dV, mma.sync (kernels/bwd/tile_config.h BwdDefaultConfig::DkDv).
    {KernelKind::kBwdDkDv, KernelVariant::kSm80, 64, 64, 64, 128},
    {KernelKind::kBwdDkDv, KernelVariant::kSm80, 96, 96, 64, 128},
    {KernelKind::kBwdDkDv, KernelVariant::kSm80, 128, 128, 64, 128},
    {KernelKind::kBwdDkDv, KernelVariant::kSm80, 192, 128, 64, 64},
    {KernelKind::kBwdDkDv, KernelVariant::kSm80, 192, 192, 64, 64},
    {KernelKind::kBwdDkDv, KernelVariant::kSm80, 256, 256, 64, 64},
    // dK/dV with atomic dQ, wgmma (kernels/bwd/tile_config_sm90.h Sm90BwdDefaultConfig::DkDv).
    {KernelKind::kBwdDkDv, KernelVariant::kSm90, 128, 128, 64, 128},
    // dK/dV with atomic or ordered dQ sums, warp-specialized (kernels/bwd/sm90_ws/tile_size.h
    // Sm90WsBwdDefaultConfig): the swapped layout, head_dim == head_dim_v only (kernel_choice.cc); above 128 the
    // split layout (tile_size_split.h; README.md there), with dQ summed into blocks at every tile, in key-block
    // order when deterministic (dq_accum_blocks.h).
    {KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, 64, 64, 128, 128},
    {KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, 96, 96, 64, 128},
    {KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, 128, 128, 64, 128},
    {KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, 192, 128, 64, 64},
    {KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, 192, 192, 64, 64},
    {KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, 256, 256, 64, 64},
    // Paged, cp.async (kernels/fwd/paged_tile_config.h PagedDefaultConfig).
    {KernelKind::kPaged, KernelVariant::kSm80, 64, 64, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm80, 96, 96, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm80, 128, 128, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm80, 192, 128, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm80, 192, 192, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm80, 256, 256, kPagedTileRows, kPagedTileKeys},
    // Paged decode with TMA loads (PagedDecodeSm90Config): head dims that are multiples of 64; 128-key tiles
    // up to head dim 128.
    {KernelKind::kPaged, KernelVariant::kSm90, 64, 64, kPagedTileRows, 2 * kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm90, 128, 128, kPagedTileRows, 2 * kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm90, 192, 128, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm90, 192, 192, kPagedTileRows, kPagedTileKeys},
    {KernelKind::kPaged, KernelVariant::kSm90, 256, 256, kPagedTileRows, kPagedTileKeys},
};

// The row of (kind, variant, head-dim tile), or nullptr when that kernel does not exist.
constexpr const KernelTile* find_kernel_tile(KernelKind kind, KernelVariant variant, int tile_d, int tile_dv) {
  for (const KernelTile& row : kKernelTable) {
    if (row.kind == kind && row.variant == variant && row.tile_d == tile_d && row.tile_dv == tile_dv) return &row;
  }
  return nullptr;
}

// For the launchers' static_asserts: the row exists and has the config's blocks.
template <class Cfg>
constexpr bool table_has_tile(KernelKind kind, KernelVariant variant) {
  const KernelTile* row = find_kernel_tile(kind, variant, Cfg::kHeadDim, Cfg::kHeadDimV);
  return row != nullptr && row->block_m == Cfg::kBlockM && row->block_n == Cfg::kBlockN;
}

}  // namespace jax_flash
