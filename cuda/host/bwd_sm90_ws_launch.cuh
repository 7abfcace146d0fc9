// Launcher of the warp-specialized Hopper dK/dV kernel (kernels/bwd/sm90_ws/) for one (Element, kHeadDim,
// kHeadDimV) instantiation: checks, tensor maps, launch. It runs step 2 of the backward (bwd_launch.cuh):
// the caller has written delta and, on the atomic path, zeroed the dq accumulator (workspace_layout.h), and
// computes dq afterwards: the accumulator converted (kernels/bwd/preprocess.cuh), or, without an accumulator
// (the deterministic backward), the dq kernel (kernels/bwd/dq_kernel.cuh).
//
// Included only by its generated instantiation files (attn_bwd_sm90_ws_*.cu, built for sm_90a alone) and the
// GPU check tool (cuda/tools/bwd_sm90_ws_check.cu); run_attn_bwd calls it when the kernel choice is kSm90Ws
// (kernel_table.h: the default on a Hopper for its tiles).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "host/attention.h"
#include "host/bwd_operands.h"
#include "host/kernel_table.h"
#include "host/smem_opt_in.h"
#include "kernels/bwd/sm90_ws/kernel_bwd_sm90_ws.cuh"
#include "kernels/bwd/sm90_ws/shared_storage.h"
#include "kernels/bwd/sm90_ws/tile_size.h"

namespace jax_flash {

// delta: (layout_batch, Hq, Sq) f32; dq_accum: (layout_batch, Hq, Sq, head_dim) f32, zeroed (workspace_layout.h),
// to which the kernel adds dQ with atomics; nullptr: the kernel's mode without dQ (dK and dV only, bitwise
// repeatable, for the deterministic backward).
template <class Cfg>
Status launch_attn_bwd_dkdv_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                    cudaStream_t stream) {
#ifndef JAX_FLASH_HAS_SM90A
  return Status{"attn_bwd_dkdv_sm90_ws: this build has no sm_90a code"};
#else
  const std::string name = "attn_bwd_dkdv_sm90_ws";
  if (params.head_dim > Cfg::kHeadDim || params.head_dim_v > Cfg::kHeadDimV || params.head_dim % 8 != 0 ||
      params.head_dim_v % 8 != 0 || params.head_dim <= 0 || params.head_dim_v <= 0) {
    return Status{name + ": head dims (" + std::to_string(params.head_dim) + ", " +
                  std::to_string(params.head_dim_v) + ") must be positive multiples of 8 within the tile (" +
                  std::to_string(Cfg::kHeadDim) + ", " + std::to_string(Cfg::kHeadDimV) + ")"};
  }
  if (params.heads_k <= 0 || params.kv_group < 1 || params.heads_q != params.heads_k * params.kv_group) {
    return Status{name + ": heads_q (" + std::to_string(params.heads_q) + ") must equal heads_k (" +
                  std::to_string(params.heads_k) + ") * kv_group (" + std::to_string(params.kv_group) + ")"};
  }
  if (!bwd_operands_aligned(params)) {
    return Status{name + ": q/k/v/out/dout/dq/dk/dv and the workspace need 16-byte aligned base pointers and "
                  "row/head/batch strides that are multiples of 8 elements"};
  }
  if (delta == nullptr) return Status{name + ": delta is required"};
  if (params.batch <= 0 || params.seqlen_k <= 0) return Status{};  // no key: no dK / dV row to write
  if (params.heads_k > 65535 || params.layout_batch() > 65535) {
    return Status{name + ": batch and heads must each be <= 65535"};
  }
  const dim3 grid = Sm90WsBwdScheduler<Cfg>::grid(params, params.heads_k);
  const Sm90WsBwdKernelParams<Cfg> kernel_params{params,
                                                 Sm90WsBwdMainloop<Cfg>::make_params(params, delta, dq_accum)};
  const bool softcap = params.softcap > 0.f;
  auto kernel = dq_accum != nullptr ? (softcap ? &attn_bwd_dkdv_sm90_ws_kernel<Cfg, true, true>
                                               : &attn_bwd_dkdv_sm90_ws_kernel<Cfg, false, true>)
                                    : (softcap ? &attn_bwd_dkdv_sm90_ws_kernel<Cfg, true, false>
                                               : &attn_bwd_dkdv_sm90_ws_kernel<Cfg, false, false>);
  constexpr int kSmem = int(sizeof(Sm90WsBwdSharedStorage<Cfg>));
  static_assert(kSmem <= 227 * 1024, "must fit the sm_90 per-block shared memory limit");
  if (Status s = opt_in_dynamic_smem(kernel, kSmem, name); !s.ok()) return s;
  kernel<<<grid, Cfg::kThreads, kSmem, stream>>>(kernel_params);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return Status{name + ": launch (head dims " + std::to_string(Cfg::kHeadDim) + "/" +
                  std::to_string(Cfg::kHeadDimV) + ", grid " + std::to_string(grid.x) + "x" +
                  std::to_string(grid.y) + "x" + std::to_string(grid.z) + "): " + cudaGetErrorString(err)};
  }
  return Status{};
#endif
}

// The default tile of the head-dim pair (tile_size.h). The caller has checked that the device is a Hopper.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd_dkdv_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                 cudaStream_t stream) {
  using Cfg = Sm90WsBwdDefaultConfig<Element, kHeadDim, kHeadDimV>;
  static_assert(table_has_tile<Cfg>(KernelKind::kBwdDkDv, KernelVariant::kSm90Ws),
                "kernel_table.h must list Sm90WsBwdDefaultConfig's tile");
  return launch_attn_bwd_dkdv_sm90_ws<Cfg>(params, delta, dq_accum, stream);
}

}  // namespace jax_flash
