// The global-memory ends of the dK / dV kernels (bwd_dkdv_kernel.cuh, bwd_dkdv_kernel_sm90.cuh): one CTA's
// resident K / V tiles, the Q / dO tiles of each (query head, query block) step, and the dK / dV rows it writes.
// The dQ kernel (bwd_dq_kernel.cuh) loads its resident Q / dO tiles here too.
// Loads zero-fill past the sequence and the real head dims; the destinations are shared-memory tiles of any
// layout (one stage each).
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "kernels/bwd/epilogue.h"
#include "kernels/common/copy.h"
#include "kernels/common/mask.h"
#include "kernels/common/seqlen.h"
#include "kernels/params.h"

namespace jax_flash {

// The work of one dK/dV CTA: key block n_block of sequence bidb and kv head bidhk, and the `steps`
// (query head, query block) pairs that can see it, head-major over the kv group.
template <int kBlockM, int kBlockN>
struct DkdvWork {
  int n_block, bidb, bidhk, n0;
  SeqlenInfo seq;
  AttnMask mask;
  int m_min, blocks_m, steps;

  // tile: this CTA's (key block, sequence) from schedule_tile, with bidb >= 0.
  __device__ DkdvWork(const AttnBwdParams& params, TileCoord tile)
      : n_block(tile.block),
        bidb(tile.bidb),
        bidhk(blockIdx.y),
        n0(tile.block * kBlockN),
        seq(SeqlenInfo::make(params, tile.bidb)),
        mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right) {
    int m_max;
    mask.template m_block_range<kBlockM, kBlockN>(n_block, m_min, m_max);
    blocks_m = m_max - m_min;
    steps = blocks_m * params.kv_group;
  }

  // Query head and query block of step `step`.
  __device__ void query_tile(int step, int kv_group, int& bidh, int& m_block) const {
    const int g = step / blocks_m;
    m_block = m_min + step - g * blocks_m;
    bidh = bidhk * kv_group + g;
  }
};

// cp.async of the (kBlockM, D) Q and (kBlockM, Dv) dO tiles of query head bidh, query block m_block.
// kSkipChecksOnWholeTiles: a whole tile loads without bounds checks (bwd_copy.h). It pays off in the SM80
// kernel; in the wgmma kernel the second copy of the load made the backward 5% slower (H100, 2026-11-22, D128
// forward+backward 360.8 -> 341.7 TFLOP/s at 16k), so that one always checks.
template <class Cfg, bool kSkipChecksOnWholeTiles, class SQ, class SDo>
__device__ __forceinline__ void load_q_do_tiles(const AttnBwdParams& params, const SeqlenInfo& seq, int bidb,
                                                int bidh, int m_block, SQ&& sQ, SDo&& sDo, int tid) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM;
  auto thr_qk = typename Cfg::GmemCopyQK{}.get_thread_slice(tid);
  auto thr_v = typename Cfg::GmemCopyV{}.get_thread_slice(tid);
  const int rows_left = seq.seqlen_q - m_block * kBlockM;
  const Element* q = static_cast<const Element*>(params.q) +
                     seq.q_offset(params.q_batch_stride, params.q_row_stride, bidb) +
                     int64_t(m_block) * kBlockM * params.q_row_stride + int64_t(bidh) * params.q_head_stride;
  const Element* dout = static_cast<const Element*>(params.dout) +
                        seq.q_offset(params.dout_batch_stride, params.dout_row_stride, bidb) +
                        int64_t(m_block) * kBlockM * params.dout_row_stride + int64_t(bidh) * params.dout_head_stride;
  Tensor gQ = make_tensor(make_gmem_ptr(q), Shape<Int<kBlockM>, Int<Cfg::kHeadDim>>{},
                          make_stride(params.q_row_stride, _1{}));
  Tensor gDo = make_tensor(make_gmem_ptr(dout), Shape<Int<kBlockM>, Int<Cfg::kHeadDimV>>{},
                           make_stride(params.dout_row_stride, _1{}));
  const bool whole = kSkipChecksOnWholeTiles && rows_left >= kBlockM && params.head_dim == Cfg::kHeadDim &&
                     params.head_dim_v == Cfg::kHeadDimV;
  load_tile(typename Cfg::GmemCopyQK{}, thr_qk.partition_S(gQ), thr_qk.partition_D(sQ),
            thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<Cfg::kHeadDim>>{})), rows_left,
            params.head_dim, whole);
  load_tile(typename Cfg::GmemCopyV{}, thr_v.partition_S(gDo), thr_v.partition_D(sDo),
            thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<Cfg::kHeadDimV>>{})), rows_left,
            params.head_dim_v, whole);
}

// cp.async of the (kBlockN, D) K and (kBlockN, Dv) V tiles of kv head bidhk starting at key n0.
template <class Cfg, class SK, class SV>
__device__ __forceinline__ void load_k_v_tiles(const AttnBwdParams& params, const SeqlenInfo& seq, int bidb,
                                               int bidhk, int n0, SK&& sK, SV&& sV, int tid) {
  using namespace cute;
  using Element = typename Cfg::Element;
  constexpr int kBlockN = Cfg::kBlockN;
  auto thr_qk = typename Cfg::GmemCopyQK{}.get_thread_slice(tid);
  auto thr_v = typename Cfg::GmemCopyV{}.get_thread_slice(tid);
  const int keys_left = seq.seqlen_k - n0;
  const Element* k = static_cast<const Element*>(params.k) +
                     seq.k_offset(params.k_batch_stride, params.k_row_stride, bidb) +
                     int64_t(n0) * params.k_row_stride + int64_t(bidhk) * params.k_head_stride;
  const Element* v = static_cast<const Element*>(params.v) +
                     seq.k_offset(params.v_batch_stride, params.v_row_stride, bidb) +
                     int64_t(n0) * params.v_row_stride + int64_t(bidhk) * params.v_head_stride;
  Tensor gK = make_tensor(make_gmem_ptr(k), Shape<Int<kBlockN>, Int<Cfg::kHeadDim>>{},
                          make_stride(params.k_row_stride, _1{}));
  Tensor gV = make_tensor(make_gmem_ptr(v), Shape<Int<kBlockN>, Int<Cfg::kHeadDimV>>{},
                          make_stride(params.v_row_stride, _1{}));
  load_tile_zfill<true>(typename Cfg::GmemCopyQK{}, thr_qk.partition_S(gK), thr_qk.partition_D(sK),
                        thr_qk.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<Cfg::kHeadDim>>{})),
                        keys_left, params.head_dim);
  load_tile_zfill<true>(typename Cfg::GmemCopyV{}, thr_v.partition_S(gV), thr_v.partition_D(sV),
                        thr_v.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<Cfg::kHeadDimV>>{})),
                        keys_left, params.head_dim_v);
}

// Writes the CTA's dK (times scale) and dV rows from fp32 accumulators of the (kBlockN, D) / (kBlockN, Dv)
// products partitioned by thr_mma. Every row of the CTA's keys is written: keys no query sees keep zeros.
template <class Cfg, class ThrMma, class AccK, class AccV>
__device__ __forceinline__ void store_dk_dv(const AttnBwdParams& params, const SeqlenInfo& seq, int bidb,
                                            int bidhk, int n0, ThrMma const& thr_mma, AccK const& acc_dk,
                                            AccV const& acc_dv) {
  using namespace cute;
  using Element = typename Cfg::Element;
  const int keys_left = seq.seqlen_k - n0;
  Tensor tdKc = thr_mma.partition_C(make_identity_tensor(Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDim>>{}));
  Tensor tdVc = thr_mma.partition_C(make_identity_tensor(Shape<Int<Cfg::kBlockN>, Int<Cfg::kHeadDimV>>{}));
  Element* dk = static_cast<Element*>(params.dk) + seq.k_offset(params.dk_batch_stride, params.dk_row_stride, bidb) +
                int64_t(n0) * params.dk_row_stride + int64_t(bidhk) * params.dk_head_stride;
  Element* dv = static_cast<Element*>(params.dv) + seq.k_offset(params.dv_batch_stride, params.dv_row_stride, bidb) +
                int64_t(n0) * params.dv_row_stride + int64_t(bidhk) * params.dv_head_stride;
  store_acc_rows(acc_dk, tdKc, dk, params.dk_row_stride, keys_left, params.head_dim, params.scale);
  store_acc_rows(acc_dv, tdVc, dv, params.dv_row_stride, keys_left, params.head_dim_v, 1.f);
}

}  // namespace jax_flash
