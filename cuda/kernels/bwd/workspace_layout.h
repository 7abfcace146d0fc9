// Where the backward pass keeps its scratch inside the XLA workspace. Plain C++ (no CUDA), shared by
// attn_bwd_workspace_bytes() and the launcher, so both always agree on the sizes.
//
//   delta     (B, Hq, Sq) f32: rowsum(dout * out) - dlse, read by the dk/dv and dq kernels.
//   dq_accum  (B, Hq, Sq, head_dim) f32, only when dq is accumulated with atomics (non-deterministic path):
//             the dk/dv kernel adds every key block's dS K into it; a last kernel scales and converts it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace jax_flash {

// The atomic dq path runs only where its extra fp32 accumulator fits the dk/dv kernel's registers.
inline constexpr bool bwd_uses_dq_accum(int head_dim, bool deterministic) {
  return !deterministic && head_dim <= 128;
}

struct BwdWorkspaceLayout {
  size_t delta_offset, dq_accum_offset, total_bytes;
};

inline constexpr size_t bwd_align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

inline constexpr BwdWorkspaceLayout bwd_workspace_layout(int batch, int seqlen_q, int heads_q, int head_dim,
                                                         bool deterministic) {
  const size_t rows = size_t(batch) * size_t(heads_q) * size_t(seqlen_q);
  const size_t delta_bytes = bwd_align256(rows * sizeof(float));
  const size_t accum_bytes =
      bwd_uses_dq_accum(head_dim, deterministic) ? bwd_align256(rows * size_t(head_dim) * sizeof(float)) : 0;
  return BwdWorkspaceLayout{0, delta_bytes, delta_bytes + accum_bytes};
}

}  // namespace jax_flash
