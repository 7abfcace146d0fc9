// Launcher of the dense forward kernel for one (Element, kHeadDim, kHeadDimV) instantiation.
// Included only by the generated instantiation files; host code elsewhere sees launch.h alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "host/device_arch.h"
#include "host/launch.h"
#include "host/smem_opt_in.h"
#include "kernels/fwd/kernel.cuh"
#include "kernels/fwd/tile_config.h"
#include "kernels/fwd/tile_config_sm90.h"

namespace jax_flash {

// Every global load / store moves 16 bytes (8 elements) per thread.
inline bool fwd_operands_aligned(const AttnFwdParams& p) {
  auto ptr_ok = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  auto strides_ok = [](int64_t a, int64_t b, int64_t c) { return a % 8 == 0 && b % 8 == 0 && c % 8 == 0; };
  return ptr_ok(p.q) && ptr_ok(p.k) && ptr_ok(p.v) && ptr_ok(p.out) && p.head_dim % 8 == 0 &&
         p.head_dim_v % 8 == 0 && strides_ok(p.q_batch_stride, p.q_row_stride, p.q_head_stride) &&
         strides_ok(p.k_batch_stride, p.k_row_stride, p.k_head_stride) &&
         strides_ok(p.v_batch_stride, p.v_row_stride, p.v_head_stride) &&
         strides_ok(p.out_batch_stride, p.out_row_stride, p.out_head_stride);
}

template <class Cfg>
Status launch_attn_fwd(const AttnFwdParams& params, cudaStream_t stream) {
  if (params.head_dim > Cfg::kHeadDim || params.head_dim_v > Cfg::kHeadDimV) {
    return Status{"attn_fwd: head dims (" + std::to_string(params.head_dim) + ", " +
                  std::to_string(params.head_dim_v) + ") exceed the tile (" + std::to_string(Cfg::kHeadDim) +
                  ", " + std::to_string(Cfg::kHeadDimV) + ")"};
  }
  if (params.kv_group < 1 || params.heads_q != params.heads_k * params.kv_group) {
    return Status{"attn_fwd: heads_q (" + std::to_string(params.heads_q) + ") must equal heads_k (" +
                  std::to_string(params.heads_k) + ") * kv_group (" + std::to_string(params.kv_group) + ")"};
  }
  if (!fwd_operands_aligned(params)) {
    return Status{"attn_fwd: q/k/v/out need 16-byte aligned base pointers and row/head/batch strides that "
                  "are multiples of 8 elements"};
  }
  if (params.batch == 0 || params.heads_q == 0 || params.seqlen_q == 0) return Status{};
  // Dense: (query blocks, heads, batch). Packed: (the tile bound, heads, 1), see block_info.h.
  const dim3 grid(tile_grid_x(params, params.seqlen_q, Cfg::kBlockM), params.heads_q, params.layout_batch());
  if (params.heads_q > 65535 || params.layout_batch() > 65535) {
    return Status{"attn_fwd: batch and heads must each be <= 65535"};
  }
  auto kernel = params.softcap > 0.f ? &attn_fwd_kernel<Cfg, true> : &attn_fwd_kernel<Cfg, false>;
  constexpr int kSmem = Cfg::kSmemBytes;
  if (Status s = opt_in_dynamic_smem(kernel, kSmem, "attn_fwd"); !s.ok()) return s;
  kernel<<<grid, Cfg::kNThreads, kSmem, stream>>>(params);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return Status{"attn_fwd: launch (head dims " + std::to_string(Cfg::kHeadDim) + "/" +
                  std::to_string(Cfg::kHeadDimV) + ", grid " + std::to_string(grid.x) + "x" +
                  std::to_string(grid.y) + "x" + std::to_string(grid.z) + "): " + cudaGetErrorString(err)};
  }
  return Status{};
}

// The wgmma kernel where this build has sm_90a code, the head dims have a Hopper config and the device is a
// Hopper; the portable mma.sync kernel everywhere else.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_fwd(const AttnFwdParams& params, cudaStream_t stream) {
#ifdef JAX_FLASH_HAS_SM90A
  using Sm90 = Sm90FwdDefaultConfig<Element, kHeadDim, kHeadDimV>;
  if constexpr (Sm90::kAvailable) {
    if (current_device_is_sm90()) return launch_attn_fwd<typename Sm90::type>(params, stream);
  }
#endif
  return launch_attn_fwd<typename FwdDefaultConfig<Element, kHeadDim, kHeadDimV>::type>(params, stream);
}

}  // namespace jax_flash
