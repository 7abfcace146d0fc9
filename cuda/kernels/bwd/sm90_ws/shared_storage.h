// Shared memory of the warp-specialized Hopper dK/dV kernel: the CTA's K and V tiles, the Q and dO stages with
// their rows of lse and delta, the double-buffered dS^T tile, and the barriers that hand them between the
// producer warp and the consumer warpgroups.
#pragma once

#include <cute/container/array_aligned.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace jax_flash {

template <class Cfg>
struct Sm90WsBwdSharedStorage {
  using Element = typename Cfg::Element;
  using Pipeline = cutlass::PipelineTmaAsync<Cfg::kStages>;

  // 1024-byte alignment: the 128-byte swizzle of the wgmma / TMA layouts is on absolute addresses.
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutQ>, 1024> q;  // every stage
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutDo>, 1024> dout;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutK>, 1024> k;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutV>, 1024> v;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutDsT>, 1024> ds;
  // Per Q stage: lse * log2(e) of the tile's rows (+inf for rows with no visible key or past the sequence);
  // per dO stage: delta (0 past the sequence). Written by the producer's warp 1 with ordinary stores.
  cute::array_aligned<float, Cfg::kBlockM * Cfg::kStages, 16> lse_log2;
  cute::array_aligned<float, Cfg::kBlockM * Cfg::kStages, 16> delta;
  typename Pipeline::SharedStorage pipeline_q;   // Q + lse rows: full / empty barrier per stage
  typename Pipeline::SharedStorage pipeline_do;  // dO + delta rows
  cutlass::arch::ClusterTransactionBarrier barrier_kv;  // K and V landed (one phase: loaded once)
};

}  // namespace jax_flash
