// Warpgroup MMA (wgmma, sm_90a) building blocks shared by the Hopper kernels.
//
// A wgmma batch reads its shared-memory operands through the async proxy and writes its accumulators
// asynchronously: the accumulators are fenced around the batch, the batch is committed and waited for before
// the registers are read, and shared memory written by ordinary stores or cp.async is fenced to the async
// proxy before the barrier that publishes it (publish_smem_writes).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>

namespace jax_flash {

// Issues acc (+)= A B^T over every k slice (no fence, arrive or wait: see wgmma_gemm). kZeroInit: the first
// slice overwrites acc.
template <bool kZeroInit, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_issue(TiledMma& mma, FragA const& a, FragB const& b, Acc& acc) {
  using namespace cute;
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), acc);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
}

// Runs f() (wgmma_issue calls writing the accumulators accs...) as one committed batch and waits for it.
template <class Issue, class... Accs>
__device__ __forceinline__ void wgmma_batch(Issue&& issue, Accs&... accs) {
  using namespace cute;
  (warpgroup_fence_operand(accs), ...);
  warpgroup_arrive();
  issue();
  warpgroup_commit_batch();
  warpgroup_wait<0>();
  (warpgroup_fence_operand(accs), ...);
}

// acc (+)= A B^T as one batch of the calling warpgroup, waited for before return. A register A operand is
// fenced by the caller.
template <bool kZeroInit, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_gemm(TiledMma& mma, FragA const& a, FragB const& b, Acc& acc) {
  wgmma_batch([&] { wgmma_issue<kZeroInit>(mma, a, b, acc); }, acc);
}

// Called by every thread after its shared-memory writes completed and before the barrier that publishes
// them, when wgmma (async proxy) will read them. No-op for mma.sync kernels (MmaKind of mma_kind.h).
template <class MmaKind>
__device__ __forceinline__ void publish_smem_writes() {
  if constexpr (MmaKind::kNeedsSm90a) cutlass::arch::fence_view_async_shared();
}

}  // namespace jax_flash
