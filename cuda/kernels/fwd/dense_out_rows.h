// Where the dense forward's output rows go: the tile's rows are consecutive queries of one (sequence, head),
// so O is a strided (kBlockM, kHeadDimV) tile and the LSE a run of floats. The OutRows policy of the forward
// epilogue (epilogue.h) for the dense and packed layouts.
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "kernels/common/copy.h"
#include "kernels/fwd/block_work.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg>
struct DenseOutRows {
  using Element = typename Cfg::Element;
  Element* o;          // row 0 of the tile
  int64_t row_stride;  // of out
  float* lse;          // LSE of row 0 of the tile
  int rows_left;       // rows of the tile inside the sequence
  int head_dim_v;

  __device__ static DenseOutRows make(const AttnFwdParams& p, const FwdBlockWork& w) {
    const int64_t row0 = int64_t(w.m_block) * Cfg::kBlockM;
    Element* o = static_cast<Element*>(p.out) + w.seq.q_offset(p.out_batch_stride, p.out_row_stride, w.bidb) +
                 int64_t(w.bidh) * p.out_head_stride + row0 * p.out_row_stride;
    float* lse = p.lse + w.seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, w.bidb, w.bidh) + row0;
    return {o, p.out_row_stride, lse, w.seq.seqlen_q - int(row0), p.head_dim_v};
  }

  __device__ void store_lse(int row, float lse_row) const {
    if (row < rows_left) lse[row] = lse_row;
  }

  template <class GmemCopy, class GmemThr, class Frag, class Coords>
  __device__ void store_o(GmemCopy const& gmem_copy, GmemThr const& gmem_thr, Frag const& tOrO,
                          Coords const& tOcO) const {
    using namespace cute;
    Tensor gO = make_tensor(make_gmem_ptr(o), Shape<Int<Cfg::kBlockM>, Int<Cfg::kHeadDimV>>{},
                            make_stride(row_stride, _1{}));
    store_tile(gmem_copy, tOrO, gmem_thr.partition_D(gO), tOcO, rows_left, head_dim_v);
  }
};

}  // namespace jax_flash
