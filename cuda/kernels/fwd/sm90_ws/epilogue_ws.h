// Epilogue of the warp-specialized Hopper forward: the consumer warpgroups write the normalized O tile and
// the row LSEs (rows go where the dense forward's OutRows policy says: fwd/dense_out_rows.h).
//
// O goes through shared memory (aliasing Q) for 16-byte coalesced stores. A warpgroup stages its rows as soon
// as its own last QK^T is done, while the other may still be computing: SmemLayoutO is built from atoms of the
// same 8-row footprint as Q's (tile_size.h), so each warpgroup's 64 rows of O cover only bytes of its own 64
// rows of Q. Then the consumer warpgroups (not the producer, which may have exited) meet on a named barrier
// and store the tile together.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "kernels/common/fragment.h"
#include "kernels/fwd/block_work.h"
#include "kernels/fwd/dense_out_rows.h"
#include "kernels/fwd/sm90_ws/named_barriers.h"
#include "kernels/fwd/sm90_ws/shared_storage.h"
#include "kernels/params.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsEpilogue {
  using Element = typename Cfg::Element;
  using TileO = cute::Shape<cute::Int<Cfg::kBlockM>, cute::Int<Cfg::kHeadDimV>>;

  // Called by every consumer thread (tidx 0 .. kMmaThreads - 1) with its normalized acc_o and row LSEs.
  template <class AccO, int kRows>
  __device__ static void store(const AttnFwdParams& p, Sm90WsSharedStorage<Cfg>& st, const FwdBlockWork& w,
                               int tidx, AccO const& acc_o, const float (&lse)[kRows]) {
    using namespace cute;
    const DenseOutRows<Cfg> rows = DenseOutRows<Cfg>::make(p, w);
    typename Cfg::TiledMmaPV mma_pv;
    Tensor sO = make_tensor(make_smem_ptr(st.q.data()), typename Cfg::SmemLayoutO{});
    Tensor o = convert_fragment<Element>(acc_o);
    auto smem_copy_o = make_tiled_copy_C(typename Cfg::SmemCopyAtomO{}, mma_pv);
    auto smem_thr_o = smem_copy_o.get_thread_slice(tidx);
    copy(smem_copy_o, smem_thr_o.retile_S(o), smem_thr_o.partition_D(sO));

    // One thread per row (the one holding column 0) writes the row's LSE.
    Tensor tOcO_rc = rowcol_view(mma_pv.get_thread_slice(tidx).partition_C(make_identity_tensor(TileO{})));
    if (get<1>(tOcO_rc(0, 0)) == 0) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) rows.store_lse(get<0>(tOcO_rc(r, 0)), lse[r]);
    }

    cutlass::arch::NamedBarrier::sync(Cfg::kMmaThreads, int(Sm90WsBarrier::kOutputStaged));
    typename Cfg::GmemCopyO gmem_copy_o;
    auto gmem_thr_o = gmem_copy_o.get_thread_slice(tidx);
    Tensor tOsO = gmem_thr_o.partition_S(sO);
    Tensor tOrO = make_tensor<Element>(shape(tOsO));
    copy(gmem_copy_o, tOsO, tOrO);
    Tensor tOcO = gmem_thr_o.partition_D(make_identity_tensor(TileO{}));
    rows.store_o(gmem_copy_o, gmem_thr_o, tOrO, tOcO);
  }
};

}  // namespace jax_flash
