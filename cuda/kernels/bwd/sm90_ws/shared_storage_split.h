// Shared memory of the warp-specialized Hopper dK/dV kernel's split layout (mainloop_tma_ws_split.h): the CTA's
// K and V tiles, the Q and dO stages, the double-buffered P and dS tiles (query, key), the step's dQ block where
// the tile has room for it (tile_size_split.h kDqSharedBlock), the lse / delta rows (one copy), and the
// barriers that hand the tiles from the producer warp to the consumer warpgroups.
#pragma once

#include <cute/container/array_aligned.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include "kernels/bwd/sm90_ws/query_rows.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsBwdSplitSharedStorage {
  using Element = typename Cfg::Element;
  using Pipeline = cutlass::PipelineTmaAsync<Cfg::kStages>;

  // 1024-byte alignment: the 128-byte swizzle of the wgmma / TMA layouts is on absolute addresses.
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutQ>, 1024> q;  // every stage
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutDo>, 1024> dout;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutK>, 1024> k;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutV>, 1024> v;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutP>, 1024> p;  // both buffers
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutDs>, 1024> ds;
  // The step's dQ (fp32) on its way to the workspace (dq_accum_blocks.h); a stub where dQ goes by atomics.
  cute::array_aligned<float, Cfg::kDqSharedBlock ? Cfg::kBlockM * Cfg::kHeadDim : 4, 128> dq;
  // The step's lse / delta rows (query_rows.h), one copy for both consumer warpgroups: both read every query's.
  typename Sm90WsQueryRows<Cfg::kBlockM, Cfg::kBlockN, Cfg::kMmaThreads>::Storage rows;
  typename Pipeline::SharedStorage pipeline_q;   // Q: full / empty barrier per stage
  typename Pipeline::SharedStorage pipeline_do;  // dO
  cutlass::arch::ClusterTransactionBarrier barrier_kv;  // K and V landed (one phase: loaded once)
};

}  // namespace jax_flash
