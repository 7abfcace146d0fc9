// Host entry points of the kernel library: params in, launches on `stream`, errors out as values.
// Nothing here includes CuTe or XLA; the FFI layer and any other caller see only this header.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "host/kernel_table.h"
#include "kernels/params.h"

namespace jax_flash {

enum class DType { kFloat16, kBFloat16 };

// Empty message = success. Never exits, never synchronizes, never allocates device memory.
struct Status {
  std::string message;
  bool ok() const { return message.empty(); }
};

// True when this build holds an instantiation for the dtype and head dims.
bool attn_supported(DType dtype, int head_dim, int head_dim_v);

// `variant` in the entry points below: kAuto for the kernel choice's pick (kernel_choice.h), or a pinned kernel
// family, which runs or fails (never falls back).

// Forward: writes out and lse for every row (fully masked rows and packed padding rows: 0 and -inf).
Status attn_fwd(const AttnFwdParams& params, DType dtype, KernelVariant variant, cudaStream_t stream);

// Bytes of scratch the backward needs (a pure function of the dtype, static shapes and this build: enough for
// whichever of its dK/dV kernels the call gets, kernels/bwd/workspace_layout.h). batch: sequences (packed:
// the number of sequences, with the token totals as seqlen_q / seqlen_k).
size_t attn_bwd_workspace_bytes(DType dtype, int batch, bool packed, int seqlen_q, int seqlen_k, int heads_q,
                                int heads_k, int head_dim, int head_dim_v, bool deterministic);

// Backward: writes dq, dk, dv in full (dk/dv summed over the query heads of each kv head).
Status attn_bwd(const AttnBwdParams& params, DType dtype, KernelVariant variant, cudaStream_t stream);

// Paged KV cache forward: writes out and lse for every query row (with num_splits > 1 through the partial
// buffers and a combine; packed rows outside every sequence: 0 and -inf).
Status paged_fwd(const PagedFwdParams& params, DType dtype, KernelVariant variant, cudaStream_t stream);

}  // namespace jax_flash
