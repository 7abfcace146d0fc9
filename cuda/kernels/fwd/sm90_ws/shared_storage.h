// Shared memory of the warp-specialized Hopper forward: the Q / O tile (or Q and O), the K and V stages, and the
// barriers that hand them between the producer and the consumer warpgroups.
#pragma once

#include <cute/container/array_aligned.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

namespace jax_flash {

// A shared tile of kElems elements that a config may not have: P of each consumer warpgroup's rows
// (Cfg::kPvFromSmem), O's own buffer (kOwnOutput below); empty for kElems = 0.
template <typename Element, int kElems>
struct Sm90WsOptionalTile {
  cute::array_aligned<Element, kElems, 1024> elems;
  CUTE_DEVICE Element* data() { return elems.data(); }
};
template <typename Element>
struct Sm90WsOptionalTile<Element, 0> {
  CUTE_DEVICE Element* data() { return nullptr; }
};

// kOwnOutput: O is staged in a buffer of its own (a persistent CTA, where it fits: sm90_ws_fwd_own_output), so
// that the next tile's Q may land while this tile's output is written; false: over Q.
template <class Cfg, bool kOwnOutput = false>
struct Sm90WsSharedStorage {
  using Element = typename Cfg::Element;
  using Pipeline = cutlass::PipelineTmaAsync<Cfg::kStages>;
  static constexpr bool kOwnO = kOwnOutput;

  // 1024-byte alignment: the 128-byte swizzle of the wgmma / TMA layouts is on absolute addresses.
  // q holds Q, then (without kOwnO) each consumer warpgroup's rows of O once it has read its rows of Q for the
  // last time.
  cute::array_aligned<Element, Cfg::kSmemQOElems, 1024> q;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutK>, 1024> k;
  cute::array_aligned<Element, cute::cosize_v<typename Cfg::SmemLayoutV>, 1024> v;
  Sm90WsOptionalTile<Element, Cfg::kSmemPElems> p;
  Sm90WsOptionalTile<Element, kOwnOutput ? int(cute::cosize_v<typename Cfg::SmemLayoutO>) : 0> o;
  typename Pipeline::SharedStorage pipeline_k;  // full / empty barrier per K stage
  typename Pipeline::SharedStorage pipeline_v;
  // Q landed: one phase per tile of the CTA that loads Q (every tile of a persistent CTA: one without keys
  // loads no Q, and its phase is a plain arrival).
  cutlass::arch::ClusterTransactionBarrier barrier_q;
  // Persistent CTAs: every consumer thread is done with the Q buffer of the tile before (kOwnO: its last
  // Q K^T is complete; else its O is written out of the buffer), so the producer may load the next Q over it.
  // One phase per tile (kOwnO) or per tile with a successor.
  cutlass::arch::ClusterBarrier barrier_q_free;
};

// A persistent CTA's O gets a buffer of its own where that still fits the shared memory of an sm_90 CTA, with
// the 1 KB of static shared memory the launcher counts (fwd_sm90_ws_launch.cuh): D64 to D128, not D192 or D256.
template <class Cfg>
inline constexpr bool sm90_ws_fwd_own_output = sizeof(Sm90WsSharedStorage<Cfg, true>) + 1024 <= 227 * 1024;

}  // namespace jax_flash
