// The dK/dV kernel's products as a policy chosen by the tile config's MMA kind (common/mma_kind.h):
// dkdv_products_sm80.h (mma.sync, ldmatrix from shared memory) and dkdv_products_sm90.h (wgmma batches reading
// shared memory through descriptors) specialize DkdvProducts. Everything else, the walk over the (query head,
// query block) steps, the loads, P and dS, the stores, is the one skeleton of dkdv_kernel.cuh.
//
// Interface (static members):
//   kSkipChecksOnWholeTiles     whether the Q / dO loads skip the bounds checks of whole tiles (loads.h)
//   q_stage(storage, s), do_stage(storage, s), k_tile(storage), v_tile(storage)
//                               the shared tiles the loads fill
//   make(storage, tid) -> DkdvProductSet of callables, partitions made once:
//     s_dp(acc_s, acc_dp, stage)    S = Q K^T, dP = dO V^T           (kBlockM, kBlockN)
//     store_p_ds(rP, rDs)           P and dS to shared memory, for their transposed reads
//     dv_dk(acc_dv, acc_dk, stage)  dV += P^T dO, dK += dS^T Q        (kBlockN, head dim)
//     dq(dq_rows, rows, head_dim)   dQ = dS K, added to the fp32 accumulator rows with atomics
#pragma once

namespace jax_flash {

template <class Cfg, class MmaKind = typename Cfg::MmaKind>
struct DkdvProducts;

template <class SDp, class StorePdS, class DvDk, class Dq>
struct DkdvProductSet {
  SDp s_dp;
  StorePdS store_p_ds;
  DvDk dv_dk;
  Dq dq;
};
template <class SDp, class StorePdS, class DvDk, class Dq>
DkdvProductSet(SDp, StorePdS, DvDk, Dq) -> DkdvProductSet<SDp, StorePdS, DvDk, Dq>;

}  // namespace jax_flash
