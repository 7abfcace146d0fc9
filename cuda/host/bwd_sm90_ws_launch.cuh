// Launchers of the warp-specialized Hopper dK/dV kernel (kernels/bwd/sm90_ws/) for one (Element, kHeadDim,
// kHeadDimV) instantiation: steps 2 and 3 of the backward (bwd_launch.cuh) after the caller has written delta.
// The kernel sums dQ into the workspace's blocks layout (workspace_layout.h), which only this file zeroes and
// converts: as the adds come (run_attn_bwd_sm90_ws, DqPath::kAtomicSums) or in key-block order, bitwise
// repeatable (run_attn_bwd_sm90_ws_ordered, kOrderedSums: the deterministic backward). Its mode without dQ
// (kDqKernel, a dq kernel after it) only the check tool runs, to time the two deterministic ways.
//
// Included only by its generated instantiation files (attn_bwd_sm90_ws*_*.cu, built for sm_90a alone) and the
// GPU check tool (cuda/tools/bwd_sm90_ws_check.cu); run_attn_bwd calls them when the kernel choice is kSm90Ws
// (kernel_table.h: the default on a Hopper for every tile it has).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "host/attention.h"
#include "host/bwd_operands.h"
#include "host/kernel_table.h"
#include "host/smem_opt_in.h"
#include "kernels/bwd/sm90_ws/dq_accum_blocks.h"
#include "kernels/bwd/sm90_ws/kernel_bwd_sm90_ws.cuh"
#include "kernels/bwd/sm90_ws/tile_size.h"

namespace jax_flash {

#ifdef JAX_FLASH_HAS_SM90A
namespace sm90_ws_launch_detail {

// The dK/dV kernel's launch, after launch_attn_bwd_dkdv_sm90_ws's checks.
template <class Cfg, DqPath kDq>
Status launch_dkdv_kernel(const AttnBwdParams& params, const float* delta, float* dq_accum, int* dq_semaphores,
                          cudaStream_t stream, const std::string& name) {
  constexpr bool kSums = kDq != DqPath::kDqKernel, kOrdered = kDq == DqPath::kOrderedSums;
  const dim3 grid = Sm90WsBwdScheduler<Cfg, kOrdered>::grid(params, params.heads_k);
  const Sm90WsBwdKernelParams<Cfg> kernel_params{
      params, Sm90WsBwdMainloopOf<Cfg>::make_params(params, delta, dq_accum, dq_semaphores)};
  const auto kernel = params.softcap > 0.f ? &attn_bwd_dkdv_sm90_ws_kernel<Cfg, true, kSums, kOrdered>
                                           : &attn_bwd_dkdv_sm90_ws_kernel<Cfg, false, kSums, kOrdered>;
  constexpr int kSmem = int(sizeof(Sm90WsBwdStorageOf<Cfg>));
  // The limit counts static shared memory too: the packed scheduler's tile coordinate (sched/packed_tiles.h),
  // which the dynamic region's 1024-byte alignment pads to 1 KB (ptxas: "1024 bytes smem").
  static_assert(kSmem + 1024 <= 227 * 1024, "must fit the sm_90 per-block shared memory limit");
  if (Status s = opt_in_dynamic_smem(kernel, kSmem, name); !s.ok()) return s;
  kernel<<<grid, Cfg::kThreads, kSmem, stream>>>(kernel_params);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return Status{name + ": launch (head dims " + std::to_string(Cfg::kHeadDim) + "/" +
                  std::to_string(Cfg::kHeadDimV) + ", grid " + std::to_string(grid.x) + "x" +
                  std::to_string(grid.y) + "x" + std::to_string(grid.z) + "): " + cudaGetErrorString(err)};
  }
  return Status{};
}

}  // namespace sm90_ws_launch_detail

#endif

// delta: (layout_batch, Hq, Sq) f32; dq_accum: the accumulator's blocks of Cfg (workspace_layout.h), zeroed,
// to which the kernel adds dQ, and for kOrderedSums dq_semaphores (one zeroed int per block); kDqKernel: dK and
// dV only (both nullptr).
template <class Cfg, DqPath kDq>
Status launch_attn_bwd_dkdv_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                    int* dq_semaphores, cudaStream_t stream) {
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
  if ((kDq != DqPath::kDqKernel && dq_accum == nullptr) || (kDq == DqPath::kOrderedSums && dq_semaphores == nullptr)) {
    return Status{name + ": dQ sums need the accumulator (ordered ones also its semaphores)"};
  }
  if (params.batch <= 0 || params.seqlen_k <= 0) return Status{};  // no key: no dK / dV row to write
  if (params.heads_k > 65535 || params.layout_batch() > 65535) {
    return Status{name + ": batch and heads must each be <= 65535"};
  }
  return sm90_ws_launch_detail::launch_dkdv_kernel<Cfg, kDq>(params, delta, dq_accum, dq_semaphores, stream, name);
#endif
}

// dq = scale x the blocks the kernel summed (`copies` of them: the ordered sums' chains), for every query row of
// every sequence (packed padding rows are the padding fill's).
template <class Cfg>
Status launch_attn_bwd_dq_blocks_convert(const AttnBwdParams& params, const float* dq_accum, int copies,
                                         cudaStream_t stream) {
#ifndef JAX_FLASH_HAS_SM90A
  return Status{"attn_bwd_dq_blocks_convert: this build has no sm_90a code"};
#else
  const dim3 grid = Sm90WsDqConvertScheduler<Cfg>::grid(params, params.heads_q);
  attn_bwd_dq_blocks_convert_kernel<Cfg><<<grid, Cfg::kMmaThreads, 0, stream>>>(params, dq_accum, copies);
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return Status{};
  return Status{std::string("attn_bwd_dq_blocks_convert: launch: ") + cudaGetErrorString(err)};
#endif
}

// Steps 2 and 3 of the backward with tile config Cfg and dQ sums (kAtomicSums or kOrderedSums), after delta
// (whose kernel zeroed the accumulator's blocks and semaphores, bwd_launch.cuh): the blocks layout is the
// kernel's own, summed into by the dK/dV kernel, converted.
template <class Cfg, DqPath kDq>
Status launch_attn_bwd_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum,
                               int* dq_semaphores, cudaStream_t stream) {
  static_assert(kDq != DqPath::kDqKernel, "the dq kernel's chain is run_attn_bwd's");
  const int copies = kDq == DqPath::kOrderedSums ? Cfg::kOrderedDqCopies : 1;
  const bool has_queries = params.batch > 0 && params.heads_q > 0 && params.seqlen_q > 0;
  if (params.seqlen_k > 0) {
    const Status s = launch_attn_bwd_dkdv_sm90_ws<Cfg, kDq>(params, delta, dq_accum, dq_semaphores, stream);
    if (!s.ok()) return s;
  }
  if (has_queries) return launch_attn_bwd_dq_blocks_convert<Cfg>(params, dq_accum, copies, stream);
  return Status{};
}

// The default tile of the head-dim pair (tile_size.h), held to its kernel_table.h row; run_attn_bwd has written
// delta and checked that the device is a Hopper. dq_accum: the workspace's accumulator (the blocks layout of this
// tile); dq_semaphores: the workspace's, one int per block, for kOrderedSums.
template <typename Element, int kHeadDim, int kHeadDimV, DqPath kDq>
Status run_attn_bwd_sm90_ws_default_tile(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                         int* dq_semaphores, cudaStream_t stream) {
  using Cfg = Sm90WsBwdDefaultConfig<Element, kHeadDim, kHeadDimV>;
  static_assert(table_has_tile<Cfg>(KernelKind::kBwdDkDv, KernelVariant::kSm90Ws),
                "kernel_table.h must list Sm90WsBwdDefaultConfig's tile");
  return launch_attn_bwd_sm90_ws<Cfg, kDq>(params, delta, dq_accum, dq_semaphores, stream);
}

// The generated instantiations' entries: dQ summed as the adds come (the default backward), or in key-block
// order (the deterministic one).
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum, cudaStream_t stream) {
  return run_attn_bwd_sm90_ws_default_tile<Element, kHeadDim, kHeadDimV, DqPath::kAtomicSums>(
      params, delta, dq_accum, nullptr, stream);
}
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd_sm90_ws_ordered(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                    int* dq_semaphores, cudaStream_t stream) {
  return run_attn_bwd_sm90_ws_default_tile<Element, kHeadDim, kHeadDimV, DqPath::kOrderedSums>(
      params, delta, dq_accum, dq_semaphores, stream);
}

}  // namespace jax_flash
