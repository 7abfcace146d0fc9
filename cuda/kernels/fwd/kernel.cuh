// Dense attention forward, FlashAttention-2 style: cp.async loads, and the two products as mma.sync (sm_80
// and later, tile_config.h) or as wgmma (sm_90a, tile_config_sm90.h), see fwd_gemms.h.
//
// One CTA computes one (query block, head, batch) tile: O = softmax(s(Q K^T)) V and the row LSE. It streams
// the visible key blocks from last to first (mask.h gives the range; the diagonal / seqlen-k tiles that need
// masking come first), keeping S and P in registers and the output in fp32 registers until the epilogue.
//
// Pipeline (kStages K and V buffers each, one cp.async group per tile, issued in the order K0 V0 K1 V1 ...):
//   prologue: Q, K0, V0, ..., K[S-2], V[S-2], K[S-1]
//   step t:   wait K[t]; barrier; load V[t+S-1]  |  S = Q K[t]^T; softcap; mask
//             wait V[t]; barrier; load K[t+S]    |  online softmax; O += P V[t]
// so V[t] arrives under the QK^T of step t and K[t+1] under the softmax and PV of step t. The barrier before
// each load also proves every warp is done reading the buffer being overwritten.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/copy.h"
#include "kernels/common/fragment.h"
#include "kernels/common/mask.h"
#include "kernels/common/seqlen.h"
#include "kernels/common/softmax.h"
#include "kernels/fwd/products.h"
#include "kernels/fwd/tile_config.h"
#include "kernels/params.h"

namespace jax_flash {

// kSoftcap: scores pass through softcap * tanh(. / softcap) (a separate instantiation keeps the tanh out of
// the uncapped kernel's mainloop).
template <class Cfg, bool kSoftcap>
__device__ __forceinline__ void attn_fwd_tile(const AttnFwdParams& params) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  constexpr int kStages = Cfg::kStages;
  // Groups allowed in flight when waiting for the oldest tile still needed (see the pipeline above).
  constexpr int kGroupsInFlight = 2 * kStages - 2;

  extern __shared__ __align__(1024) char smem[];  // the wgmma swizzle is on absolute addresses

  // Longest (causal) query blocks first: they start early and the short ones fill in at the end.
  const TileCoord tile = schedule_tile<kBlockM, TileAxis::kQuery>(params, /*reverse=*/true);
  if (tile.bidb < 0) return;
  const int m_block = tile.block;
  const int bidb = tile.bidb;
  const int bidh = blockIdx.y;
  const int tidx = threadIdx.x;

  const SeqlenInfo seq = SeqlenInfo::make(params, bidb);
  if (m_block * kBlockM >= seq.seqlen_q) return;
  const AttnMask mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right);
  int n_min, n_max;
  mask.n_block_range<kBlockM, kBlockN>(m_block, n_min, n_max);
  const int n_tiles = n_max - n_min;
  const int bidh_kv = kv_head_of(bidh, params.kv_group);

  // ---- Global tiles -------------------------------------------------------------------------------------
  auto q_ptr = static_cast<const Element*>(params.q) +
               seq.q_offset(params.q_batch_stride, params.q_row_stride, bidb) + int64_t(bidh) * params.q_head_stride;
  auto k_ptr = static_cast<const Element*>(params.k) +
               seq.k_offset(params.k_batch_stride, params.k_row_stride, bidb) + int64_t(bidh_kv) * params.k_head_stride;
  auto v_ptr = static_cast<const Element*>(params.v) +
               seq.k_offset(params.v_batch_stride, params.v_row_stride, bidb) + int64_t(bidh_kv) * params.v_head_stride;
  auto o_ptr = static_cast<Element*>(params.out) +
               seq.q_offset(params.out_batch_stride, params.out_row_stride, bidb) + int64_t(bidh) * params.out_head_stride;

  // Shapes are the tile sizes; rows past the sequence and columns past the real head dim are predicated.
  Tensor gQ = make_tensor(make_gmem_ptr(q_ptr + int64_t(m_block) * kBlockM * params.q_row_stride),
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(params.q_row_stride, _1{}));
  Tensor gO = make_tensor(make_gmem_ptr(o_ptr + int64_t(m_block) * kBlockM * params.out_row_stride),
                          Shape<Int<kBlockM>, Int<kHeadDimV>>{}, make_stride(params.out_row_stride, _1{}));
  // Key tile n lives at k_ptr + n * kBlockN * row_stride; the pointer is advanced per tile.
  Tensor gK = make_tensor(make_gmem_ptr(k_ptr), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                          make_stride(params.k_row_stride, _1{}));
  Tensor gV = make_tensor(make_gmem_ptr(v_ptr), Shape<Int<kBlockN>, Int<kHeadDimV>>{},
                          make_stride(params.v_row_stride, _1{}));
  const int64_t k_tile_stride = int64_t(kBlockN) * params.k_row_stride;
  const int64_t v_tile_stride = int64_t(kBlockN) * params.v_row_stride;

  // ---- Shared tiles -------------------------------------------------------------------------------------
  Element* smem_q = reinterpret_cast<Element*>(smem);
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutQ{});
  Tensor sO = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutO{});
  Tensor sK = make_tensor(make_smem_ptr(smem_q + Cfg::kSmemQOElems), typename Cfg::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(smem_q + Cfg::kSmemQOElems + Cfg::kSmemKElems), typename Cfg::SmemLayoutV{});
  Tensor sVt = make_tensor(sV.data(), typename Cfg::SmemLayoutVt{});

  // ---- Global -> shared copies (cp.async, zero fill) ------------------------------------------------------
  typename Cfg::GmemCopyQK gmem_copy_qk;
  typename Cfg::GmemCopyV gmem_copy_v;
  auto gmem_thr_qk = gmem_copy_qk.get_thread_slice(tidx);
  auto gmem_thr_v = gmem_copy_v.get_thread_slice(tidx);
  Tensor tQgQ = gmem_thr_qk.partition_S(gQ);
  Tensor tQsQ = gmem_thr_qk.partition_D(sQ);
  Tensor tKgK = gmem_thr_qk.partition_S(gK);
  Tensor tKsK = gmem_thr_qk.partition_D(sK);  // (CPY, CPY_N, CPY_K, stage)
  Tensor tVgV = gmem_thr_v.partition_S(gV);
  Tensor tVsV = gmem_thr_v.partition_D(sV);
  Tensor tQcQ = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor tKcK = gmem_thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor tVcV = gmem_thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kHeadDimV>>{}));

  // Key tile of step t is n_max - 1 - t. kCheckRows: the tile may reach past seqlen_k. Tiles loaded during
  // a fully visible step never do: they lie at or below a tile whose keys are all < seqlen_k.
  auto load_k = [&](int t, auto check_rows) {
    const int n_block = n_max - 1 - t;
    Tensor src = make_tensor(tKgK.data() + n_block * k_tile_stride, tKgK.layout());
    load_tile_zfill<decltype(check_rows)::value>(gmem_copy_qk, src, tKsK(_, _, _, t % kStages), tKcK,
                                                 seq.seqlen_k - n_block * kBlockN, params.head_dim);
  };
  auto load_v = [&](int t, auto check_rows) {
    const int n_block = n_max - 1 - t;
    Tensor src = make_tensor(tVgV.data() + n_block * v_tile_stride, tVgV.layout());
    load_tile_zfill<decltype(check_rows)::value>(gmem_copy_v, src, tVsV(_, _, _, t % kStages), tVcV,
                                                 seq.seqlen_k - n_block * kBlockN, params.head_dim_v);
  };

  load_tile_zfill<true>(gmem_copy_qk, tQgQ, tQsQ, tQcQ, seq.seqlen_q - m_block * kBlockM, params.head_dim);
  cute::cp_async_fence();
  CUTE_UNROLL
  for (int s = 0; s < kStages; ++s) {
    if (s < n_tiles) load_k(s, cute::true_type{});
    cute::cp_async_fence();
    if (s + 1 < kStages) {
      if (s < n_tiles) load_v(s, cute::true_type{});
      cute::cp_async_fence();
    }
  }

  // ---- MMA partitions -------------------------------------------------------------------------------------
  auto qk_gemm = make_qk_gemm<Cfg>(sQ, sK, tidx);
  auto pv_gemm = make_pv_gemm<Cfg>(sVt, tidx);
  typename Cfg::TiledMma tiled_mma;  // the O product: its accumulator partition
  auto thr_mma = tiled_mma.get_thread_slice(tidx);
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDimV>>{});
  clear(acc_o);
  typename Cfg::TiledMmaS tiled_mma_s;
  auto thr_mma_s = tiled_mma_s.get_thread_slice(tidx);

  // Tile-local (row, col) of each score this thread holds, for masking.
  Tensor tScS = thr_mma_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = rowcol_view(tScS);

  const ScoreScale score_scale = ScoreScale::make(params.scale, params.softcap);
  constexpr int kRows = decltype(size<0>(rowcol_layout(acc_o.layout())))::value;
  OnlineSoftmax<kRows> softmax(score_scale.log2_scale);
  Tensor acc_o_rc = rowcol_view(acc_o);

  // ---- Mainloop ---------------------------------------------------------------------------------------------
  // One key tile. kMasked tiles apply the element-wise mask; the others are fully visible and skip it.
  auto step = [&](int t, auto masked_tag) {
    constexpr bool kMasked = decltype(masked_tag)::value;
    const int n_block = n_max - 1 - t;
    const int stage = t % kStages;

    cute::cp_async_wait<kGroupsInFlight>();
    publish_smem_writes<Cfg::kWgmma>();
    __syncthreads();
    if (t + kStages - 1 < n_tiles) load_v(t + kStages - 1, masked_tag);
    cute::cp_async_fence();

    Tensor acc_s = partition_fragment_C(tiled_mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
    qk_gemm(acc_s, stage);
    if constexpr (kSoftcap) apply_softcap(acc_s, score_scale.pre_tanh);
    Tensor scores = rowcol_view(acc_s);
    if constexpr (kMasked) mask.apply(scores, tScS_rc, m_block * kBlockM, n_block * kBlockN);

    cute::cp_async_wait<kGroupsInFlight>();
    publish_smem_writes<Cfg::kWgmma>();
    __syncthreads();
    if (t + kStages < n_tiles) load_k(t + kStages, masked_tag);
    cute::cp_async_fence();

    softmax.step(scores, acc_o_rc);
    Tensor p = convert_fragment<Element>(acc_s);
    pv_gemm(acc_o, p, stage);
  };

  // Tiles run from the last key block down. Three phases: masked tiles at the seqlen-k / right-window edge,
  // fully visible tiles, masked tiles at the left-window edge. One loop body per kind keeps code size down.
  int n_hi, n_lo;  // fully visible key blocks: [n_lo, n_hi)
  mask.full_n_block_range<kBlockM, kBlockN>(m_block, n_hi, n_lo);
  n_hi = max(min(n_hi, n_max), n_min);
  n_lo = max(min(n_lo, n_hi), n_min);
  int t = 0;
#pragma unroll 1
  for (int phase = 0; phase < 3; ++phase) {
    const int t_end = phase == 0 ? n_max - n_hi : phase == 1 ? n_max - n_lo : n_tiles;
    if (phase == 1) {
#pragma unroll 1
      for (; t < t_end; ++t) step(t, cute::false_type{});
    } else {
#pragma unroll 1
      for (; t < t_end; ++t) step(t, cute::true_type{});
    }
  }

  // ---- Epilogue ---------------------------------------------------------------------------------------------
  float lse[kRows];
  softmax.finalize(acc_o_rc, score_scale.natural, lse);

  // sO aliases sQ: wait for every warp's last read of Q (and, with no key tile at all, for Q's own load).
  cute::cp_async_wait<0>();
  __syncthreads();

  Tensor o = convert_fragment<Element>(acc_o);
  auto smem_copy_o = make_tiled_copy_C(typename Cfg::SmemCopyAtomO{}, tiled_mma);
  auto smem_thr_o = smem_copy_o.get_thread_slice(tidx);
  copy(smem_copy_o, smem_thr_o.retile_S(o), smem_thr_o.partition_D(sO));

  // One thread per row (the one holding column 0) writes the row's LSE.
  const int rows_left = seq.seqlen_q - m_block * kBlockM;
  float* lse_ptr = params.lse + seq.lse_offset(params.lse_batch_stride, params.lse_head_stride, bidb, bidh) +
                   int64_t(m_block) * kBlockM;
  Tensor tOcO_rc = rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimV>>{})));
  if (get<1>(tOcO_rc(0, 0)) == 0) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = get<0>(tOcO_rc(r, 0));
      if (row < rows_left) lse_ptr[row] = lse[r];
    }
  }

  __syncthreads();
  typename Cfg::GmemCopyO gmem_copy_o;
  auto gmem_thr_o = gmem_copy_o.get_thread_slice(tidx);
  Tensor tOsO = gmem_thr_o.partition_S(sO);
  Tensor tOgO = gmem_thr_o.partition_D(gO);
  Tensor tOrO = make_tensor<Element>(shape(tOgO));
  copy(gmem_copy_o, tOsO, tOrO);
  Tensor tOcO = gmem_thr_o.partition_D(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimV>>{}));
  store_tile(gmem_copy_o, tOrO, tOgO, tOcO, rows_left, params.head_dim_v);
}

template <class Cfg, bool kSoftcap>
__global__ void __launch_bounds__(Cfg::kNThreads, Cfg::kMinBlocksPerSm)
    attn_fwd_kernel(const __grid_constant__ AttnFwdParams params) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // wgmma configs exist only in sm_90a code; the launcher never picks them elsewhere.
  if constexpr (Cfg::kWgmma) return;
  else
#endif
    attn_fwd_tile<Cfg, kSoftcap>(params);
}

}  // namespace jax_flash
