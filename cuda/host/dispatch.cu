// The host entry points (attention.h): the kernel choice (kernel_choice.h) for the call, then the compiled
// instantiation of the chosen tile (compiled_tiles.h lists them), then the packed-padding fill or the split
// combine where the call needs one.
#include <cutlass/numeric_types.h>

#include "host/compiled_tiles.h"
#include "host/kernel_choice.h"
#include "host/launch.h"

namespace jax_flash {
namespace {

template <DType kDType>
struct ElementOf;
template <>
struct ElementOf<DType::kBFloat16> {
  using type = cutlass::bfloat16_t;
};
template <>
struct ElementOf<DType::kFloat16> {
  using type = cutlass::half_t;
};

struct FwdLaunch {
  const AttnFwdParams& params;
  cudaStream_t stream;
  template <typename Element, int kD, int kDv>
  Status run(const KernelChoice& choice) const { return run_attn_fwd<Element, kD, kDv>(params, choice, stream); }
};

struct BwdLaunch {
  const AttnBwdParams& params;
  cudaStream_t stream;
  template <typename Element, int kD, int kDv>
  Status run(const KernelChoice& choice) const { return run_attn_bwd<Element, kD, kDv>(params, choice, stream); }
};

struct PagedLaunch {
  const PagedFwdParams& params;
  cudaStream_t stream;
  template <typename Element, int kD, int kDv>
  Status run(const KernelChoice& choice) const { return run_paged_fwd<Element, kD, kDv>(params, choice, stream); }
};

// The key count the kernel choice goes by: the keys of a dense call, the max_seqlen_k bound of a packed one (-1,
// unknown, where it was not given).
int64_t choice_keys(const AttnFwdParams& params) {
  if (!params.packed()) return params.seqlen_k;
  return params.max_seqlen_k > 0 ? params.max_seqlen_k : -1;
}

// Chooses the kernel and calls launch.template run<Element, D, Dv>(choice) on the instantiation of its tile.
template <typename Launch>
Status dispatch(KernelFeature feature, DType dtype, int head_dim, int head_dim_v, int64_t seqlen_k,
                KernelVariant variant, Launch&& launch) {
  KernelChoice choice;
  if (Status s = choose_kernel(feature, dtype, head_dim, head_dim_v, seqlen_k, variant, &choice); !s.ok()) return s;
  Status status{"jax_flash: no instantiation of the chosen tile"};  // unreachable: the choice is of compiled tiles
  visit_compiled_dtype(dtype, [&](auto dtype_tag) {
    using Element = typename ElementOf<decltype(dtype_tag)::value>::type;
    visit_compiled_tiles([&](auto tile) {
      using Tile = decltype(tile);
      if (Tile::kD != choice.tile.tile_d || Tile::kDv != choice.tile.tile_dv) return false;
      status = launch.template run<Element, Tile::kD, Tile::kDv>(choice);
      return true;
    });
  });
  return status;
}

}  // namespace

Status attn_fwd(const AttnFwdParams& params, DType dtype, KernelVariant variant, cudaStream_t stream) {
  Status status = dispatch(KernelFeature::kFwd, dtype, params.head_dim, params.head_dim_v, choice_keys(params),
                           variant, FwdLaunch{params, stream});
  if (status.ok() && params.packed()) status = fill_fwd_padding(params, stream);
  return status;
}

Status attn_bwd(const AttnBwdParams& params, DType dtype, KernelVariant variant, cudaStream_t stream) {
  Status status = dispatch(bwd_feature(params.deterministic), dtype, params.head_dim, params.head_dim_v,
                           choice_keys(params), variant, BwdLaunch{params, stream});
  if (status.ok() && params.packed()) status = fill_bwd_padding(params, stream);
  return status;
}

Status paged_fwd(const PagedFwdParams& params, DType dtype, KernelVariant variant, cudaStream_t stream) {
  Status status = dispatch(paged_feature(params), dtype, params.head_dim, params.head_dim_v, choice_keys(params),
                           variant, PagedLaunch{params, stream});
  if (status.ok() && params.num_splits > 1) status = paged_combine(params, dtype, stream);
  if (status.ok() && params.packed()) status = fill_fwd_padding(params, stream);
  return status;
}

}  // namespace jax_flash
