// run_attn_bwd: the backward pass of one (Element, kHeadDim, kHeadDimV) instantiation, as up to four
// launches on one stream (no host synchronization, no allocation):
//   1. delta = rowsum(dout * out) - dlse        -> workspace (the same grid zeroes the dq accumulator)
//   2. dk, dv (and, where the dK/dV kernel sums dq, its partial sums -> workspace accumulator)
//   3. dq: its own deterministic kernel, or the accumulator scaled and converted
// How dq is had is the kernel choice's (KernelChoice::dq, kernel_choice.h): with deterministic == false the dK/dV
// kernel adds dQ into the accumulator as it goes (the mma.sync and wgmma kernels into rows with atomics, up to a
// head-dim tile of 128; the warp-specialized one into blocks, with bulk reduce-adds or, at D256, float4 atomics;
// kernels/bwd/workspace_layout.h), saving the dq kernel's recomputation of S and dP at the price of run-to-run
// rounding differences in dq. The deterministic backward on the warp-specialized kernel sums into blocks in
// key-block order (bitwise repeatable; not at D256); elsewhere the mma.sync dK/dV kernel runs without dQ, then
// the dq kernel.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "host/bwd_operands.h"
#include "host/compiled_tiles.h"
#include "host/kernel_table.h"
#include "host/launch.h"
#include "host/smem_opt_in.h"
#include "kernels/bwd/dkdv_kernel.cuh"
#include "kernels/bwd/dq_kernel.cuh"
#include "kernels/bwd/preprocess.cuh"
#include "kernels/bwd/tile_config.h"
#include "kernels/bwd/tile_config_sm90.h"
#include "kernels/bwd/workspace_layout.h"
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

// The warp-specialized Hopper dK/dV kernel (bwd_sm90_ws_launch.cuh). Its instantiations are generated files of
// their own (attn_bwd_sm90_ws_*.cu and attn_bwd_sm90_ws_ordered_*.cu), compiled for sm_90a only, for the
// head-dim tiles kernel_table.h lists. Steps 2 and 3 with it: dK/dV, dQ summed into the accumulator's blocks
// (as the adds come, or in key-block order behind the semaphores) and converted.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum, cudaStream_t stream);
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd_sm90_ws_ordered(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                    int* dq_semaphores, cudaStream_t stream);

namespace bwd_launch_detail {

inline Status error(const std::string& what) { return {"jax_flash attention backward: " + what}; }

inline Status check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return {};
  return error(std::string(kernel) + " launch failed: " + cudaGetErrorString(err));
}

template <class Kernel>
Status allow_smem(Kernel kernel, int smem_bytes, const char* name) {
  Status s = opt_in_dynamic_smem(kernel, smem_bytes, name);
  return s.ok() ? s : error(s.message);
}

template <class Cfg, bool kAtomicDq>
Status launch_dkdv(const AttnBwdParams& params, const float* delta, float* dq_accum, cudaStream_t stream) {
  auto kernel = bwd_dkdv_kernel<Cfg, kAtomicDq>;
  if (Status s = allow_smem(kernel, Cfg::kSmemBytes, "bwd_dkdv_kernel"); !s.ok()) return s;
  const dim3 grid(tile_grid_x(params, params.seqlen_k, Cfg::kBlockN), params.heads_k, params.layout_batch());
  kernel<<<grid, Cfg::kNThreads, Cfg::kSmemBytes, stream>>>(params, delta, dq_accum);
  return check_launch("bwd_dkdv_kernel");
}

template <class Cfg>
Status launch_dkdv_sm90(const AttnBwdParams& params, const float* delta, float* dq_accum, cudaStream_t stream) {
  auto kernel = bwd_dkdv_kernel_sm90<Cfg>;
  if (Status s = allow_smem(kernel, Cfg::kSmemBytes, "bwd_dkdv_kernel_sm90"); !s.ok()) return s;
  const dim3 grid(tile_grid_x(params, params.seqlen_k, Cfg::kBlockN), params.heads_k, params.layout_batch());
  kernel<<<grid, Cfg::kNThreads, Cfg::kSmemBytes, stream>>>(params, delta, dq_accum);
  return check_launch("bwd_dkdv_kernel_sm90");
}

template <class Cfg>
Status launch_dq(const AttnBwdParams& params, const float* delta, cudaStream_t stream) {
  auto kernel = bwd_dq_kernel<Cfg>;
  if (Status s = allow_smem(kernel, Cfg::kSmemBytes, "bwd_dq_kernel"); !s.ok()) return s;
  const dim3 grid(tile_grid_x(params, params.seqlen_q, Cfg::kBlockM), params.heads_q, params.layout_batch());
  kernel<<<grid, Cfg::kNThreads, Cfg::kSmemBytes, stream>>>(params, delta);
  return check_launch("bwd_dq_kernel");
}

// Grid for a grid-stride elementwise kernel over `items` items of one thread (or warp) each.
inline unsigned elementwise_blocks(int64_t items, int items_per_block) {
  return unsigned(std::min<int64_t>((items + items_per_block - 1) / items_per_block, int64_t(1) << 20));
}

// bwd_delta_kernel over every query row, zeroing zero_bytes (a multiple of 16) from `zero` as well; nothing
// without query rows (then nothing adds into the accumulator either).
template <typename Element, int kHeadDimV>
Status launch_delta(const AttnBwdParams& params, float* delta, void* zero, size_t zero_bytes, cudaStream_t stream) {
  constexpr int kThreadsPerRow = bwd_delta_threads_per_row(kHeadDimV);
  const int64_t rows = int64_t(params.layout_batch()) * params.heads_q * params.seqlen_q;
  if (rows == 0) return {};
  bwd_delta_kernel<Element, kThreadsPerRow>
      <<<elementwise_blocks(rows, kBwdElementwiseThreads / kThreadsPerRow), kBwdElementwiseThreads, 0, stream>>>(
          params, delta, static_cast<float4*>(zero), int64_t(zero_bytes / sizeof(float4)));
  return check_launch("bwd_delta_kernel");
}

// dK, dV and the atomic dQ sums with the wgmma kernel, where this build has sm_90a code and the head dims a
// Hopper config.
template <class Sm90>
Status launch_dkdv_sm90_atomic_dq(const AttnBwdParams& params, const float* delta, float* dq_accum,
                                  cudaStream_t stream) {
  if constexpr (kBuildHasSm90a && Sm90::kAvailable) {
    static_assert(table_has_tile<typename Sm90::DkDv>(KernelKind::kBwdDkDv, KernelVariant::kSm90),
                  "kernel_table.h must list Sm90BwdDefaultConfig's dK/dV tile");
    return launch_dkdv_sm90<typename Sm90::DkDv>(params, delta, dq_accum, stream);
  } else {
    return error("this build has no sm90 dK/dV kernel for these head dims");
  }
}

// The warp-specialized kernel's steps 2 and 3 (run_attn_bwd_sm90_ws*), where this build has its tile; ordered
// sums with dq_semaphores.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_sm90_ws(const AttnBwdParams& params, const float* delta, float* dq_accum, int* dq_semaphores,
                   cudaStream_t stream) {
  if constexpr (kBuildHasSm90a &&
                find_kernel_tile(KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, kHeadDim, kHeadDimV) != nullptr) {
    if (dq_semaphores != nullptr) {
      return run_attn_bwd_sm90_ws_ordered<Element, kHeadDim, kHeadDimV>(params, delta, dq_accum, dq_semaphores,
                                                                         stream);
    }
    return run_attn_bwd_sm90_ws<Element, kHeadDim, kHeadDimV>(params, delta, dq_accum, stream);
  } else {
    return error("this build has no warp-specialized dK/dV kernel for these head dims");
  }
}

// dK and dV, and with atomic dQ sums (choice.dq) the dQ sums into the accumulator's rows, by the mma.sync or
// wgmma kernel `choice` names.
template <typename Element, int kHeadDim, int kHeadDimV>
Status launch_chosen_dkdv(const AttnBwdParams& params, const KernelChoice& choice, const float* delta,
                          float* dq_accum, cudaStream_t stream) {
  using DkDv = typename BwdDefaultConfig<Element, kHeadDim, kHeadDimV>::DkDv;
  if (choice.variant == KernelVariant::kSm90) {
    if (choice.dq != DqPath::kAtomicSums) return error("the sm90 dK/dV kernel sums dQ with atomics only");
    return launch_dkdv_sm90_atomic_dq<Sm90BwdDefaultConfig<Element, kHeadDim, kHeadDimV>>(params, delta, dq_accum,
                                                                                          stream);
  }
  if (choice.dq == DqPath::kOrderedSums) return error("ordered dQ sums are the warp-specialized kernel's");
  if (choice.dq == DqPath::kDqKernel) return launch_dkdv<DkDv, false>(params, delta, nullptr, stream);
  if constexpr (kHeadDim <= 128) {
    return launch_dkdv<DkDv, true>(params, delta, dq_accum, stream);
  } else {
    return error("atomic dQ sums need a head-dim tile of at most 128");
  }
}

}  // namespace bwd_launch_detail

// The kernels `choice` names (kernel_choice.h); the tile configs are held to the rows of kernel_table.h.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_bwd(const AttnBwdParams& params, const KernelChoice& choice, cudaStream_t stream) {
  using namespace bwd_launch_detail;
  using Dq = typename BwdDefaultConfig<Element, kHeadDim, kHeadDimV>::Dq;
  static_assert(table_has_tile<typename BwdDefaultConfig<Element, kHeadDim, kHeadDimV>::DkDv>(
                    KernelKind::kBwdDkDv, KernelVariant::kSm80),
                "kernel_table.h must list BwdDefaultConfig's dK/dV tile");
  static_assert(Sm90BwdDefaultConfig<Element, kHeadDim, kHeadDimV>::kAvailable ==
                    (find_kernel_tile(KernelKind::kBwdDkDv, KernelVariant::kSm90, kHeadDim, kHeadDimV) != nullptr),
                "kernel_table.h must list exactly the head dims with a Sm90BwdDefaultConfig");

  if (params.head_dim > kHeadDim || params.head_dim_v > kHeadDimV || params.head_dim % 8 != 0 ||
      params.head_dim_v % 8 != 0 || params.head_dim <= 0 || params.head_dim_v <= 0) {
    return error("head_dim " + std::to_string(params.head_dim) + " / head_dim_v " +
                 std::to_string(params.head_dim_v) + " must be positive multiples of 8 within the tile " +
                 std::to_string(kHeadDim) + " / " + std::to_string(kHeadDimV));
  }
  if (params.heads_k <= 0 || params.heads_q != params.heads_k * params.kv_group) {
    return error("heads_q " + std::to_string(params.heads_q) + " must be heads_k " +
                 std::to_string(params.heads_k) + " times kv_group " + std::to_string(params.kv_group));
  }
  if (params.heads_q > 65535 || params.layout_batch() > 65535) {
    return error("heads_q and batch must be at most 65535");
  }
  if (params.batch <= 0 || params.seqlen_q < 0 || params.seqlen_k < 0) return {};
  if (!bwd_operands_aligned(params)) {
    return error("q/k/v/out/dout/dq/dk/dv and the workspace need 16-byte aligned pointers and batch/row/head "
                 "strides that are multiples of 8 elements");
  }

  // The workspace as attn_bwd_workspace_bytes sized it: the warp-specialized kernel's blocks are those of the
  // chosen row (sm90_ws_dq_accum_block). Delta and the accumulator start at the same place either way.
  const bool ws = choice.variant == KernelVariant::kSm90Ws;
  const DqAccumBlock blocks = ws ? DqAccumBlock{choice.tile.block_m, choice.tile.tile_d} : DqAccumBlock{};
  const BwdWorkspaceLayout layout = bwd_workspace_layout(params.batch, params.packed(), params.seqlen_q,
                                                         params.heads_q, params.head_dim, params.deterministic,
                                                         blocks);
  char* workspace = static_cast<char*>(params.workspace);
  float* delta = reinterpret_cast<float*>(workspace + layout.delta_offset);
  const bool atomic_dq = choice.dq == DqPath::kAtomicSums, ordered_dq = choice.dq == DqPath::kOrderedSums;
  if (atomic_dq && (ws ? params.deterministic : !bwd_atomic_dq_sums(params.head_dim, params.deterministic))) {
    return error("atomic dQ sums chosen for a workspace without their accumulator");
  }
  if (ordered_dq && !(ws && params.deterministic)) {
    return error("ordered dQ sums are the deterministic warp-specialized backward's");
  }
  float* dq_accum = atomic_dq || ordered_dq ? reinterpret_cast<float*>(workspace + layout.dq_accum_offset) : nullptr;
  int* dq_semaphores = ordered_dq ? reinterpret_cast<int*>(workspace + layout.dq_semaphores_offset) : nullptr;
  const int64_t rows = int64_t(params.layout_batch()) * params.heads_q * params.seqlen_q;

  // Delta, and the dq accumulator (with the ordered sums' semaphores after it) zeroed by the same grid.
  const size_t zero_bytes = dq_accum != nullptr ? layout.total_bytes - layout.dq_accum_offset : 0;
  if (Status s = launch_delta<Element, kHeadDimV>(params, delta, dq_accum, zero_bytes, stream); !s.ok()) return s;
  if (ws) {
    // The warp-specialized kernel fills and converts its own accumulator (blocks, not rows).
    if (dq_accum == nullptr) return error("the warp-specialized dK/dV kernel sums dQ (atomic or ordered sums)");
    const Status s = run_sm90_ws<Element, kHeadDim, kHeadDimV>(params, delta, dq_accum, dq_semaphores, stream);
    if (!s.ok()) return s;
  } else {
    if (params.seqlen_k > 0) {
      const Status s = launch_chosen_dkdv<Element, kHeadDim, kHeadDimV>(params, choice, delta, dq_accum, stream);
      if (!s.ok()) return s;
    }
    if (atomic_dq && rows > 0) {
      const int64_t chunks = rows * (params.head_dim / 8);
      bwd_dq_convert_kernel<Element>
          <<<elementwise_blocks(chunks, kBwdElementwiseThreads), kBwdElementwiseThreads, 0, stream>>>(params,
                                                                                                    dq_accum);
      if (Status s = check_launch("bwd_dq_convert_kernel"); !s.ok()) return s;
    }
  }
  if (choice.dq == DqPath::kDqKernel && rows > 0) {
    if (Status s = launch_dq<Dq>(params, delta, stream); !s.ok()) return s;
  }
  return {};
}

}  // namespace jax_flash
