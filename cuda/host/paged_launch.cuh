// Launcher of the paged-KV forward kernel for one (Element, kHeadDim, kHeadDimV) instantiation.
// Included only by the generated instantiation files; host code elsewhere sees launch.h alone.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "host/device_arch.h"
#include "host/fwd_launch.cuh"
#include "host/launch.h"
#include "host/paged_kv_tma.h"
#include "host/smem_opt_in.h"
#include "kernels/fwd/paged_kernel.cuh"
#include "kernels/fwd/paged_tile_config.h"

namespace jax_flash {

template <class Cfg, bool kKeysAcrossWarps, bool kTmaKv>
auto paged_fwd_kernel_for(bool softcap) {
  return softcap ? &paged_fwd_kernel<Cfg, true, kKeysAcrossWarps, kTmaKv>
                 : &paged_fwd_kernel<Cfg, false, kKeysAcrossWarps, kTmaKv>;
}

// Decode-like shapes (every sequence's (query, head) pairs of a kv head fit one warp's 16 rows) split the keys
// of a tile across the warps instead of the rows: a static choice from the shapes (the packed layout, whose
// rows per sequence are bounded by the data only, keeps the row split). The grid is the same.
inline bool paged_keys_across_warps(const PagedFwdParams& params) {
  return !params.packed() && int64_t(params.seqlen_q) * params.kv_group <= 16;
}

// kv_tma: the caches' tensor maps for the Hopper decode kernel (kTmaKv), unused otherwise.
template <class Cfg, bool kTmaKv>
Status launch_paged_fwd(const PagedFwdParams& params, const PagedKvTma& kv_tma, cudaStream_t stream) {
  auto fail = [](const std::string& what) { return Status{"paged_fwd: " + what}; };
  if (params.head_dim > Cfg::kHeadDim || params.head_dim_v > Cfg::kHeadDimV) {
    return fail("head dims (" + std::to_string(params.head_dim) + ", " + std::to_string(params.head_dim_v) +
                ") exceed the tile (" + std::to_string(Cfg::kHeadDim) + ", " + std::to_string(Cfg::kHeadDimV) + ")");
  }
  if (params.kv_group < 1 || params.heads_q != params.heads_k * params.kv_group) {
    return fail("heads_q (" + std::to_string(params.heads_q) + ") must equal heads_k (" +
                std::to_string(params.heads_k) + ") * kv_group (" + std::to_string(params.kv_group) + ")");
  }
  if (!fwd_operands_aligned(params) || params.k_page_stride % 8 != 0 || params.v_page_stride % 8 != 0) {
    return fail("q/caches/out need 16-byte aligned base pointers and strides that are multiples of 8 elements");
  }
  if (params.page_size <= 0 || params.max_pages < 0 || params.num_splits < 1) {
    return fail("page_size, max_pages and num_splits must be positive");
  }
  if (params.batch == 0 || params.heads_q == 0 || params.seqlen_q == 0) return Status{};
  // Rows are (query, head of the kv group) pairs: dense (row blocks, Hk, B * splits); packed (the tile
  // bound over Tq * kv_group rows, Hk, splits), see schedule_paged_tile.
  const int64_t pair_rows = int64_t(params.seqlen_q) * params.kv_group;
  const int64_t grid_x = (pair_rows + Cfg::kBlockM - 1) / Cfg::kBlockM + (params.packed() ? params.batch : 0);
  const int64_t grid_z = int64_t(params.packed() ? 1 : params.batch) * params.num_splits;
  // The kernel counts (query, head) rows in int.
  if (pair_rows > INT32_MAX) return fail("query rows x kv_group (" + std::to_string(pair_rows) + ") beyond int32");
  if (grid_x > INT32_MAX || params.heads_k > 65535 || grid_z > 65535) {
    return fail("grid too large: " + std::to_string(grid_x) + " row blocks, " + std::to_string(params.heads_k) +
                " kv heads, " + std::to_string(grid_z) + " (sequence, split) pairs (at most 65535)");
  }
  const dim3 grid(unsigned(grid_x), params.heads_k, unsigned(grid_z));
  const bool softcap = params.softcap > 0.f;
  const auto kernel = [&] {  // only the variants this config runs are instantiated
    if constexpr (kTmaKv) {
      return paged_fwd_kernel_for<Cfg, true, true>(softcap);
    } else {
      return paged_keys_across_warps(params) ? paged_fwd_kernel_for<Cfg, true, false>(softcap)
                                             : paged_fwd_kernel_for<Cfg, false, false>(softcap);
    }
  }();
  constexpr int kSmem = Cfg::kSmemBytes;
  if (Status s = opt_in_dynamic_smem(kernel, kSmem, "paged_fwd"); !s.ok()) return s;
  kernel<<<grid, Cfg::kNThreads, kSmem, stream>>>(params, kv_tma);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return fail("launch (head dims " + std::to_string(Cfg::kHeadDim) + "/" + std::to_string(Cfg::kHeadDimV) +
                ", grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z) +
                "): " + cudaGetErrorString(err));
  }
  return Status{};
}

// On Hopper the split-key decode loads K and V with the TMA unit (kernels/fwd/paged_kv_tma.h, its own tile config)
// where the caches allow the tensor maps (head dims multiples of 64, 16-byte aligned strides): a choice from
// shapes, strides and the device, like the rest. Everything else runs the cp.async kernels.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_paged_fwd(const PagedFwdParams& params, cudaStream_t stream) {
  PagedKvTma kv_tma{};
#ifdef JAX_FLASH_HAS_SM90A
  using Decode = PagedDecodeSm90Config<Element, kHeadDim, kHeadDimV>;
  if constexpr (Decode::kAvailable) {
    if (paged_keys_across_warps(params) && current_device_is_sm90() && fwd_operands_aligned(params) &&
        encode_paged_kv_tma(params, std::is_same_v<Element, cutlass::bfloat16_t>, /*max_box_rows=*/16, &kv_tma)) {
      return launch_paged_fwd<typename Decode::type, /*kTmaKv=*/true>(params, kv_tma, stream);
    }
  }
#endif
  return launch_paged_fwd<typename PagedDefaultConfig<Element, kHeadDim, kHeadDimV>::type, /*kTmaKv=*/false>(
      params, kv_tma, stream);
}

}  // namespace jax_flash
