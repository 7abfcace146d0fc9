// Scratch size of the backward pass: a pure function of the dtype, static shapes and this build (see
// kernels/bwd/workspace_layout.h).
#include "host/attention.h"
#include "host/kernel_choice.h"
#include "kernels/bwd/workspace_layout.h"

namespace jax_flash {

size_t attn_bwd_workspace_bytes(DType dtype, int batch, bool packed, int seqlen_q, int seqlen_k, int heads_q,
                                int heads_k, int head_dim, int head_dim_v, bool deterministic) {
  (void)seqlen_k;
  (void)heads_k;
  return bwd_workspace_layout(batch, packed, seqlen_q, heads_q, head_dim, deterministic,
                              sm90_ws_dq_accum_block(dtype, head_dim, head_dim_v))
      .total_bytes;
}

}  // namespace jax_flash
