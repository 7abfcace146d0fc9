// Runtime (dtype, head dims) -> the compiled instantiation. The only place that lists the tiles.
// A head dim is served by the smallest compiled tile that holds it; loads beyond it are predicated.
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "host/launch.h"

namespace jax_flash {
namespace {

template <int D, int Dv>
using Tile = std::integer_sequence<int, D, Dv>;

// Visits the smallest compiled tile holding (head_dim, head_dim_v); false when none does.
template <typename Visitor>
bool visit_tile(int head_dim, int head_dim_v, Visitor&& visit) {
  auto try_tile = [&](auto tile, int d, int dv) {
    if (head_dim > d || head_dim_v > dv) return false;
    visit(tile);
    return true;
  };
  (void)try_tile;
#ifdef JAX_FLASH_HAS_HDIM_64
  if (try_tile(Tile<64, 64>{}, 64, 64)) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_96
  if (try_tile(Tile<96, 96>{}, 96, 96)) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_128
  if (try_tile(Tile<128, 128>{}, 128, 128)) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_192x128
  if (try_tile(Tile<192, 128>{}, 192, 128)) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_192
  if (try_tile(Tile<192, 192>{}, 192, 192)) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_256
  if (try_tile(Tile<256, 256>{}, 256, 256)) return true;
#endif
  return false;
}

struct FwdLaunch {
  const AttnFwdParams& params;
  cudaStream_t stream;
  template <typename Element, int kD, int kDv>
  Status run() const { return run_attn_fwd<Element, kD, kDv>(params, stream); }
};

struct BwdLaunch {
  const AttnBwdParams& params;
  cudaStream_t stream;
  template <typename Element, int kD, int kDv>
  Status run() const { return run_attn_bwd<Element, kD, kDv>(params, stream); }
};

struct PagedLaunch {
  const PagedFwdParams& params;
  cudaStream_t stream;
  template <typename Element, int kD, int kDv>
  Status run() const { return run_paged_fwd<Element, kD, kDv>(params, stream); }
};

template <typename Visitor>
bool visit_element(DType dtype, Visitor&& visit) {
  switch (dtype) {
#ifdef JAX_FLASH_HAS_BF16
    case DType::kBFloat16: visit(cutlass::bfloat16_t{}); return true;
#endif
#ifdef JAX_FLASH_HAS_FP16
    case DType::kFloat16: visit(cutlass::half_t{}); return true;
#endif
    default: return false;
  }
}

template <int D, int Dv>
constexpr int tile_d(Tile<D, Dv>) { return D; }
template <int D, int Dv>
constexpr int tile_dv(Tile<D, Dv>) { return Dv; }

const char* dtype_name(DType dtype) { return dtype == DType::kBFloat16 ? "bfloat16" : "float16"; }

Status unsupported(DType dtype, int head_dim, int head_dim_v) {
  return {std::string("jax_flash: this build has no kernel for dtype ") + dtype_name(dtype) +
          ", head_dim " + std::to_string(head_dim) + ", head_dim_v " + std::to_string(head_dim_v)};
}

// Calls launch.template run<Element, D, Dv>() on the instantiation for these arguments.
template <typename Launch>
Status dispatch(DType dtype, int head_dim, int head_dim_v, Launch&& launch) {
  Status status = unsupported(dtype, head_dim, head_dim_v);
  visit_element(dtype, [&](auto element) {
    visit_tile(head_dim, head_dim_v, [&](auto tile) {
      using Element = decltype(element);
      constexpr int kD = tile_d(decltype(tile){});
      constexpr int kDv = tile_dv(decltype(tile){});
      status = launch.template run<Element, kD, kDv>();
    });
  });
  return status;
}

}  // namespace

bool attn_supported(DType dtype, int head_dim, int head_dim_v) {
  bool found = false;
  visit_element(dtype, [&](auto) { found = visit_tile(head_dim, head_dim_v, [](auto) {}); });
  return found;
}

Status attn_fwd(const AttnFwdParams& params, DType dtype, cudaStream_t stream) {
  Status status = dispatch(dtype, params.head_dim, params.head_dim_v, FwdLaunch{params, stream});
  if (status.ok() && params.packed()) status = fill_fwd_padding(params, stream);
  return status;
}

Status attn_bwd(const AttnBwdParams& params, DType dtype, cudaStream_t stream) {
  Status status = dispatch(dtype, params.head_dim, params.head_dim_v, BwdLaunch{params, stream});
  if (status.ok() && params.packed()) status = fill_bwd_padding(params, stream);
  return status;
}

Status paged_fwd(const PagedFwdParams& params, DType dtype, cudaStream_t stream) {
  Status status = dispatch(dtype, params.head_dim, params.head_dim_v, PagedLaunch{params, stream});
  if (status.ok() && params.num_splits > 1) status = paged_combine(params, dtype, stream);
  if (status.ok() && params.packed()) status = fill_fwd_padding(params, stream);
  return status;
}

}  // namespace jax_flash
