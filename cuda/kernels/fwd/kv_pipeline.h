// The forward's cp.async K / V pipeline (dense forward, paged forward with cp.async loads): kStages buffers of
// K and V each, one cp.async group per tile, issued in the order K0 V0 K1 V1 ...:
//   prologue: Q, K0, V0, ..., K[S-2], V[S-2], K[S-1]
//   step t:   wait K[t]; barrier; load V[t+S-1]  |  S = Q K[t]^T; softcap; mask
//             wait V[t]; barrier; load K[t+S]    |  online softmax; O += P V[t]
// so V[t] arrives under the QK^T of step t and K[t+1] under the softmax and PV of step t. The barrier before
// each load also proves every warp is done reading the buffer being overwritten. The loads are the caller's
// (contiguous or gathered rows): load_k(t) / load_v(t) fill the buffers of tile t.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/mma_sm90.h"

namespace jax_flash {

template <int kStages, class MmaKind>
struct CpAsyncKvPipeline {
  // Groups allowed in flight when waiting for the oldest tile still needed.
  static constexpr int kGroupsInFlight = 2 * kStages - 2;
  int n_tiles;

  // After the caller's Q group: K and V of the first stages, one group each (empty groups past n_tiles keep
  // the counts of the waits right).
  template <class LoadK, class LoadV>
  __device__ __forceinline__ void prologue(LoadK&& load_k, LoadV&& load_v) const {
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      if (s < n_tiles) load_k(s);
      cute::cp_async_fence();
      if (s + 1 < kStages) {
        if (s < n_tiles) load_v(s);
        cute::cp_async_fence();
      }
    }
  }

  // Before S = Q K[t]^T: K[t] has landed and is visible to every warp (and to wgmma's async proxy); V[t+S-1]
  // goes into the buffer step t-1 read.
  template <class LoadV>
  __device__ __forceinline__ void wait_k(int t, LoadV&& load_v) const {
    cute::cp_async_wait<kGroupsInFlight>();
    publish_smem_writes<MmaKind>();
    __syncthreads();
    if (t + kStages - 1 < n_tiles) load_v(t + kStages - 1);
    cute::cp_async_fence();
  }

  // Before O += P V[t]: V[t] has landed; K[t+S] goes into the buffer this step's QK^T read.
  template <class LoadK>
  __device__ __forceinline__ void wait_v(int t, LoadK&& load_k) const {
    cute::cp_async_wait<kGroupsInFlight>();
    publish_smem_writes<MmaKind>();
    __syncthreads();
    if (t + kStages < n_tiles) load_k(t + kStages);
    cute::cp_async_fence();
  }
};

}  // namespace jax_flash
