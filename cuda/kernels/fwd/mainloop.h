// The dense forward's mainloop, FlashAttention-2 style: stream the visible key blocks of one query block from
// last to first through the cp.async pipeline (kv_pipeline.h), keeping S and P in registers and the output in
// fp32 registers for the epilogue. The products are the config's (products.h: mma.sync or wgmma); masks,
// online softmax and copies are the shared pieces of kernels/common.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/copy.h"
#include "kernels/common/fragment.h"
#include "kernels/common/softmax.h"
#include "kernels/fwd/block_work.h"
#include "kernels/fwd/kv_pipeline.h"
#include "kernels/fwd/products_sm80.h"
#include "kernels/fwd/products_sm90.h"
#include "kernels/params.h"

namespace jax_flash {

// On return acc_o holds sum_j exp(s_ij - max_i) v_j over every visible key and softmax the rows' max and sum
// (unnormalized: the epilogue divides). acc_o: the accumulator of Cfg::TiledMma over (kBlockM, kHeadDimV).
// kSoftcap: scores pass through softcap * tanh(. / softcap) (a separate instantiation keeps the tanh out of the
// uncapped kernel's mainloop).
template <class Cfg, bool kSoftcap, class Storage, class AccO, int kRows>
__device__ __forceinline__ void fwd_mainloop(const AttnFwdParams& params, const FwdBlockWork& work,
                                             Storage& storage, const ScoreScale& score_scale, AccO& acc_o,
                                             OnlineSoftmax<kRows>& softmax, int tidx) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kHeadDim = Cfg::kHeadDim;
  constexpr int kHeadDimV = Cfg::kHeadDimV;
  constexpr int kStages = Cfg::kStages;
  const int m_block = work.m_block;
  const int n_max = work.n_max;
  const SeqlenInfo& seq = work.seq;

  // Global tiles: shapes are the tile sizes; rows past the sequence and columns past the real head dim are
  // predicated. Key tile n lives at k_ptr + n * kBlockN * row_stride; the pointer is advanced per tile.
  const Element* q_ptr = static_cast<const Element*>(params.q) +
                         seq.q_offset(params.q_batch_stride, params.q_row_stride, work.bidb) +
                         int64_t(work.bidh) * params.q_head_stride;
  const Element* k_ptr = static_cast<const Element*>(params.k) +
                         seq.k_offset(params.k_batch_stride, params.k_row_stride, work.bidb) +
                         int64_t(work.bidh_kv) * params.k_head_stride;
  const Element* v_ptr = static_cast<const Element*>(params.v) +
                         seq.k_offset(params.v_batch_stride, params.v_row_stride, work.bidb) +
                         int64_t(work.bidh_kv) * params.v_head_stride;
  Tensor gQ = make_tensor(make_gmem_ptr(q_ptr + int64_t(m_block) * kBlockM * params.q_row_stride),
                          Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_stride(params.q_row_stride, _1{}));
  Tensor gK = make_tensor(make_gmem_ptr(k_ptr), Shape<Int<kBlockN>, Int<kHeadDim>>{},
                          make_stride(params.k_row_stride, _1{}));
  Tensor gV = make_tensor(make_gmem_ptr(v_ptr), Shape<Int<kBlockN>, Int<kHeadDimV>>{},
                          make_stride(params.v_row_stride, _1{}));
  const int64_t k_tile_stride = int64_t(kBlockN) * params.k_row_stride;
  const int64_t v_tile_stride = int64_t(kBlockN) * params.v_row_stride;

  Tensor sQ = make_tensor(make_smem_ptr(storage.q.data()), typename Cfg::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{});
  Tensor sVt = make_tensor(sV.data(), typename Cfg::SmemLayoutVt{});

  // Global -> shared copies (cp.async, zero fill).
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

  // Key tile of step t is n_max - 1 - t. check_rows: the tile may reach past seqlen_k. Tiles loaded during a
  // fully visible step never do: they lie at or below a tile whose keys are all < seqlen_k.
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

  const CpAsyncKvPipeline<kStages, typename Cfg::MmaKind> pipeline{work.n_tiles()};
  load_tile_zfill<true>(gmem_copy_qk, tQgQ, tQsQ, tQcQ, seq.seqlen_q - m_block * kBlockM, params.head_dim);
  cute::cp_async_fence();
  pipeline.prologue([&](int t) { load_k(t, cute::true_type{}); }, [&](int t) { load_v(t, cute::true_type{}); });

  using Products = FwdProducts<Cfg>;
  auto qk_gemm = Products::make_qk(sQ, sK, tidx);
  auto pv_gemm = Products::make_pv(sVt, tidx);
  clear(acc_o);
  typename Cfg::TiledMmaS tiled_mma_s;
  // Tile-local (row, col) of each score this thread holds, for masking.
  Tensor tScS_rc = rowcol_view(tiled_mma_s.get_thread_slice(tidx).partition_C(
      make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
  Tensor acc_o_rc = rowcol_view(acc_o);

  // One key tile. kMasked tiles apply the element-wise mask; the others are fully visible and skip it.
  auto step = [&](int t, auto masked_tag) {
    constexpr bool kMasked = decltype(masked_tag)::value;
    const int n_block = n_max - 1 - t;
    const int stage = t % kStages;
    pipeline.wait_k(t, [&](int tile) { load_v(tile, masked_tag); });
    Tensor acc_s = partition_fragment_C(tiled_mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
    qk_gemm(acc_s, stage);
    if constexpr (kSoftcap) apply_softcap(acc_s, score_scale.pre_tanh);
    Tensor scores = rowcol_view(acc_s);
    if constexpr (kMasked) work.mask.apply(scores, tScS_rc, m_block * kBlockM, n_block * kBlockN);
    pipeline.wait_v(t, [&](int tile) { load_k(tile, masked_tag); });
    softmax.step(scores, acc_o_rc);
    Tensor p = convert_fragment<Element>(acc_s);
    pv_gemm(acc_o, p, stage);
  };

  // Tiles run from the last key block down. Three phases: masked tiles at the seqlen-k / right-window edge,
  // fully visible tiles, masked tiles at the left-window edge. One loop body per kind keeps code size down.
  int n_hi, n_lo;  // fully visible key blocks: [n_lo, n_hi)
  work.mask.full_n_block_range<kBlockM, kBlockN>(m_block, n_hi, n_lo);
  n_hi = max(min(n_hi, n_max), work.n_min);
  n_lo = max(min(n_lo, n_hi), work.n_min);
  int t = 0;
#pragma unroll 1
  for (int phase = 0; phase < 3; ++phase) {
    const int t_end = phase == 0 ? n_max - n_hi : phase == 1 ? n_max - n_lo : work.n_tiles();
    if (phase == 1) {
#pragma unroll 1
      for (; t < t_end; ++t) step(t, cute::false_type{});
    } else {
#pragma unroll 1
      for (; t < t_end; ++t) step(t, cute::true_type{});
    }
  }
}

}  // namespace jax_flash
