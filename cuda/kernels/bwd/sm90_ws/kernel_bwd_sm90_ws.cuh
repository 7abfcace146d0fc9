// The warp-specialized Hopper dK/dV kernel (sm_90a), FlashAttention-3's design: scheduler x mainloop x epilogue.
//
//   warpgroup 0 (producer, 24 registers): warp 0's lane 0 issues the TMA loads of K, V (once) and Q, dO (per
//                                         step; tma_loads.h, load_tiles); with kDq and the shared dQ block
//                                         (Cfg::kDqSharedBlock), warp 1 adds each step's dQ block to the
//                                         workspace (dq_accum_blocks.h); the rest idle;
//   warpgroups 1, 2 (consumers, 240 registers): the products per step, each warpgroup fetching its own lse /
//                                         delta rows a step ahead (query_rows.h), in one of two layouts
//                                         (Cfg::kSplit): the swapped one (mainloop_tma_ws.h, D <= 128), 64 keys
//                                         per warpgroup with dK / dV in its registers; or the split one
//                                         (mainloop_tma_ws_split.h, D192 / D256), the CTA's 64 keys shared and
//                                         every product split between the warpgroups. dQ goes to warp 1 through
//                                         the shared block, or (split, no room for the block) by float4 atomics
//                                         into the same workspace blocks, in their turn when ordered; kDq
//                                         false: no dQ. Then the backward's epilogue writes dK (times scale)
//                                         and dV (bwd/epilogue.h, store_dk_dv).
// One CTA per (key block, kv head, sequence) from the single-tile scheduler; a CTA walks the (query head of its
// kv group, query block) steps that can see its keys (bwd/dkdv_work.h), so the GQA sum of dK / dV happens in
// the CTA in a fixed order (dK / dV deterministic; dQ as the key blocks' CTAs add it into the same workspace
// blocks in whatever order they run is not, in key-block order behind semaphores it is: kDqOrdered).
// Semantics are the other backward kernels': bottom-right aligned causal / window mask, softcap, packed
// layouts; keys that no query sees get dK = dV = 0. Expects delta (bwd_delta_kernel) and, with kDq, a zeroed dq
// accumulator in blocks, whose sums attn_bwd_dq_blocks_convert_kernel turns into dq (dq_accum_blocks.h).
// The mode without dQ (kDq false, then the dq kernel, kernels/bwd/dq_kernel.cuh) only the check tool runs now,
// to time the two deterministic ways.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/sm90_pipeline.hpp>

#include <type_traits>

#include "kernels/bwd/dkdv_work.h"
#include "kernels/bwd/epilogue.h"
#include "kernels/bwd/sm90_ws/dq_accum_blocks.h"
#include "kernels/bwd/sm90_ws/mainloop_tma_ws.h"
#include "kernels/bwd/sm90_ws/mainloop_tma_ws_split.h"
#include "kernels/common/warp_specialized.h"
#include "kernels/params.h"
#include "kernels/sched/longest_first_scheduler.h"
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

// The mainloop of a config: the swapped layout (mainloop_tma_ws.h, D <= 128) or the split one
// (mainloop_tma_ws_split.h, large head dims); each names its shared storage.
template <class Cfg>
using Sm90WsBwdMainloopOf = std::conditional_t<Cfg::kSplit, Sm90WsBwdSplitMainloop<Cfg>, Sm90WsBwdMainloop<Cfg>>;
template <class Cfg>
using Sm90WsBwdStorageOf = typename Sm90WsBwdMainloopOf<Cfg>::Storage;

template <class Cfg>
struct Sm90WsBwdKernelParams {
  AttnBwdParams attn;
  typename Sm90WsBwdMainloopOf<Cfg>::Params mainloop;
};

// Ordered dQ sums launch the key blocks last first: under a causal mask key block n's first query block is
// about n x kBlockN / kBlockM, so key block n + 1 reaches each of its query blocks before key block n does and
// the adds, in the launch order, pipeline instead of every CTA waiting on key block 0 (which sees them all).
// Otherwise ascending: the CTAs with the most steps under a causal mask start first; with
// kSm90WsBwdLongestFirst the dense causal grid takes them longest first across the (kv head, sequence) pairs
// of a group (longest_first_scheduler.h). That order is off in the library until measured: the check tool
// times it when built with -DJAX_FLASH_SM90_WS_BWD_LONGEST_FIRST=1.
#ifndef JAX_FLASH_SM90_WS_BWD_LONGEST_FIRST
#define JAX_FLASH_SM90_WS_BWD_LONGEST_FIRST 0
#endif
inline constexpr bool kSm90WsBwdLongestFirst = JAX_FLASH_SM90_WS_BWD_LONGEST_FIRST;
template <class Cfg, bool kDqOrdered>
using Sm90WsBwdScheduler =
    std::conditional_t<kSm90WsBwdLongestFirst && !kDqOrdered,
                       LongestFirstScheduler<Cfg::kBlockN, TileAxis::kKey, /*kReverse=*/false>,
                       SingleTileScheduler<Cfg::kBlockN, TileAxis::kKey, /*kReverse=*/kDqOrdered>>;

template <class Cfg, bool kSoftcap, bool kDq, bool kDqOrdered>
__device__ __forceinline__ void attn_bwd_dkdv_sm90_ws_cta(const Sm90WsBwdKernelParams<Cfg>& kp) {
  using namespace cute;
  using Mainloop = Sm90WsBwdMainloopOf<Cfg>;
  using Storage = Sm90WsBwdStorageOf<Cfg>;
  using Pipeline = typename Mainloop::Pipeline;
  static_assert(!kDqOrdered || kDq, "ordered dQ sums need the dQ sums");
  const AttnBwdParams& p = kp.attn;

  extern __shared__ __align__(1024) char smem[];
  Storage& st = *reinterpret_cast<Storage*>(smem);

  using Scheduler = Sm90WsBwdScheduler<Cfg, kDqOrdered>;
  const WorkTile tile = Scheduler::get_tile(p);
  if (!tile.valid()) return;
  const typename Mainloop::Work w(p, tile);

  const bool producer = warpgroup_index() == 0;

  if (threadIdx.x == 0) st.barrier_kv.init(/*arrive_count=*/1);
  // Q / dO stages are full once their TMA bytes landed, free again after every consumer thread's release.
  auto pipeline_params = [&](int bytes) {
    return ws_pipeline_params<Pipeline>(bytes, producer, Cfg::kMmaThreads);
  };
  // The constructors initialize the barriers (warp 0) and fence the initialization.
  Pipeline pipe_q(st.pipeline_q, pipeline_params(Cfg::kBytesQ), Shape<_1, _1, _1>{});
  Pipeline pipe_do(st.pipeline_do, pipeline_params(Cfg::kBytesDo), Shape<_1, _1, _1>{});
  __syncthreads();

  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    const int warp = __shfl_sync(0xffffffffu, int(threadIdx.x) / 32, 0);
    if (w.steps > 0 && threadIdx.x == 0) {
      Mainloop::load_tiles(kp.mainloop, p, st, pipe_q, pipe_do, w);
    } else if constexpr (kDq && Cfg::kDqSharedBlock) {
      if (w.steps > 0 && warp == 1) {
        Sm90WsDqAccumBlocks<Cfg>::template write<kDqOrdered>(p, kp.mainloop.dq_accum, kp.mainloop.dq_semaphores,
                                                             w, Scheduler::launches_descending(p), st.dq.data());
      }
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMmaRegs>();
    const int tidx = int(threadIdx.x) - 128;
    typename Cfg::TiledMmaDk mma_dk;
    typename Cfg::TiledMmaDv mma_dv;
    Tensor acc_dk = partition_fragment_C(mma_dk, Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDim>>{});
    Tensor acc_dv = partition_fragment_C(mma_dv, Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDimV>>{});
    clear(acc_dk);
    clear(acc_dv);
    if (w.steps > 0) {
      if constexpr (Cfg::kSplit) {  // its ordered sums without the shared block are the consumers'
        Mainloop::template mma<kSoftcap, kDq, kDqOrdered && !Cfg::kDqSharedBlock>(
            kp.mainloop, p, st, pipe_q, pipe_do, w, Scheduler::launches_descending(p), tidx, acc_dk, acc_dv);
      } else {
        Mainloop::template mma<kSoftcap, kDq>(kp.mainloop, p, st, pipe_q, pipe_do, w, tidx, acc_dk, acc_dv);
      }
    }
    // Straight from registers, each with its product's partition.
    store_dk_dv<Cfg>(p, w.seq, w.bidb, w.bidhk, w.n0, mma_dk.get_thread_slice(tidx), acc_dk,
                     mma_dv.get_thread_slice(tidx), acc_dv);
  }
}

// kSoftcap: a separate instantiation keeps the tanh out of the uncapped kernel's mainloop. kDq: dQ summed into
// the workspace accumulator, or not at all (the check tool's comparison). kDqOrdered (with kDq): the sums in
// key-block order, bitwise repeatable: the deterministic backward (dq_accum_blocks.h).
template <class Cfg, bool kSoftcap, bool kDq, bool kDqOrdered = false>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    attn_bwd_dkdv_sm90_ws_kernel(const __grid_constant__ Sm90WsBwdKernelParams<Cfg> kp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  attn_bwd_dkdv_sm90_ws_cta<Cfg, kSoftcap, kDq, kDqOrdered>(kp);
#endif
}

}  // namespace jax_flash
