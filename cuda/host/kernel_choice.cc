// The kernel choice: kernel_table.h's rows, filtered by what this build compiled (compiled_tiles.h) and by the
// current device.
#include "host/kernel_choice.h"

#include <string>

#include "host/compiled_tiles.h"
#include "host/device_arch.h"

namespace jax_flash {
namespace {

KernelKind kind_of(KernelFeature feature) {
  switch (feature) {
    case KernelFeature::kFwd: return KernelKind::kFwd;
    case KernelFeature::kBwd:
    case KernelFeature::kBwdDeterministic: return KernelKind::kBwdDkDv;
    case KernelFeature::kPaged:
    case KernelFeature::kPagedDecode: return KernelKind::kPaged;
  }
  return KernelKind::kFwd;
}

// The deterministic backward: the warp-specialized dK/dV kernel sums dQ in key-block order (where its tile has the
// shared dQ block: unavailable() says where not), the mma.sync one has
// a mode without dQ that the dq kernel completes (the wgmma dK/dV kernel sums dQ with atomics only); the Hopper
// paged kernel is the split-key decode; the warp-specialized kernels are the forward and the dK/dV.
bool feature_has_variant(KernelFeature feature, KernelVariant variant) {
  switch (variant) {
    case KernelVariant::kSm80: return true;
    case KernelVariant::kSm90:
      return feature == KernelFeature::kFwd || feature == KernelFeature::kBwd ||
             feature == KernelFeature::kPagedDecode;
    case KernelVariant::kSm90Ws:
      return feature == KernelFeature::kFwd || feature == KernelFeature::kBwd ||
             feature == KernelFeature::kBwdDeterministic;
    case KernelVariant::kAuto: return false;
  }
  return false;
}

bool is_hopper_variant(KernelVariant variant) {
  return variant == KernelVariant::kSm90 || variant == KernelVariant::kSm90Ws;
}

// kAuto's preference: the fastest kernel family first.
constexpr KernelVariant kPreference[] = {KernelVariant::kSm90Ws, KernelVariant::kSm90, KernelVariant::kSm80};

// The smallest compiled tile that holds the head dims (loads beyond them are predicated off).
bool compiled_tile(DType dtype, int head_dim, int head_dim_v, int* tile_d, int* tile_dv) {
  bool found = false;
  visit_compiled_dtype(dtype, [&](auto) {
    found = visit_compiled_tiles([&](auto tile) {
      using Tile = decltype(tile);
      if (head_dim > Tile::kD || head_dim_v > Tile::kDv) return false;
      *tile_d = Tile::kD;
      *tile_dv = Tile::kDv;
      return true;
    });
  });
  return found;
}

const char* dtype_name(DType dtype) { return dtype == DType::kBFloat16 ? "bfloat16" : "float16"; }

std::string describe_call(KernelFeature feature, DType dtype, int head_dim, int head_dim_v) {
  return std::string(kernel_feature_name(feature)) + " (" + dtype_name(dtype) + ", head_dim " +
         std::to_string(head_dim) + ", head_dim_v " + std::to_string(head_dim_v) + ")";
}

// Why `variant` cannot run the feature for these head dims on this tile here; empty when it can.
std::string unavailable(KernelFeature feature, KernelVariant variant, int head_dim, int head_dim_v, int tile_d,
                        int tile_dv) {
  if (variant == KernelVariant::kAuto || int(variant) < 0 || int(variant) >= kNumKernelVariants) {
    return "not a kernel variant";
  }
  if (!feature_has_variant(feature, variant)) return "this feature has no such kernel";
  if (find_kernel_tile(kind_of(feature), variant, tile_d, tile_dv) == nullptr) {
    return "no such kernel for the head-dim tile " + std::to_string(tile_d) + "x" + std::to_string(tile_dv);
  }
  // kernels/bwd/sm90_ws/tile_size.h: the swapped layout (tiles up to 128) is written for Dv = D; the split
  // layout above it (tile_size_split.h) has a tile for Dv = 128 at D192.
  if (kind_of(feature) == KernelKind::kBwdDkDv && variant == KernelVariant::kSm90Ws && head_dim != head_dim_v &&
      tile_d <= 128) {
    return "the warp-specialized dK/dV kernel needs head_dim == head_dim_v up to head dim 128";
  }
  if (is_hopper_variant(variant)) {
    if (!kBuildHasSm90a) return "this build has no sm_90a code (JAX_FLASH_ARCHS)";
    const int major = current_device_major();
    if (major == 0) return "no CUDA device is visible";
    if (major != 9) return "the current device has compute capability " + std::to_string(major) + ".x, not 9.0";
  }
  return {};
}

}  // namespace

const char* kernel_feature_name(KernelFeature feature) {
  switch (feature) {
    case KernelFeature::kFwd: return "fwd";
    case KernelFeature::kBwd: return "bwd";
    case KernelFeature::kBwdDeterministic: return "bwd_deterministic";
    case KernelFeature::kPaged: return "paged";
    case KernelFeature::kPagedDecode: return "paged_decode";
  }
  return "unknown";
}

const char* dq_path_name(DqPath dq) {
  switch (dq) {
    case DqPath::kDqKernel: return "dq_kernel";
    case DqPath::kAtomicSums: return "atomic_sums";
    case DqPath::kOrderedSums: return "ordered_sums";
  }
  return "unknown";
}

bool attn_supported(DType dtype, int head_dim, int head_dim_v) {
  int tile_d = 0, tile_dv = 0;
  return compiled_tile(dtype, head_dim, head_dim_v, &tile_d, &tile_dv);
}

Status choose_kernel(KernelFeature feature, DType dtype, int head_dim, int head_dim_v, int64_t seqlen_k,
                     KernelVariant pinned, KernelChoice* choice) {
  int tile_d = 0, tile_dv = 0;
  if (!compiled_tile(dtype, head_dim, head_dim_v, &tile_d, &tile_dv)) {
    return {"jax_flash: this build has no kernel for " + describe_call(feature, dtype, head_dim, head_dim_v)};
  }
  KernelVariant variant = pinned;
  if (pinned == KernelVariant::kAuto) {
    // kSm80 serves every compiled tile, so the loop always ends on a kernel that can run.
    for (KernelVariant candidate : kPreference) {
      variant = candidate;
      if (!unavailable(feature, candidate, head_dim, head_dim_v, tile_d, tile_dv).empty()) continue;
      const int min_keys = find_kernel_tile(kind_of(feature), candidate, tile_d, tile_dv)->auto_min_keys;
      if (min_keys == kPinnedOnly || (seqlen_k >= 0 && seqlen_k < min_keys)) continue;
      break;
    }
  }
  if (std::string why = unavailable(feature, variant, head_dim, head_dim_v, tile_d, tile_dv); !why.empty()) {
    return {std::string("jax_flash: kernel variant ") + kernel_variant_name(variant) + " cannot serve " +
            describe_call(feature, dtype, head_dim, head_dim_v) + ": " + why};
  }
  const KernelTile& tile = *find_kernel_tile(kind_of(feature), variant, tile_d, tile_dv);
  DqPath dq = DqPath::kDqKernel;
  // The warp-specialized kernel sums into blocks at every tile; the others into rows, up to head dim 128.
  if (feature == KernelFeature::kBwd &&
      (variant == KernelVariant::kSm90Ws || bwd_atomic_dq_sums(tile.tile_d, /*deterministic=*/false))) {
    dq = DqPath::kAtomicSums;
  } else if (feature == KernelFeature::kBwdDeterministic && variant == KernelVariant::kSm90Ws) {
    dq = DqPath::kOrderedSums;
  }
  *choice = KernelChoice{feature, variant, pinned != KernelVariant::kAuto, tile, dq};
  return {};
}

DqAccumBlock sm90_ws_dq_accum_block(DType dtype, int head_dim, int head_dim_v) {
  int tile_d = 0, tile_dv = 0;
  if (!kBuildHasSm90a || !compiled_tile(dtype, head_dim, head_dim_v, &tile_d, &tile_dv) ||
      (head_dim != head_dim_v && tile_d <= 128)) {  // as unavailable(): no such kernel for the call
    return {};
  }
  const KernelTile* row = find_kernel_tile(KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, tile_d, tile_dv);
  return row != nullptr ? DqAccumBlock{row->block_m, row->tile_d} : DqAccumBlock{};
}

std::vector<KernelVariant> runnable_variants(KernelFeature feature, DType dtype, int head_dim, int head_dim_v) {
  std::vector<KernelVariant> variants;
  for (KernelVariant variant : {KernelVariant::kSm80, KernelVariant::kSm90, KernelVariant::kSm90Ws}) {
    KernelChoice choice;
    if (choose_kernel(feature, dtype, head_dim, head_dim_v, -1, variant, &choice).ok()) variants.push_back(variant);
  }
  return variants;
}

}  // namespace jax_flash
