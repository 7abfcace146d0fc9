// Declarations of the per-instantiation launchers. Each is defined in a *_launch.cuh that includes the
// kernels, and explicitly instantiated in exactly one generated file under cuda/instantiations/.
// This header stays free of CuTe so dispatch.cu compiles fast.
#pragma once

#include <cuda_runtime.h>

#include "host/attention.h"
#include "host/kernel_choice.h"

namespace jax_flash {

// Element: cutlass::half_t or cutlass::bfloat16_t. kHeadDim / kHeadDimV: the tile's head dims; the
// real head_dim / head_dim_v in params are <= them (loads beyond are predicated off, zero filled).
// `choice` (kernel_choice.h, for this tile) names the kernel to run: the launchers decide nothing themselves.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_fwd(const AttnFwdParams& params, const KernelChoice& choice, cudaStream_t stream);

template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd(const AttnBwdParams& params, const KernelChoice& choice, cudaStream_t stream);

template <typename Element, int kHeadDim, int kHeadDimV>
Status run_paged_fwd(const PagedFwdParams& params, const KernelChoice& choice, cudaStream_t stream);

// Split-KV combine of the paged forward (host/paged_combine.cu): partials -> out, lse.
Status paged_combine(const PagedFwdParams& params, DType dtype, cudaStream_t stream);

// Packed layouts (host/packed_padding.cu): the rows outside every sequence get out 0 / lse -inf, and
// dq, dk, dv 0. The attention kernels write the other rows.
Status fill_fwd_padding(const AttnFwdParams& params, cudaStream_t stream);
Status fill_bwd_padding(const AttnBwdParams& params, cudaStream_t stream);

}  // namespace jax_flash
