// Launcher of the dense forward kernel for one (Element, kHeadDim, kHeadDimV) instantiation.
// Included only by the generated instantiation files; host code elsewhere sees launch.h alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "host/compiled_tiles.h"
#include "host/fwd_operands.h"
#include "host/kernel_table.h"
#include "host/launch.h"
#include "host/smem_opt_in.h"
#include "kernels/fwd/kernel.cuh"
#include "kernels/fwd/tile_config.h"
#include "kernels/fwd/tile_config_sm90.h"

namespace jax_flash {

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

// The wgmma kernel where this build has sm_90a code and the head dims a Hopper config.
template <class Sm90>
Status launch_attn_fwd_sm90(const AttnFwdParams& params, cudaStream_t stream) {
  if constexpr (kBuildHasSm90a && Sm90::kAvailable) {
    static_assert(table_has_tile<typename Sm90::type>(KernelKind::kFwd, KernelVariant::kSm90),
                  "kernel_table.h must list Sm90FwdDefaultConfig's tile");
    return launch_attn_fwd<typename Sm90::type>(params, stream);
  } else {
    return Status{"attn_fwd: this build has no sm90 kernel for these head dims"};
  }
}

// The warp-specialized Hopper forward (fwd_sm90_ws_launch.cuh). Its instantiations are generated files of
// their own (attn_fwd_sm90_ws_*.cu), compiled for sm_90a only and only in builds that have it.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_fwd_sm90_ws(const AttnFwdParams& params, cudaStream_t stream);

// The kernel `choice` names: the warp-specialized kernel for kSm90Ws, the wgmma kernel for kSm90, the portable
// mma.sync kernel for kSm80. The tile configs are held to the rows of kernel_table.h that the choice was read
// from.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_attn_fwd(const AttnFwdParams& params, const KernelChoice& choice, cudaStream_t stream) {
  using Sm80 = typename FwdDefaultConfig<Element, kHeadDim, kHeadDimV>::type;
  using Sm90 = Sm90FwdDefaultConfig<Element, kHeadDim, kHeadDimV>;
  static_assert(table_has_tile<Sm80>(KernelKind::kFwd, KernelVariant::kSm80),
                "kernel_table.h must list FwdDefaultConfig's tile");
  static_assert(Sm90::kAvailable ==
                    (find_kernel_tile(KernelKind::kFwd, KernelVariant::kSm90, kHeadDim, kHeadDimV) != nullptr),
                "kernel_table.h must list exactly the head dims with a Sm90FwdDefaultConfig");
  if (choice.variant == KernelVariant::kSm90Ws) {
    if constexpr (kBuildHasSm90a) {
      return run_attn_fwd_sm90_ws<Element, kHeadDim, kHeadDimV>(params, stream);
    } else {
      return Status{"attn_fwd: this build has no sm_90a code for the warp-specialized kernel"};
    }
  }
  if (choice.variant == KernelVariant::kSm90) return launch_attn_fwd_sm90<Sm90>(params, stream);
  return launch_attn_fwd<Sm80>(params, stream);
}

}  // namespace jax_flash
