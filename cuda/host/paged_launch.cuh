// Launcher of the paged-KV forward kernel for one (Element, kHeadDim, kHeadDimV) instantiation.
// Included only by the generated instantiation files; host code elsewhere sees launch.h alone.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "host/compiled_tiles.h"
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

// kv_tma: the caches' tensor maps for the Hopper decode kernel (kTmaKv), unused otherwise. keys_across_warps:
// the decode split of a tile (KernelFeature::kPagedDecode, kernel_choice.h); the TMA kernel always has it.
template <class Cfg, bool kTmaKv>
Status launch_paged_fwd(const PagedFwdParams& params, bool keys_across_warps, const PagedKvTma& kv_tma,
                        cudaStream_t stream) {
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
      return keys_across_warps ? paged_fwd_kernel_for<Cfg, true, false>(softcap)
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

// The Hopper decode (kSm90): K and V loaded by the TMA unit (kernels/fwd/paged_kv_tma.h, its own tile config)
// where this build has sm_90a code and the caches allow the tensor maps (head dims multiples of 64, 16-byte
// aligned pointers and strides). Caches that do not fall back to the cp.async decode, unless the variant was
// pinned.
template <class Decode, class Sm80>
Status launch_paged_decode_sm90(const PagedFwdParams& params, const KernelChoice& choice, cudaStream_t stream) {
  using Element = typename Sm80::Element;
  PagedKvTma kv_tma{};
  if constexpr (kBuildHasSm90a && Decode::kAvailable) {
    static_assert(table_has_tile<typename Decode::type>(KernelKind::kPaged, KernelVariant::kSm90),
                  "kernel_table.h must list PagedDecodeSm90Config's tile");
    if (fwd_operands_aligned(params) &&
        encode_paged_kv_tma(params, std::is_same_v<Element, cutlass::bfloat16_t>, /*max_box_rows=*/16, &kv_tma)) {
      return launch_paged_fwd<typename Decode::type, /*kTmaKv=*/true>(params, /*keys_across_warps=*/true, kv_tma,
                                                                       stream);
    }
  }
  if (choice.pinned) {
    return Status{"paged_fwd: the pinned sm90 decode cannot run here (it needs sm_90a code, head dims that are "
                  "multiples of 64, and 16-byte aligned cache pointers and strides for its tensor maps)"};
  }
  return launch_paged_fwd<Sm80, /*kTmaKv=*/false>(params, /*keys_across_warps=*/true, kv_tma, stream);
}

// The kernel `choice` names (kernel_choice.h): the TMA decode for kSm90, the cp.async kernels for kSm80 with the
// rows or (kPagedDecode) the keys of a tile split across the warps.
template <typename Element, int kHeadDim, int kHeadDimV>
Status run_paged_fwd(const PagedFwdParams& params, const KernelChoice& choice, cudaStream_t stream) {
  using Sm80 = typename PagedDefaultConfig<Element, kHeadDim, kHeadDimV>::type;
  using Decode = PagedDecodeSm90Config<Element, kHeadDim, kHeadDimV>;
  static_assert(table_has_tile<Sm80>(KernelKind::kPaged, KernelVariant::kSm80),
                "kernel_table.h must list PagedDefaultConfig's tile");
  static_assert(Decode::kAvailable ==
                    (find_kernel_tile(KernelKind::kPaged, KernelVariant::kSm90, kHeadDim, kHeadDimV) != nullptr),
                "kernel_table.h must list exactly the head dims with a PagedDecodeSm90Config");
  if (choice.variant == KernelVariant::kSm90) return launch_paged_decode_sm90<Decode, Sm80>(params, choice, stream);
  const bool keys_across_warps = choice.feature == KernelFeature::kPagedDecode;
  return launch_paged_fwd<Sm80, /*kTmaKv=*/false>(params, keys_across_warps, PagedKvTma{}, stream);
}

}  // namespace jax_flash
