// The forward's epilogue, one for the dense, paged and warp-specialized kernels: normalize the output accumulator by
// the online softmax's row sums (and the attention sink's column, dense and packed forwards with sinks), then either
// write O (converted to the element type, staged through shared memory for 16-byte stores) and the LSE, or write the
// fp32 split partials of the paged split-KV.
//
// Where rows go is the kernel's: an OutRows policy maps a tile row to its destination (dense_out_rows.h:
// consecutive queries; paged_rows.h: (query, head) pairs of a kv group):
//   store_lse(row, lse)                          the row's LSE, if the row exists
//   store_o(gmem_copy, gmem_thr, tOrO, tOcO)     the staged output tile (register copy of sO)
//   partial_row(row)                             index of the row in the partials, or -1 (split-KV only)
#pragma once

#include <cute/tensor.hpp>

#include <cstdint>

#include "kernels/common/fragment.h"
#include "kernels/common/softmax.h"
#include "kernels/fwd/block_work.h"
#include "kernels/params.h"

namespace jax_flash {

// The sink logit of a dense / packed forward tile's (sequence, head), or null without sinks: params.sinks is
// lse-shaped with the head's sink on every row, read at the sequence's first row (inside the tensor: a tile
// exists only for a sequence with rows).
__device__ __forceinline__ const float* fwd_sink(const AttnFwdParams& p, const FwdBlockWork& w) {
  if (p.sinks == nullptr) return nullptr;
  return p.sinks + w.seq.lse_offset(p.lse_batch_stride, p.lse_head_stride, w.bidb, w.bidh);
}

template <class Cfg>
struct FwdEpilogue {
  using Element = typename Cfg::Element;
  using TileMDv = cute::Shape<cute::Int<Cfg::kBlockM>, cute::Int<Cfg::kHeadDimV>>;

  // acc_o /= row sum; lse = the rows' natural-log LSE. A row (or a split) that saw no key keeps out 0 and gets
  // lse -inf, which the split combine treats as "no weight".
  template <int kRows, class AccO>
  __device__ __forceinline__ static void normalize(OnlineSoftmax<kRows>& softmax, AccO& acc_o, float natural_scale,
                                                   float (&lse)[kRows]) {
    auto acc_o_rc = rowcol_view(acc_o);
    softmax.finalize(acc_o_rc, natural_scale, lse);
  }

  // normalize with each row's attention sink when `sink` (the tile's sink logit, fwd_sink) is not null: a row
  // that saw no key then gets lse = sink. The dense and packed forwards; the paged one has no sinks.
  template <int kRows, class AccO>
  __device__ __forceinline__ static void normalize(OnlineSoftmax<kRows>& softmax, AccO& acc_o, float natural_scale,
                                                   const float* sink, float (&lse)[kRows]) {
    auto acc_o_rc = rowcol_view(acc_o);
    softmax.finalize(acc_o_rc, natural_scale, sink, lse);
  }

  // O and LSE of the tile's rows, for the kernels whose CTA writes its tile as a whole (the dense / packed and
  // paged forwards). acc_o: the normalized accumulator of Cfg::TiledMma; smem_o: the O tile, which aliases Q.
  template <int kRows, class AccO, class OutRows>
  __device__ __forceinline__ static void store(AccO const& acc_o, const float (&lse)[kRows], OutRows const& rows,
                                               Element* smem_o, int tidx) {
    // sO aliases sQ: wait for every warp's last read of Q (and, with no key tile at all, for Q's own load).
    cute::cp_async_wait<0>();
    __syncthreads();
    stage_and_store(typename Cfg::TiledMma{}, acc_o, lse, rows, smem_o, tidx, [] { __syncthreads(); });
  }

  // The store itself, for any forward: O converted to the element type and staged in smem_o (Cfg::SmemLayoutO)
  // so that its global stores are 16-byte rows (Cfg::GmemCopyO), the LSE of each row from the thread holding
  // its column 0. acc_o is the C partition of `mma` for thread tidx; staged() is the barrier of the threads
  // taking part, between writing sO and reading it back. The caller has made smem_o free to write.
  template <class TiledMma, int kRows, class AccO, class OutRows, class Barrier>
  __device__ __forceinline__ static void stage_and_store(TiledMma const& mma, AccO const& acc_o,
                                                         const float (&lse)[kRows], OutRows const& rows,
                                                         Element* smem_o, int tidx, Barrier const& staged) {
    using namespace cute;
    Tensor sO = make_tensor(make_smem_ptr(smem_o), typename Cfg::SmemLayoutO{});
    Tensor o = convert_fragment<Element>(acc_o);
    auto smem_copy_o = make_tiled_copy_C(typename Cfg::SmemCopyAtomO{}, mma);
    auto smem_thr_o = smem_copy_o.get_thread_slice(tidx);
    copy(smem_copy_o, smem_thr_o.retile_S(o), smem_thr_o.partition_D(sO));

    Tensor tOcO_rc = rowcol_view(mma.get_thread_slice(tidx).partition_C(make_identity_tensor(TileMDv{})));
    if (get<1>(tOcO_rc(0, 0)) == 0) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) rows.store_lse(get<0>(tOcO_rc(r, 0)), lse[r]);
    }

    staged();
    typename Cfg::GmemCopyO gmem_copy_o;
    auto gmem_thr_o = gmem_copy_o.get_thread_slice(tidx);
    Tensor tOsO = gmem_thr_o.partition_S(sO);
    Tensor tOrO = make_tensor<Element>(shape(tOsO));
    copy(gmem_copy_o, tOsO, tOrO);
    Tensor tOcO = gmem_thr_o.partition_D(make_identity_tensor(TileMDv{}));
    rows.store_o(gmem_copy_o, gmem_thr_o, tOrO, tOcO);
  }

  // Split-KV: the fp32 partials straight from the accumulators, out_partial (split, query row, head, Dv) and
  // lse_partial (split, query row, head); paged_combine.cuh merges them.
  template <int kRows, class AccO, class OutRows>
  __device__ __forceinline__ static void store_partials(AccO const& acc_o, const float (&lse)[kRows],
                                                        OutRows const& rows, const PagedFwdParams& params,
                                                        int tidx) {
    using namespace cute;
    // No copy may land in shared memory after the CTA exits (a split without keys never waited for Q).
    cute::cp_async_wait<0>();
    typename Cfg::TiledMma tiled_mma;
    Tensor tOcO_rc = rowcol_view(tiled_mma.get_thread_slice(tidx).partition_C(make_identity_tensor(TileMDv{})));
    auto acc_o_rc = rowcol_view(acc_o);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int64_t row = rows.partial_row(get<0>(tOcO_rc(r, 0)));
      if (row < 0) continue;
      if (get<1>(tOcO_rc(r, 0)) == 0) params.lse_partial[row] = lse[r];
      float* out_row = params.out_partial + row * params.head_dim_v;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(acc_o_rc); ++c) {
        const int col = get<1>(tOcO_rc(r, c));
        if (col < params.head_dim_v) out_row[col] = acc_o_rc(r, c);
      }
    }
  }
};

}  // namespace jax_flash
