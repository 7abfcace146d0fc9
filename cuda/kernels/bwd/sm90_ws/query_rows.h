// The per-query statistics of a step's query block in shared memory, for the warp-specialized Hopper dK/dV
// kernel's P and dS math (transposed_math.h): lse (-inf for rows with no visible key and, written here, for
// rows past the sequence) and delta (0 past the sequence).
//
// Each consumer warpgroup fetches its own copy, one step ahead, with cp.async (no registers held while the
// loads are in flight): at step t its threads start step t + 1's rows into the other of two buffers; at the
// start of step t + 1 each thread waits for its own copies and a 128-thread named barrier publishes them to
// the warpgroup. The buffer written at step t was last read at step t - 1, which every thread of the
// warpgroup finished before it passed the barrier of step t. (The rows cannot be TMA boxes: a head's lse rows
// start at any element. A producer warp writing them behind the stages' mbarriers, the first version, was
// reported by compute-sanitizer's racecheck; a wait and a named barrier are a hand-off it models.)
#pragma once

#include <cute/arch/copy_sm80.hpp>
#include <cutlass/arch/barrier.h>

#include <cmath>

#include "kernels/bwd/dkdv_work.h"
#include "kernels/bwd/sm90_ws/named_barriers.h"
#include "kernels/params.h"

namespace jax_flash {

// kThreads: the threads that share one copy (fetch it together and meet at its barrier): one warpgroup (the
// swapped layout: each warpgroup its own copy), or both consumer warpgroups (the split layout, whose warpgroups
// need the same rows: one copy, one 256-thread barrier per step; the same argument for the buffers).
template <int kBlockM, int kBlockN, int kThreads = 128>
struct Sm90WsQueryRows {
  static constexpr int kWarpgroupThreads = 128;
  static constexpr int kValues = 2 * kBlockM;  // a step's lse rows, then its delta rows
  using Work = DkdvWork<kBlockM, kBlockN>;

  // One copy's buffers (by step parity).
  struct Storage {
    float lse[2][kBlockM];
    float delta[2][kBlockM];
  };

  // Thread wg_tidx (0 .. kThreads - 1 among the copy's threads) starts its copies of step `step`'s rows into
  // the step's buffer; rows past the sequence are stored directly.
  __device__ static void fetch(const AttnBwdParams& p, const float* delta_ws, const Work& w, int step,
                               Storage& st, int wg_tidx) {
    int bidh, m_block;
    w.query_tile(step, p.kv_group, bidh, m_block);
    const int row0 = m_block * kBlockM;
    const int rows_left = w.seq.seqlen_q - row0;
    const float* lse = p.lse + w.seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, w.bidb, bidh) + row0;
    const float* delta = delta_ws + w.seq.scratch_row(p, w.bidb, bidh) + row0;
#pragma unroll
    for (int i = wg_tidx; i < kValues; i += kThreads) {
      const bool is_lse = i < kBlockM;
      const int row = is_lse ? i : i - kBlockM;
      float* dst = is_lse ? &st.lse[step % 2][row] : &st.delta[step % 2][row];
      if (row < rows_left) {
        cute::SM80_CP_ASYNC_CACHEALWAYS<float>::copy(is_lse ? lse[row] : delta[row], *dst);
      } else {
        *dst = is_lse ? -INFINITY : 0.f;
      }
    }
    cute::cp_async_fence();
  }

  // This thread's copies landed, then every thread's of copy `copy` (the warpgroup's, or 0) are visible to all
  // of them (each copy its own barrier).
  __device__ static void publish(int copy) {
    cute::cp_async_wait<0>();
    cutlass::arch::NamedBarrier::sync(kThreads, int(Sm90WsBwdBarrier::kRowsPublished) + copy);
  }
};

}  // namespace jax_flash
