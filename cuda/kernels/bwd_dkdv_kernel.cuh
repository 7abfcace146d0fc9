// Backward dK / dV: one CTA per (key block, kv head, sequence).
//
// The CTA keeps its K and V tiles in shared memory and the fp32 dK, dV accumulators in registers, and walks
// every (query head of its kv group) x (query block that can see the key block) step:
//   S = Q K^T, dP = dO V^T             recomputed, (kBlockM, kBlockN)
//   P, dS                              bwd_math.h, staged in shared memory as the element type
//   dV += P^T dO, dK += dS^T Q         P / dS / Q / dO read transposed from shared memory (ldmatrix.trans)
//   [kAtomicDq] dQ += dS K             fp32 atomics into the workspace accumulator
// The GQA sum over query heads happens inside the CTA in a fixed order, so dK / dV are deterministic.
// Q and dO of the next step are prefetched (cp.async) into a second buffer while this one computes.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/block_info.h"
#include "kernels/bwd_copy.h"
#include "kernels/bwd_epilogue.h"
#include "kernels/bwd_math.h"
#include "kernels/bwd_tile_config.h"
#include "kernels/copy.h"
#include "kernels/fragment.h"
#include "kernels/gemm.h"
#include "kernels/mask.h"
#include "kernels/params.h"
#include "kernels/softmax.h"

namespace jax_flash {

template <class Cfg, bool kAtomicDq>
__global__ void __launch_bounds__(Cfg::kNThreads, 1)
    bwd_dkdv_kernel(const AttnBwdParams params, const float* __restrict__ delta, float* __restrict__ dq_accum) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  using TileMN = Shape<Int<kBlockM>, Int<kBlockN>>;

  extern __shared__ __align__(128) char smem_raw[];
  Element* smem = reinterpret_cast<Element*>(smem_raw);

  const int tid = threadIdx.x;
  const TileCoord tile = schedule_tile<kBlockN, TileAxis::kKey>(params, /*reverse=*/false);
  if (tile.bidb < 0) return;
  const int n_block = tile.block;
  const int bidb = tile.bidb;
  const int bidhk = blockIdx.y;

  const SeqlenInfo seq = SeqlenInfo::make(params, bidb);
  const AttnMask mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right);
  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);
  int m_min, m_max;
  mask.template m_block_range<kBlockM, kBlockN>(n_block, m_min, m_max);
  const int blocks_m = m_max - m_min;
  const int steps = blocks_m * params.kv_group;  // (query head, query block) pairs, head-major
  const int n0 = n_block * kBlockN;
  const int keys_left = seq.seqlen_k - n0;

  // Shared-memory tiles (stage 0 of Q / dO; shifted() reaches stage 1).
  Tensor sQ = make_tensor(make_smem_ptr(smem), typename Cfg::SmemLayoutQ{});
  Tensor sQt = make_tensor(make_smem_ptr(smem), typename Cfg::SmemLayoutQt{});
  Tensor sDo = make_tensor(make_smem_ptr(smem + Cfg::kOffDo), typename Cfg::SmemLayoutDo{});
  Tensor sDot = make_tensor(make_smem_ptr(smem + Cfg::kOffDo), typename Cfg::SmemLayoutDot{});
  Tensor sK = make_tensor(make_smem_ptr(smem + Cfg::kOffK), typename Cfg::SmemLayoutK{});
  Tensor sKt = make_tensor(make_smem_ptr(smem + Cfg::kOffK), typename Cfg::SmemLayoutKt{});
  Tensor sV = make_tensor(make_smem_ptr(smem + Cfg::kOffV), typename Cfg::SmemLayoutV{});
  Tensor sP = make_tensor(make_smem_ptr(smem + Cfg::kOffP), typename Cfg::SmemLayoutPdS{});
  Tensor sPt = make_tensor(make_smem_ptr(smem + Cfg::kOffP), typename Cfg::SmemLayoutPdSt{});
  Tensor sDs = make_tensor(make_smem_ptr(smem + Cfg::kOffDs), typename Cfg::SmemLayoutPdS{});
  Tensor sDst = make_tensor(make_smem_ptr(smem + Cfg::kOffDs), typename Cfg::SmemLayoutPdSt{});

  // Global -> shared copies (zero-filled past the sequence and the real head dims).
  typename Cfg::GmemCopyQK gmem_copy_qk;
  typename Cfg::GmemCopyV gmem_copy_v;
  auto gmem_thr_qk = gmem_copy_qk.get_thread_slice(tid);
  auto gmem_thr_v = gmem_copy_v.get_thread_slice(tid);
  Tensor tQcQ = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tDocDo = gmem_thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimV>>{}));

  auto load_q_do = [&](int step, int stage) {
    const int g = step / blocks_m;
    const int m_block = m_min + step - g * blocks_m;
    const int bidh = bidhk * params.kv_group + g;
    const int rows_left = seq.seqlen_q - m_block * kBlockM;
    const Element* q = static_cast<const Element*>(params.q) +
                       seq.q_offset(params.q_batch_stride, params.q_row_stride, bidb) +
                       int64_t(m_block) * kBlockM * params.q_row_stride + int64_t(bidh) * params.q_head_stride;
    const Element* dout = static_cast<const Element*>(params.dout) +
                          seq.q_offset(params.dout_batch_stride, params.dout_row_stride, bidb) +
                          int64_t(m_block) * kBlockM * params.dout_row_stride +
                          int64_t(bidh) * params.dout_head_stride;
    Tensor gQ = make_tensor(make_gmem_ptr(q), Shape<Int<kBlockM>, Int<kHeadDim>>{},
                            make_stride(params.q_row_stride, _1{}));
    Tensor gDo = make_tensor(make_gmem_ptr(dout), Shape<Int<kBlockM>, Int<kHeadDimV>>{},
                             make_stride(params.dout_row_stride, _1{}));
    const bool whole = rows_left >= kBlockM && params.head_dim == kHeadDim && params.head_dim_v == kHeadDimV;
    load_tile(gmem_copy_qk, gmem_thr_qk.partition_S(gQ), gmem_thr_qk.partition_D(shifted(sQ, stage * Cfg::kQElems)),
              tQcQ, rows_left, params.head_dim, whole);
    load_tile(gmem_copy_v, gmem_thr_v.partition_S(gDo),
              gmem_thr_v.partition_D(shifted(sDo, stage * Cfg::kDoElems)), tDocDo, rows_left, params.head_dim_v,
              whole);
  };

  if (steps > 0) {
    const Element* k = static_cast<const Element*>(params.k) +
                       seq.k_offset(params.k_batch_stride, params.k_row_stride, bidb) +
                       int64_t(n0) * params.k_row_stride + int64_t(bidhk) * params.k_head_stride;
    const Element* v = static_cast<const Element*>(params.v) +
                       seq.k_offset(params.v_batch_stride, params.v_row_stride, bidb) +
                       int64_t(n0) * params.v_row_stride + int64_t(bidhk) * params.v_head_stride;
    Tensor gK = make_tensor(make_gmem_ptr(k), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                            make_stride(params.k_row_stride, _1{}));
    Tensor gV = make_tensor(make_gmem_ptr(v), Shape<Int<kBlockN>, Int<kHeadDimV>>{},
                            make_stride(params.v_row_stride, _1{}));
    load_tile_zfill<true>(gmem_copy_qk, gmem_thr_qk.partition_S(gK), gmem_thr_qk.partition_D(sK),
                    gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{})),
                    keys_left, params.head_dim);
    load_tile_zfill<true>(gmem_copy_v, gmem_thr_v.partition_S(gV), gmem_thr_v.partition_D(sV),
                    gmem_thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDimV>>{})),
                    keys_left, params.head_dim_v);
    load_q_do(0, 0);
    cp_async_fence();
  }

  // S, dP: (kBlockM, kBlockN), both operands read straight from shared memory.
  typename Cfg::TiledMmaSdP mma_sdp;
  auto thr_sdp = mma_sdp.get_thread_slice(tid);
  Tensor tSrQ = make_tensor<Element>(partition_shape_A(mma_sdp, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tSrK = make_tensor<Element>(partition_shape_B(mma_sdp, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tSrDo = make_tensor<Element>(partition_shape_A(mma_sdp, Shape<Int<kBlockM>, Int<kHeadDimV>>{}));
  Tensor tSrV = make_tensor<Element>(partition_shape_B(mma_sdp, Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  auto smem_copy_a_sdp = make_tiled_copy_A(typename Cfg::SmemCopyAtom{}, mma_sdp);
  auto smem_copy_b_sdp = make_tiled_copy_B(typename Cfg::SmemCopyAtom{}, mma_sdp);
  Tensor tSsQ = smem_copy_a_sdp.get_thread_slice(tid).partition_S(sQ);
  Tensor tSsDo = smem_copy_a_sdp.get_thread_slice(tid).partition_S(sDo);
  Tensor tSsK = smem_copy_b_sdp.get_thread_slice(tid).partition_S(sK);
  Tensor tSsV = smem_copy_b_sdp.get_thread_slice(tid).partition_S(sV);
  Tensor tScS = rowcol_view(thr_sdp.partition_C(make_identity_tensor(TileMN{})));
  constexpr int kRows = decltype(size<0>(tScS))::value;

  // P, dS registers -> shared memory.
  auto smem_store_pds = make_tiled_copy_C(typename Cfg::SmemStoreAtomPdS{}, mma_sdp);
  auto thr_store_pds = smem_store_pds.get_thread_slice(tid);
  Tensor tPsP = thr_store_pds.partition_D(sP);
  Tensor tPsDs = thr_store_pds.partition_D(sDs);

  // dV, dK: (kBlockN, head dim); A = P^T / dS^T, B = dO^T / Q^T, all transposed reads.
  typename Cfg::TiledMmaDkDv mma_dkdv;
  auto thr_dkdv = mma_dkdv.get_thread_slice(tid);
  Tensor tdVrPt = make_tensor<Element>(partition_shape_A(mma_dkdv, Shape<Int<kBlockN>, Int<kBlockM>>{}));
  Tensor tdVrDot = make_tensor<Element>(partition_shape_B(mma_dkdv, Shape<Int<kHeadDimV>, Int<kBlockM>>{}));
  Tensor tdKrDst = make_tensor<Element>(partition_shape_A(mma_dkdv, Shape<Int<kBlockN>, Int<kBlockM>>{}));
  Tensor tdKrQt = make_tensor<Element>(partition_shape_B(mma_dkdv, Shape<Int<kHeadDim>, Int<kBlockM>>{}));
  auto smem_copy_a_dkdv = make_tiled_copy_A(typename Cfg::SmemCopyAtomT{}, mma_dkdv);
  auto smem_copy_b_dkdv = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma_dkdv);
  Tensor tdVsPt = smem_copy_a_dkdv.get_thread_slice(tid).partition_S(sPt);
  Tensor tdKsDst = smem_copy_a_dkdv.get_thread_slice(tid).partition_S(sDst);
  Tensor tdVsDot = smem_copy_b_dkdv.get_thread_slice(tid).partition_S(sDot);
  Tensor tdKsQt = smem_copy_b_dkdv.get_thread_slice(tid).partition_S(sQt);
  Tensor acc_dv = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<kHeadDimV>>{});
  Tensor acc_dk = partition_fragment_C(mma_dkdv, Shape<Int<kBlockN>, Int<kHeadDim>>{});
  clear(acc_dv);
  clear(acc_dk);

  for (int step = 0; step < steps; ++step) {
    const int stage = Cfg::kDoubleBuffer ? (step & 1) : 0;
    const int g = step / blocks_m;
    const int m_block = m_min + step - g * blocks_m;
    const int bidh = bidhk * params.kv_group + g;
    const int row0 = m_block * kBlockM;

    BwdRowStats<kRows> stats;
    stats.load(tScS, params.lse + seq.lse_offset(params.lse_batch_stride, params.lse_head_stride, bidb, bidh),
               delta + seq.scratch_row(params, bidb, bidh), row0, seq.seqlen_q);

    cp_async_wait<0>();
    __syncthreads();  // this step's tiles landed; every warp is done with the other stage and with P / dS
    if (Cfg::kDoubleBuffer && step + 1 < steps) {
      load_q_do(step + 1, stage ^ 1);
      cp_async_fence();
    }

    Tensor acc_s = partition_fragment_C(mma_sdp, TileMN{});
    Tensor acc_dp = partition_fragment_C(mma_sdp, TileMN{});
    clear(acc_s);
    clear(acc_dp);
    gemm_ss(acc_s, tSrQ, tSrK, shifted(tSsQ, stage * Cfg::kQElems), tSsK, mma_sdp, smem_copy_a_sdp,
            smem_copy_b_sdp);
    gemm_ss(acc_dp, tSrDo, tSrV, shifted(tSsDo, stage * Cfg::kDoElems), tSsV, mma_sdp, smem_copy_a_sdp,
            smem_copy_b_sdp);

    Tensor scores = rowcol_view(acc_s);
    Tensor dscores = rowcol_view(acc_dp);
    const bool needs_mask = !mask.template tile_fully_visible<kBlockM, kBlockN>(m_block, n_block);
    probs_and_dscores(scores, dscores, tScS, stats, score_scale, mask, needs_mask, row0, n0);

    Tensor rP = convert_fragment<Element>(acc_s);
    Tensor rDs = convert_fragment<Element>(acc_dp);
    copy(smem_store_pds, thr_store_pds.retile_S(rP), tPsP);
    copy(smem_store_pds, thr_store_pds.retile_S(rDs), tPsDs);
    __syncthreads();

    gemm_ss(acc_dv, tdVrPt, tdVrDot, tdVsPt, shifted(tdVsDot, stage * Cfg::kDoElems), mma_dkdv, smem_copy_a_dkdv,
            smem_copy_b_dkdv);
    gemm_ss(acc_dk, tdKrDst, tdKrQt, tdKsDst, shifted(tdKsQt, stage * Cfg::kQElems), mma_dkdv, smem_copy_a_dkdv,
            smem_copy_b_dkdv);

    if constexpr (kAtomicDq) {
      // dQ(kBlockM, kHeadDim) += dS K: A = dS, B = K^T read transposed.
      typename Cfg::TiledMmaDq mma_dq;
      Tensor tdQrDs = make_tensor<Element>(partition_shape_A(mma_dq, TileMN{}));
      Tensor tdQrKt = make_tensor<Element>(partition_shape_B(mma_dq, Shape<Int<kHeadDim>, Int<kBlockN>>{}));
      auto smem_copy_a_dq = make_tiled_copy_A(typename Cfg::SmemCopyAtom{}, mma_dq);
      auto smem_copy_b_dq = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma_dq);
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
      clear(acc_dq);
      gemm_ss(acc_dq, tdQrDs, tdQrKt, smem_copy_a_dq.get_thread_slice(tid).partition_S(sDs),
              smem_copy_b_dq.get_thread_slice(tid).partition_S(sKt), mma_dq, smem_copy_a_dq, smem_copy_b_dq);
      Tensor tdQcdQ = mma_dq.get_thread_slice(tid).partition_C(
          make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
      float* dq_rows = dq_accum + (seq.scratch_row(params, bidb, bidh) + row0) * params.head_dim;
      atomic_add_acc(acc_dq, tdQcdQ, dq_rows, params.head_dim, seq.seqlen_q - row0, params.head_dim);
    }

    if (!Cfg::kDoubleBuffer && step + 1 < steps) {
      __syncthreads();  // every warp is done reading Q / dO
      load_q_do(step + 1, 0);
      cp_async_fence();
    }
  }

  // Every row of the CTA's keys is written: keys no query sees keep their zero accumulators.
  Tensor tdKVc = thr_dkdv.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tdVc = thr_dkdv.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  Element* dk = static_cast<Element*>(params.dk) + seq.k_offset(params.dk_batch_stride, params.dk_row_stride, bidb) +
                int64_t(n0) * params.dk_row_stride + int64_t(bidhk) * params.dk_head_stride;
  Element* dv = static_cast<Element*>(params.dv) + seq.k_offset(params.dv_batch_stride, params.dv_row_stride, bidb) +
                int64_t(n0) * params.dv_row_stride + int64_t(bidhk) * params.dv_head_stride;
  store_acc_rows(acc_dk, tdKVc, dk, params.dk_row_stride, keys_left, params.head_dim, params.scale);
  store_acc_rows(acc_dv, tdVc, dv, params.dv_row_stride, keys_left, params.head_dim_v, 1.f);
}

}  // namespace jax_flash
