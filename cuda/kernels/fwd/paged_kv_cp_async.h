// K / V load policy of the paged forward on every GPU: each K / V tile row gathered from its cache page with
// cp.async (common/gather_copy.h), so any page size that is a multiple of 8 works and tiles may straddle pages,
// pipelined by the same CTA-wide cp.async pipeline as the dense forward (kv_pipeline.h).
//
// Load policy interface (the other one is paged_kv_tma.h), called by paged_mainloop.h:
//   kQInRegisters     whether Q is loaded to registers once (else each QK^T reads it from shared memory)
//   prologue()        after the Q group: the first tiles' loads
//   before_qk(t)      K of step t is in shared memory for every warp that reads it
//   before_pv(t, n)   V of step t (key block n) likewise
//   after_scores(t)   this warp's scores of step t are final (its K buffer is free)
//   after_pv(t)       this warp's PV of step t is issued (its V buffer is free)
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/gather_copy.h"
#include "kernels/common/mma_kind.h"
#include "kernels/fwd/kv_pipeline.h"
#include "kernels/fwd/paged_cache.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg, class TKsK, class TKcK, class TVsV, class TVcV>
struct PagedKvCpAsyncLoads {
  using Element = typename Cfg::Element;
  static constexpr bool kQInRegisters = false;

  const PagedFwdParams& params;
  PagedCache cache;
  TKsK tKsK;  // (CPY, CPY_N, CPY_K, stage): this thread's chunks of the K buffers
  TKcK tKcK;  // their tile coordinates
  TVsV tVsV;
  TVcV tVcV;
  CpAsyncKvPipeline<Cfg::kStages, MmaSync> pipeline;
  int n_end;  // key tile of step t is n_end - 1 - t

  __device__ void load_k(int t) const {
    const int key0 = (n_end - 1 - t) * Cfg::kBlockN;
    load_rows_gather(static_cast<const Element*>(params.k), tKsK(cute::_, cute::_, cute::_, t % Cfg::kStages), tKcK,
                     [&](int r) {
                       return cache.key_offset(key0 + r, params.k_page_stride, params.k_row_stride,
                                               params.k_head_stride);
                     },
                     params.head_dim);
  }
  __device__ void load_v(int t) const {
    const int key0 = (n_end - 1 - t) * Cfg::kBlockN;
    load_rows_gather(static_cast<const Element*>(params.v), tVsV(cute::_, cute::_, cute::_, t % Cfg::kStages), tVcV,
                     [&](int r) {
                       return cache.key_offset(key0 + r, params.v_page_stride, params.v_row_stride,
                                               params.v_head_stride);
                     },
                     params.head_dim_v);
  }

  __device__ void prologue() const {
    pipeline.prologue([&](int t) { load_k(t); }, [&](int t) { load_v(t); });
  }
  __device__ void before_qk(int t) const { pipeline.wait_k(t, [&](int tile) { load_v(tile); }); }
  __device__ void before_pv(int t, int) const { pipeline.wait_v(t, [&](int tile) { load_k(tile); }); }
  __device__ void after_scores(int) const {}
  __device__ void after_pv(int) const {}
};

// sK / sV: the (kBlockN, head dim, kStages) K and V buffers.
template <class Cfg, class SK, class SV>
__device__ __forceinline__ auto make_paged_kv_cp_async(const PagedFwdParams& params, const PagedCache& cache,
                                                       SK const& sK, SV const& sV, int n_end, int n_tiles,
                                                       int tidx) {
  using namespace cute;
  auto gmem_thr_qk = typename Cfg::GmemCopyQK{}.get_thread_slice(tidx);
  auto gmem_thr_v = typename Cfg::GmemCopyV{}.get_thread_slice(tidx);
  Tensor tKsK = gmem_thr_qk.partition_D(sK);
  Tensor tVsV = gmem_thr_v.partition_D(sV);
  Tensor tKcK = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDim>>{}));
  Tensor tVcV = gmem_thr_v.partition_S(make_identity_tensor(Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDimV>>{}));
  return PagedKvCpAsyncLoads<Cfg, decltype(tKsK), decltype(tKcK), decltype(tVsV), decltype(tVcV)>{
      params, cache, tKsK, tKcK, tVsV, tVcV, {n_tiles}, n_end};
}

}  // namespace jax_flash
