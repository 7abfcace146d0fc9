// Scratch size of the backward pass: a pure function of static shapes (see kernels/bwd/workspace_layout.h).
#include "host/attention.h"
#include "kernels/bwd/workspace_layout.h"

namespace jax_flash {

size_t attn_bwd_workspace_bytes(int batch, int seqlen_q, int seqlen_k, int heads_q, int heads_k, int head_dim,
                                int head_dim_v, bool deterministic) {
  (void)seqlen_k;
  (void)heads_k;
  (void)head_dim_v;
  return bwd_workspace_layout(batch, seqlen_q, heads_q, head_dim, deterministic).total_bytes;
}

}  // namespace jax_flash
