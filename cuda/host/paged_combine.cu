// Launcher of the split-KV combine (kernels/fwd/paged_combine.cuh), for both element types: it is small and
// does not depend on the head-dim tiles.
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <string>

#include "host/launch.h"
#include "kernels/fwd/paged_combine.cuh"

namespace jax_flash {

Status paged_combine(const PagedFwdParams& params, DType dtype, cudaStream_t stream) {
  if (params.head_dim_v > 32 * kCombineMaxColsPerLane) {
    return {"paged_combine: head_dim_v " + std::to_string(params.head_dim_v) + " above 256"};
  }
  const int64_t pairs = int64_t(params.layout_batch()) * params.seqlen_q * params.heads_q;
  if (pairs == 0) return {};
  constexpr int kWarpsPerBlock = kCombineThreads / 32;
  const int blocks = int(std::min<int64_t>((pairs + kWarpsPerBlock - 1) / kWarpsPerBlock, 1 << 16));
  if (dtype == DType::kBFloat16) {
    paged_combine_kernel<cutlass::bfloat16_t><<<blocks, kCombineThreads, 0, stream>>>(params);
  } else {
    paged_combine_kernel<cutlass::half_t><<<blocks, kCombineThreads, 0, stream>>>(params);
  }
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return {};
  return {std::string("paged_combine: launch failed: ") + cudaGetErrorString(err)};
}

}  // namespace jax_flash
