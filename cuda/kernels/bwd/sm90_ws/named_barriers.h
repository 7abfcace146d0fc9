// Named (hardware) barriers of the warp-specialized Hopper dK/dV kernel. The first three are meetings of the two
// consumer warpgroups (256 threads); both take every one of them the same number of times, since whether a
// barrier is taken depends only on the CTA's tile and step, which both warpgroups share. kRowsPublished + w is
// consumer warpgroup w's own (128 threads; the split layout's one copy of the rows: kRowsPublished, 256 threads).
// kDqBlockFree / kDqBlockFull hand each step's dQ block between the consumers and the producer's dq writer warp
// (288 threads, dq_accum_blocks.h); the TMA warp never joins. kDqTurn: the consumers alone (256 threads).
//
// Ids are CUTLASS user ids (cutlass::arch::NamedBarrier adds its reserved count); __syncthreads keeps id 0.
#pragma once

#include <cutlass/arch/barrier.h>

namespace jax_flash {

enum class Sm90WsBwdBarrier : int {
  kKvTailZeroed = 0,   // packed: the rows of K and V past the sequence are zeroed (once per CTA)
  kQdoTailZeroed = 1,  // packed: the rows of this step's Q and dO past the sequence are zeroed
  kDsStored = 2,       // every consumer warpgroup's dS^T (split layout: P and dS) of this step is in shared
                       // memory (each step)
  kRowsPublished = 3,  // + w: warpgroup w's lse / delta rows of this step are in shared memory (each step;
                       // query_rows.h); ids 3 and 4 (the split layout: id 3 alone, its one copy, 256 threads)
  kDqBlockFree = 5,    // the writer's bulk add has read the shared dQ block: the consumers may store the next
  kDqBlockFull = 6,    // the consumers' dQ of this step is in the shared block, fenced for the bulk copy
  kDqTurn = 7,         // split layout without the shared dQ block, ordered sums: the consumers' turn at the
                       // step's dQ block has come / their adds are issued (256 threads, dq_accum_blocks.h)
};
// The hardware has 16 named barriers; CUTLASS reserves the first ReservedNamedBarrierCount.
static_assert(int(Sm90WsBwdBarrier::kDqTurn) + int(cutlass::arch::NamedBarrier::ReservedNamedBarrierCount) < 16,
              "the named barrier ids must fit the hardware's 16");

}  // namespace jax_flash
