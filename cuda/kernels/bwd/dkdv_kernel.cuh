// Backward dK / dV: one CTA per (key block, kv head, sequence), the same skeleton for the mma.sync and the
// wgmma products (dkdv_products.h, chosen by the tile config's MmaKind).
//
// The CTA keeps its K and V tiles in shared memory and the fp32 dK, dV accumulators in registers, and walks
// every (query head of its kv group) x (query block that can see the key block) step (dkdv_work.h):
//   barrier  | prefetch Q, dO of the next step (double buffer; single-buffered configs load after the step)
//   S = Q K^T, dP = dO V^T             recomputed, (kBlockM, kBlockN)
//   P, dS                              math.h, staged in shared memory as the element type
//   barrier  | dV += P^T dO, dK += dS^T Q     P / dS / Q / dO read transposed from shared memory
//   [kAtomicDq] dQ += dS K             fp32 atomics into the workspace accumulator
// The GQA sum over query heads happens inside the CTA in a fixed order, so dK / dV are deterministic.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/bwd/dkdv_products_sm80.h"
#include "kernels/bwd/dkdv_products_sm90.h"
#include "kernels/bwd/dkdv_work.h"
#include "kernels/bwd/epilogue.h"
#include "kernels/bwd/loads.h"
#include "kernels/bwd/math.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/mma_sm90.h"
#include "kernels/common/smem.h"
#include "kernels/common/softmax.h"
#include "kernels/params.h"
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

template <class Cfg, bool kAtomicDq>
__device__ __forceinline__ void bwd_dkdv_tile(const AttnBwdParams& params, const float* __restrict__ delta,
                                              float* __restrict__ dq_accum) {
  using namespace cute;
  using Element = typename Cfg::Element;
  using Products = DkdvProducts<Cfg>;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  using TileMN = Shape<Int<kBlockM>, Int<kBlockN>>;
  auto& storage = shared_storage<typename Cfg::SharedStorage>();
  const int tid = threadIdx.x;

  const WorkTile tile = SingleTileScheduler<kBlockN, TileAxis::kKey, /*kReverse=*/false>::get_tile(params);
  if (!tile.valid()) return;
  const DkdvWork<kBlockM, kBlockN> work(params, tile);
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);

  auto load_q_do = [&](int step, int stage) {
    int bidh, m_block;
    work.query_tile(step, params.kv_group, bidh, m_block);
    load_q_do_tiles<Cfg, Products::kSkipChecksOnWholeTiles>(params, work.seq, work.bidb, bidh, m_block,
                                                            Products::q_stage(storage, stage),
                                                            Products::do_stage(storage, stage), tid);
  };
  if (work.steps > 0) {
    load_k_v_tiles<Cfg>(params, work.seq, work.bidb, work.bidhk, work.n0, Products::k_tile(storage),
                        Products::v_tile(storage), tid);
    load_q_do(0, 0);
    cp_async_fence();
  }

  auto products = Products::make(storage, tid);
  typename Cfg::TiledMmaSdP mma_sdp;
  Tensor tScS = rowcol_view(mma_sdp.get_thread_slice(tid).partition_C(make_identity_tensor(TileMN{})));
  constexpr int kRows = decltype(size<0>(tScS))::value;
  typename Cfg::TiledMmaDkDv mma_dkdv;
  Tensor acc_dv = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<Cfg::kHeadDimV>>{});
  Tensor acc_dk = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<Cfg::kHeadDim>>{});
  clear(acc_dv);
  clear(acc_dk);

  for (int step = 0; step < work.steps; ++step) {
    const int stage = Cfg::kDoubleBuffer ? (step & 1) : 0;
    int bidh, m_block;
    work.query_tile(step, params.kv_group, bidh, m_block);
    const int row0 = m_block * kBlockM;

    BwdRowStats<kRows> stats;
    stats.load(tScS, params.lse + work.seq.lse_offset(params.lse_batch_stride, params.lse_head_stride, work.bidb, bidh),
               delta + work.seq.scratch_row(params, work.bidb, bidh), row0, work.seq.seqlen_q);

    cp_async_wait<0>();
    publish_smem_writes<typename Cfg::MmaKind>();
    __syncthreads();  // this step's tiles landed; every warp is done with the other stage and with P / dS
    if (Cfg::kDoubleBuffer && step + 1 < work.steps) {
      load_q_do(step + 1, stage ^ 1);
      cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma_sdp, TileMN{});
    Tensor acc_dp = partition_fragment_C(mma_sdp, TileMN{});
    products.s_dp(acc_s, acc_dp, stage);
    Tensor scores = rowcol_view(acc_s);
    Tensor dscores = rowcol_view(acc_dp);
    const bool needs_mask = !work.mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, work.n_block);
    probs_and_dscores(scores, dscores, tScS, stats, score_scale, work.mask, needs_mask, row0, work.n0);

    products.store_p_ds(convert_fragment<Element>(acc_s), convert_fragment<Element>(acc_dp));
    publish_smem_writes<typename Cfg::MmaKind>();
    __syncthreads();
    products.dv_dk(acc_dv, acc_dk, stage);
    if constexpr (kAtomicDq) {
      float* dq_rows = dq_accum + (work.seq.scratch_row(params, work.bidb, bidh) + row0) * params.head_dim;
      products.dq(dq_rows, work.seq.seqlen_q - row0, params.head_dim);
    }

    if (!Cfg::kDoubleBuffer && step + 1 < work.steps) {
      __syncthreads();  // every warp is done reading Q / dO
      load_q_do(step + 1, 0);
      cp_async_fence();
    }
  }

  store_dk_dv<Cfg>(params, work.seq, work.bidb, work.bidhk, work.n0, mma_dkdv.get_thread_slice(tid), acc_dk, acc_dv);
}

template <class Cfg, bool kAtomicDq>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_dkdv_kernel(const AttnBwdParams params, const float* __restrict__ delta, float* __restrict__ dq_accum) {
  // wgmma configs have code only in the sm_90a pass; the launcher never picks them elsewhere.
  if constexpr (Cfg::MmaKind::kNeedsSm90a && !sm90a_pass()) return;
  else bwd_dkdv_tile<Cfg, kAtomicDq>(params, delta, dq_accum);
}

// The Hopper configs' entry under its own name (launchers and profiles tell the two apart): the same skeleton,
// dQ always summed with atomics.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_dkdv_kernel_sm90(const AttnBwdParams params, const float* __restrict__ delta, float* __restrict__ dq_accum) {
  static_assert(Cfg::MmaKind::kNeedsSm90a, "bwd_dkdv_kernel_sm90 takes a wgmma config");
  if constexpr (!sm90a_pass()) return;
  else bwd_dkdv_tile<Cfg, /*kAtomicDq=*/true>(params, delta, dq_accum);
}

}  // namespace jax_flash
