// Launcher of the warp-specialized Hopper forward (kernels/fwd/sm90_ws/) for one (Element, kHeadDim,
// kHeadDimV) instantiation: checks, tensor maps, launch. Included only by its generated instantiation files
// (attn_fwd_sm90_ws_*.cu, built for sm_90a alone) and the GPU check tool; run_attn_fwd (fwd_launch.cuh) calls
// run_attn_fwd_sm90_ws when the kernel choice is kSm90Ws.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "host/attention.h"
#include "host/fwd_operands.h"
#include "host/kernel_table.h"
#include "host/smem_opt_in.h"
#include "kernels/fwd/sm90_ws/kernel_fwd_sm90_ws.cuh"
#include "kernels/fwd/sm90_ws/shared_storage.h"
#include "kernels/fwd/sm90_ws/tile_size.h"

namespace jax_flash {

// The device's multiprocessors (a property of the device, not of the data), for the persistent grid.
inline Status device_sm_count(int* sm_count) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(sm_count, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return Status{std::string("attn_fwd_sm90_ws: SM count: ") + cudaGetErrorString(err)};
  return Status{};
}

// kPersistent: one CTA per SM walking the tiles (Sm90WsPersistentScheduler), else one CTA per tile.
template <class Cfg, bool kPersistent>
Status launch_attn_fwd_sm90_ws(const AttnFwdParams& params, cudaStream_t stream) {
#ifndef JAX_FLASH_HAS_SM90A
  return Status{"attn_fwd_sm90_ws: this build has no sm_90a code"};
#else
  if (params.head_dim > Cfg::kHeadDim || params.head_dim_v > Cfg::kHeadDimV) {
    return Status{"attn_fwd_sm90_ws: head dims (" + std::to_string(params.head_dim) + ", " +
                  std::to_string(params.head_dim_v) + ") exceed the tile (" + std::to_string(Cfg::kHeadDim) +
                  ", " + std::to_string(Cfg::kHeadDimV) + ")"};
  }
  if (params.kv_group < 1 || params.heads_q != params.heads_k * params.kv_group) {
    return Status{"attn_fwd_sm90_ws: heads_q (" + std::to_string(params.heads_q) + ") must equal heads_k (" +
                  std::to_string(params.heads_k) + ") * kv_group (" + std::to_string(params.kv_group) + ")"};
  }
  if (!fwd_operands_aligned(params)) {
    return Status{"attn_fwd_sm90_ws: q/k/v/out need 16-byte aligned base pointers and row/head/batch strides "
                  "that are multiples of 8 elements"};
  }
  if (params.batch == 0 || params.heads_q == 0 || params.seqlen_q == 0) return Status{};
  dim3 grid;
  if constexpr (kPersistent) {
    if (!Sm90WsPersistentScheduler<Cfg>::fits_int_index(params, params.heads_q)) {
      return Status{"attn_fwd_sm90_ws: more than 2^31 tiles for the persistent grid"};
    }
    int sm_count = 0;
    if (Status s = device_sm_count(&sm_count); !s.ok()) return s;
    grid = Sm90WsPersistentScheduler<Cfg>::grid(params, params.heads_q, sm_count);
  } else {
    if (params.heads_q > 65535 || params.layout_batch() > 65535) {
      return Status{"attn_fwd_sm90_ws: batch and heads must each be <= 65535"};
    }
    grid = Sm90WsScheduler<Cfg>::grid(params, params.heads_q);
  }
  const Sm90WsKernelParams<Cfg> kernel_params{params, Sm90WsMainloop<Cfg>::make_params(params)};
  auto kernel = params.softcap > 0.f ? &attn_fwd_sm90_ws_kernel<Cfg, true, kPersistent>
                                      : &attn_fwd_sm90_ws_kernel<Cfg, false, kPersistent>;
  // (The persistent CTA's storage adds O's own buffer where it fits.)
  using Storage = Sm90WsSharedStorage<Cfg, kPersistent && sm90_ws_fwd_own_output<Cfg>>;
  constexpr int kSmem = int(sizeof(Storage));
  // The limit counts static shared memory too: the packed scheduler's tile coordinate (sched/packed_tiles.h),
  // padded to 1 KB by the dynamic region's 1024-byte alignment (as the backward's launcher counts it).
  static_assert(kSmem + 1024 <= 227 * 1024, "must fit the sm_90 per-block shared memory limit");
  if (Status s = opt_in_dynamic_smem(kernel, kSmem, "attn_fwd_sm90_ws"); !s.ok()) return s;
  kernel<<<grid, Cfg::kThreads, kSmem, stream>>>(kernel_params);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return Status{"attn_fwd_sm90_ws: launch (head dims " + std::to_string(Cfg::kHeadDim) + "/" +
                  std::to_string(Cfg::kHeadDimV) + ", grid " + std::to_string(grid.x) + "x" +
                  std::to_string(grid.y) + "x" + std::to_string(grid.z) + "): " + cudaGetErrorString(err)};
  }
  return Status{};
#endif
}

// The default tile of the head-dim pair (tile_size.h), on the persistent CTA for dense grids where the tile's
// kPersistentDense says so. The caller has checked that the device is a Hopper.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_fwd_sm90_ws(const AttnFwdParams& params, cudaStream_t stream) {
  using Cfg = Sm90WsFwdDefaultConfig<Element, kHeadDim, kHeadDimV>;
  static_assert(table_has_tile<Cfg>(KernelKind::kFwd, KernelVariant::kSm90Ws),
                "kernel_table.h must list Sm90WsFwdDefaultConfig's tile");
  if constexpr (Sm90WsTileSize<kHeadDim, kHeadDimV>::kPersistentDense) {
    // A causal grid's blocks differ in length: those take the persistent CTA in the longest-first order only.
    const bool causal = LongestFirstScheduler<Cfg::kBlockM, TileAxis::kQuery, true>::interleaves(params);
    if (!params.packed() && (Cfg::kLongestFirst || !causal)) {
      return launch_attn_fwd_sm90_ws<Cfg, /*kPersistent=*/true>(params, stream);
    }
  }
  return launch_attn_fwd_sm90_ws<Cfg, /*kPersistent=*/false>(params, stream);
}

}  // namespace jax_flash
