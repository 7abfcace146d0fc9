// Which kernel serves a call: (feature, dtype, head dims, device, pinned variant) -> variant and tile, read off
// kernel_table.h. dispatch.cu asks once per call and the launcher runs exactly the kernel chosen; the nanobind
// module asks the same function for Python (the variants a test can pin, the tiles).
#pragma once

#include <cstdint>
#include <vector>

#include "host/attention.h"
#include "host/kernel_table.h"
#include "kernels/bwd/workspace_layout.h"

namespace jax_flash {

// What a call asks of a kernel.
enum class KernelFeature {
  kFwd,               // forward, dense or packed
  kBwd,               // backward; the dK/dV kernel sums dQ with atomics where the tile allows (head dim <= 128;
                      // the warp-specialized one into blocks at every tile)
  kBwdDeterministic,  // backward, bitwise repeatable: ordered dQ sums (warp-specialized kernel) or the dq kernel
  kPaged,             // paged forward, the rows of a tile split across the warps (prefill, packed queries)
  kPagedDecode,       // paged forward, the keys of a tile split across the warps (decode shapes)
};

const char* kernel_feature_name(KernelFeature feature);
const char* dq_path_name(DqPath dq);  // dq_kernel, atomic_sums, ordered_sums

struct KernelChoice {
  KernelFeature feature;
  KernelVariant variant;  // never kAuto
  bool pinned;            // named by the caller: a launcher that cannot run it fails instead of falling back
  KernelTile tile;        // the head-dim tile and blocks of the main kernel
  DqPath dq;              // backward: how dq is had (workspace_layout.h); kDqKernel for the other features
};

// Fills `choice`, or says why no kernel can serve the call: no compiled tile holds the head dims, the dtype is
// not compiled, or the pinned variant does not exist for this feature and tile, in this build (sm_90a code) or
// on this device. kAuto picks the first of kSm90Ws, kSm90, kSm80 that can serve the call and whose row takes
// calls of `seqlen_k` keys (KernelTile::auto_min_keys; a negative seqlen_k: unknown, only pinned-only rows are
// passed over): on a Hopper the warp-specialized forward, the wgmma backward where its tile exists; kSm80
// elsewhere. A pinned variant never falls back.
Status choose_kernel(KernelFeature feature, DType dtype, int head_dim, int head_dim_v, int64_t seqlen_k,
                     KernelVariant pinned, KernelChoice* choice);

// The variants (never kAuto) that can serve `feature` for these dtype and head dims on the current device.
std::vector<KernelVariant> runnable_variants(KernelFeature feature, DType dtype, int head_dim, int head_dim_v);

// The dq accumulator's blocks layout of the warp-specialized dK/dV kernel for these dtype and head dims, by this
// build alone (not the device: the workspace is sized at trace time); block_m 0 where the build has no such
// kernel for them.
DqAccumBlock sm90_ws_dq_accum_block(DType dtype, int head_dim, int head_dim_v);

inline KernelFeature bwd_feature(bool deterministic) {
  return deterministic ? KernelFeature::kBwdDeterministic : KernelFeature::kBwd;
}

// Decode-like shapes (every sequence's (query, head) pairs of a kv head fit one warp's 16 rows) split the keys of
// a tile across the warps instead of the rows: a static choice from the shapes (the packed layout, whose rows per
// sequence are bounded by the data only, keeps the row split). The grid is the same. The module exports the
// bound (paged_decode_max_rows), so that Python checks a pin against the same kernel.
inline constexpr int kPagedDecodeMaxRows = 16;
inline KernelFeature paged_feature(const PagedFwdParams& params) {
  const bool decode = !params.packed() && int64_t(params.seqlen_q) * params.kv_group <= kPagedDecodeMaxRows;
  return decode ? KernelFeature::kPagedDecode : KernelFeature::kPaged;
}

}  // namespace jax_flash
