// The global -> shared loads of the backward kernels (cp.async, zero fill past the sequence and the real head
// dims): the Q / dO tiles of a query block (each dK/dV step; the dq kernel's resident ones) and the resident
// K / V tiles of a dK/dV CTA. The destinations are shared-memory tiles of any layout (one stage each).
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "kernels/common/copy.h"
#include "kernels/common/seqlen.h"
#include "kernels/params.h"

namespace jax_flash {

// cp.async of the (kBlockM, D) Q and (kBlockM, Dv) dO tiles of query head bidh, query block m_block.
// kSkipChecksOnWholeTiles: a whole tile loads without bounds checks (load_tile of common/copy.h); the products
// policy of each dK/dV kernel says whether that pays off (dkdv_products_sm80.h, dkdv_products_sm90.h).
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

}  // namespace jax_flash
