// Named (hardware) barriers of the warp-specialized Hopper forward, and the pingpong between its consumer
// warpgroups.
//
// Ids are CUTLASS user ids (cutlass::arch::NamedBarrier adds its reserved count); __syncthreads keeps id 0.
#pragma once

#include <cutlass/arch/barrier.h>

namespace jax_flash {

enum class Sm90WsBarrier : int {
  kTurnFirst = 0,      // kTurnFirst + w: consumer warpgroup w may issue its GEMMs (up to 3 warpgroups)
  kOutputStaged = 3,   // every consumer warpgroup's rows of O are in shared memory
  kVTailZeroed = 4,    // packed: the rows of V past the sequence are zeroed (mainloop_tma_ws.h)
  kPStoredFirst = 5,   // kPStoredFirst + w: warpgroup w's rows of P are in shared memory (Cfg::kPvFromSmem)
};

// Pingpong: the consumer warpgroups issue the GEMMs of a mainloop step in turn (0, 1, 0, 1, ... or 0, 1, 2, 0, ...),
// so the tensor cores run one warpgroup's GEMMs while the others do their softmax. Warpgroup w waits on its
// barrier (sync), issues, then opens the next warpgroup's barrier (arrive); each barrier counts two warpgroups,
// whatever their number: the one waiting on it and the one before it, which opens it (256 threads).
// Every warpgroup takes the same number of turns (the tile's key steps), and the counts balance: the last
// warpgroup opens warpgroup 0's first turn up front and skips the arrive after its own last turn, so no
// barrier is left with a pending arrival when the CTA exits. kEnabled = false: no-ops.
template <bool kEnabled, int kWarpgroups>
struct WarpgroupTurns {
  int warpgroup;  // this consumer warpgroup, 0 .. kWarpgroups - 1

  __device__ void sync_own() const {
    if constexpr (kEnabled) cutlass::arch::NamedBarrier::sync(256, barrier(warpgroup));
  }
  __device__ void open_next(bool last_turn) const {
    if constexpr (kEnabled) {
      if (warpgroup == kWarpgroups - 1 && last_turn) return;
      cutlass::arch::NamedBarrier::arrive(256, barrier((warpgroup + 1) % kWarpgroups));
    }
  }
  // Before the first turn, when there will be at least one.
  __device__ void open_first() const {
    if constexpr (kEnabled) {
      if (warpgroup == kWarpgroups - 1) cutlass::arch::NamedBarrier::arrive(256, barrier(0));
    }
  }

 private:
  static_assert(kWarpgroups >= 2 && kWarpgroups <= 3);
  __device__ static int barrier(int w) { return int(Sm90WsBarrier::kTurnFirst) + w; }
};

}  // namespace jax_flash
