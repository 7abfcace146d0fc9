// Backward dQ without atomics: one CTA per (query block, query head, sequence), shaped like the forward.
//
// Warps are stacked along the queries, so each warp holds whole rows of S, dP and dS; the CTA walks the key
// blocks its rows can see (K, V double-buffered through cp.async):
//   S = Q K^T, dP = dO V^T   (kBlockM, kBlockN), recomputed (sdp_sm80.h, the dK/dV kernel's products)
//   dS                       math.h, in registers
//   dQ += dS K               dS as the A operand straight from the accumulator registers, K^T transposed
// Each dQ element is summed by one thread in a fixed order: deterministic.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/bwd/epilogue.h"
#include "kernels/bwd/loads.h"
#include "kernels/bwd/math.h"
#include "kernels/bwd/sdp_sm80.h"
#include "kernels/common/copy.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mask.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/common/seqlen.h"
#include "kernels/common/smem.h"
#include "kernels/common/softmax.h"
#include "kernels/common/tile_atoms.h"
#include "kernels/params.h"
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

template <class Cfg>
__device__ __forceinline__ void bwd_dq_tile(const AttnBwdParams& params, const float* __restrict__ delta) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  using TileMN = Shape<Int<kBlockM>, Int<kBlockN>>;
  auto& storage = shared_storage<typename Cfg::SharedStorage>();
  const int tid = threadIdx.x;

  // Last query blocks first: under a causal mask they see the most keys, so the long CTAs start early.
  const WorkTile tile = SingleTileScheduler<kBlockM, TileAxis::kQuery, /*kReverse=*/true>::get_tile(params);
  if (!tile.valid()) return;
  const int m_block = tile.block;
  const int bidb = tile.bidb;
  const int bidh = tile.head;
  const int bidhk = kv_head_of(bidh, params.kv_group);

  const SeqlenInfo seq = SeqlenInfo::make(params, bidb);
  const AttnMask mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right);
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);
  int n_min, n_max;
  mask.template n_block_range<kBlockM, kBlockN>(m_block, n_min, n_max);
  const int row0 = m_block * kBlockM;
  const int rows_left = seq.seqlen_q - row0;

  Tensor sQ = make_tensor(make_smem_ptr(storage.q.data()), typename Cfg::SmemLayoutQ{});
  Tensor sDo = make_tensor(make_smem_ptr(storage.dout.data()), typename Cfg::SmemLayoutDo{});
  Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{});  // stage 0
  Tensor sKt = make_tensor(sK.data(), typename Cfg::SmemLayoutKt{});
  Tensor sV = make_tensor(make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{});

  // K and V of key block n_block into buffer `stage`, bounds checks only on ragged tiles.
  typename Cfg::GmemCopyQK gmem_copy_qk;
  typename Cfg::GmemCopyV gmem_copy_v;
  auto gmem_thr_qk = gmem_copy_qk.get_thread_slice(tid);
  auto gmem_thr_v = gmem_copy_v.get_thread_slice(tid);
  Tensor tKcK = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tVcV = gmem_thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  const Element* k_head = static_cast<const Element*>(params.k) +
                          seq.k_offset(params.k_batch_stride, params.k_row_stride, bidb) +
                          int64_t(bidhk) * params.k_head_stride;
  const Element* v_head = static_cast<const Element*>(params.v) +
                          seq.k_offset(params.v_batch_stride, params.v_row_stride, bidb) +
                          int64_t(bidhk) * params.v_head_stride;
  auto load_k_v = [&](int n_block, int stage) {
    const int keys_left = seq.seqlen_k - n_block * kBlockN;
    Tensor gK = make_tensor(make_gmem_ptr(k_head + int64_t(n_block) * kBlockN * params.k_row_stride),
                            Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_stride(params.k_row_stride, _1{}));
    Tensor gV = make_tensor(make_gmem_ptr(v_head + int64_t(n_block) * kBlockN * params.v_row_stride),
                            Shape<Int<kBlockN>, Int<kHeadDimV>>{}, make_stride(params.v_row_stride, _1{}));
    const bool whole = keys_left >= kBlockN && params.head_dim == kHeadDim && params.head_dim_v == kHeadDimV;
    load_tile(gmem_copy_qk, gmem_thr_qk.partition_S(gK), gmem_thr_qk.partition_D(shifted(sK, stage * Cfg::kKElems)),
              tKcK, keys_left, params.head_dim, whole);
    load_tile(gmem_copy_v, gmem_thr_v.partition_S(gV), gmem_thr_v.partition_D(shifted(sV, stage * Cfg::kVElems)),
              tVcV, keys_left, params.head_dim_v, whole);
  };

  if (n_min < n_max) {
    load_q_do_tiles<Cfg, /*kSkipChecksOnWholeTiles=*/false>(params, seq, bidb, bidh, m_block, sQ, sDo, tid);
    load_k_v(n_min, 0);
    cp_async_fence();
  }

  typename Cfg::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  auto s_dp = make_sdp_sm80<Element, typename Cfg::TiledMma, typename Cfg::SmemCopyAtom, kBlockM, kBlockN, kHeadDim,
                            kHeadDimV>(sQ, sDo, sK, sV, tid);
  Tensor tdQrKt = make_tensor<Element>(partition_shape_B(mma, Shape<Int<kHeadDim>, Int<kBlockN>>{}));
  auto smem_copy_bt = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma);
  Tensor tdQsKt = smem_copy_bt.get_thread_slice(tid).partition_S(sKt);
  Tensor tScS = rowcol_view(thr_mma.partition_C(make_identity_tensor(TileMN{})));
  constexpr int kRows = decltype(size<0>(tScS))::value;

  Tensor acc_dq = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc_dq);

  BwdRowStats<kRows> stats;
  stats.load(tScS, params.lse + seq.lse_offset(params.lse_batch_stride, params.lse_head_stride, bidb, bidh),
             delta + seq.scratch_row(params, bidb, bidh), row0, seq.seqlen_q);

  for (int n_block = n_min; n_block < n_max; ++n_block) {
    const int stage = (n_block - n_min) & 1;
    cp_async_wait<0>();
    __syncthreads();  // this block's K / V landed; every warp is done with the other stage
    if (n_block + 1 < n_max) {
      load_k_v(n_block + 1, stage ^ 1);
      cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma, TileMN{});
    Tensor acc_dp = partition_fragment_C(mma, TileMN{});
    s_dp(acc_s, acc_dp, 0, 0, stage * Cfg::kKElems, stage * Cfg::kVElems);
    Tensor scores = rowcol_view(acc_s);
    Tensor dscores = rowcol_view(acc_dp);
    const bool needs_mask = !mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, n_block);
    probs_and_dscores(scores, dscores, tScS, stats, score_scale, mask, needs_mask, row0, n_block * kBlockN);

    Tensor rDs = convert_fragment<Element>(acc_dp);
    Tensor tdQrDs = make_tensor(rDs.data(), acc_as_a_layout(rDs.layout()));
    gemm_rs(acc_dq, tdQrDs, tdQrKt, shifted(tdQsKt, stage * Cfg::kKElems), mma, smem_copy_bt);
  }

  // Rows that see no key keep their zero accumulators.
  Tensor tdQc = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Element* dq = static_cast<Element*>(params.dq) + seq.q_offset(params.dq_batch_stride, params.dq_row_stride, bidb) +
                int64_t(row0) * params.dq_row_stride + int64_t(bidh) * params.dq_head_stride;
  store_acc_rows(acc_dq, tdQc, dq, params.dq_row_stride, rows_left, params.head_dim, params.scale);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_dq_kernel(const AttnBwdParams params, const float* __restrict__ delta) {
  bwd_dq_tile<Cfg>(params, delta);
}

}  // namespace jax_flash
