// Shared memory of the warp-specialized Hopper forward: the Q / O tile, the K and V stages, and the barriers
// that hand them between the producer and the consumer warpgroups.
#pragma once

#include <cute/container/array_aligned.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace jax_flash {

// P of each consumer warpgroup's rows (Cfg::kPvFromSmem), empty otherwise.
template <typename Element, int kElems>
struct Sm90WsSmemP {
  cute::array_aligned<Element, kElems, 1024> p;
  CUTE_DEVICE Element* data() { return p.data(); }
};
template <typename Element>
struct Sm90WsSmemP<Element, 0> {
  CUTE_DEVICE Element* data() { return nullptr; }
};

template <class Cfg>
struct Sm90WsSharedStorage {
  using Element = typename Cfg::Element;
  using Pipeline = cutlass::PipelineTmaAsync<Cfg::kStages>;

  // 1024-byte alignment: the 128-byte swizzle of the wgmma / TMA layouts is on absolute addresses.
  // q holds Q, then each consumer warpgroup's rows of O once it has read its rows of Q for the last time.
  cute::array_aligned<Element, Cfg::kSmemQOElems, 1024> q;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutK>, 1024> k;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutV>, 1024> v;
  Sm90WsSmemP<Element, Cfg::kSmemPElems> p;
  typename Pipeline::SharedStorage pipeline_k;  // full / empty barrier per K stage
  typename Pipeline::SharedStorage pipeline_v;
  // Q landed: one phase per tile of the CTA that loads Q (every tile of a persistent CTA: one without keys
  // loads no Q, and its phase is a plain arrival).
  cutlass::arch::ClusterTransactionBarrier barrier_q;
  // Persistent CTAs: every consumer thread is done with the Q / O buffer of the tile before (its O written out),
  // so the producer may load the next Q over it. One phase per tile after the first.
  cutlass::arch::ClusterBarrier barrier_q_free;
};

}  // namespace jax_flash
