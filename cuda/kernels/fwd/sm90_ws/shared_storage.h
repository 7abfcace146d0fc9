// Shared memory of the warp-specialized Hopper forward: the Q / O tile, the K and V stages, and the barriers
// that hand them between the producer and the consumer warpgroups.
#pragma once

#include <cute/container/array_aligned.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace jax_flash {

template <class Cfg>
struct Sm90WsSharedStorage {
  using Element = typename Cfg::Element;
  using Pipeline = cutlass::PipelineTmaAsync<Cfg::kStages>;

  // 1024-byte alignment: the 128-byte swizzle of the wgmma / TMA layouts is on absolute addresses.
  // q holds Q, then each consumer warpgroup's rows of O once it has read its rows of Q for the last time.
  cute::array_aligned<Element, Cfg::kSmemQOElems, 1024> q;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutK>, 1024> k;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutV>, 1024> v;
  typename Pipeline::SharedStorage pipeline_k;  // full / empty barrier per K stage
  typename Pipeline::SharedStorage pipeline_v;
  cutlass::arch::ClusterTransactionBarrier barrier_q;  // Q landed (one phase: Q is loaded once)
};

}  // namespace jax_flash
