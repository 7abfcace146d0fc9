// The dK/dV kernel's products on mma.sync (every GPU, bwd/tile_config.h): warps tiled per product
// (BwdDkDvConfig), operands read from shared memory with ldmatrix, P / dS / Q / dO / K read transposed
// (ldmatrix.trans). Q and dO stages are whole tiles one after the other (shifted()).
//
// The products are closures called once per step of the skeleton's loop. Each is CUTLASS_LAMBDA_FUNC_INLINE:
// a closure the inliner takes only after optimizing it alone comes back with its smem address math
// reassociated apart from the loop's, and ptxas then spreads the step's index math over the uniform datapath
// (D64 atomic-dQ kernel, sm_90a: 2168 -> 2348 SASS instructions, the main loop 1026 -> 1088). For the same
// reason dv_dk partitions its shared tiles where it runs instead of capturing the partitions.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/detail/helper_macros.hpp>

#include "kernels/bwd/dkdv_products.h"
#include "kernels/bwd/epilogue.h"
#include "kernels/bwd/sdp_sm80.h"
#include "kernels/common/mma_kind.h"
#include "kernels/common/mma_sm80.h"
#include "kernels/common/tile_atoms.h"

namespace jax_flash {

template <class Cfg>
struct DkdvProducts<Cfg, MmaSync> {
  using Element = typename Cfg::Element;
  static constexpr int kBlockM = Cfg::kBlockM;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kHeadDimV = Cfg::kHeadDimV;
  static constexpr bool kSkipChecksOnWholeTiles = true;  // whole tiles are most steps' tiles: cheaper loads

  template <class Storage>
  __device__ static auto q_stage(Storage& storage, int stage) {
    return cute::make_tensor(cute::make_smem_ptr(storage.q.data() + stage * Cfg::kQElems), typename Cfg::SmemLayoutQ{});
  }
  template <class Storage>
  __device__ static auto do_stage(Storage& storage, int stage) {
    return cute::make_tensor(cute::make_smem_ptr(storage.dout.data() + stage * Cfg::kDoElems),
                             typename Cfg::SmemLayoutDo{});
  }
  template <class Storage>
  __device__ static auto k_tile(Storage& storage) {
    return cute::make_tensor(cute::make_smem_ptr(storage.k.data()), typename Cfg::SmemLayoutK{});
  }
  template <class Storage>
  __device__ static auto v_tile(Storage& storage) {
    return cute::make_tensor(cute::make_smem_ptr(storage.v.data()), typename Cfg::SmemLayoutV{});
  }

  template <class Storage>
  __device__ static auto make(Storage& storage, int tid) {
    using namespace cute;
    // Stage 0 of Q / dO; the products shift to the step's stage.
    Tensor sQ = q_stage(storage, 0);
    Tensor sQt = make_tensor(sQ.data(), typename Cfg::SmemLayoutQt{});
    Tensor sDo = do_stage(storage, 0);
    Tensor sDot = make_tensor(sDo.data(), typename Cfg::SmemLayoutDot{});
    Tensor sK = k_tile(storage);
    Tensor sKt = make_tensor(sK.data(), typename Cfg::SmemLayoutKt{});
    Tensor sV = v_tile(storage);
    Tensor sP = make_tensor(make_smem_ptr(storage.p.data()), typename Cfg::SmemLayoutPdS{});
    Tensor sPt = make_tensor(sP.data(), typename Cfg::SmemLayoutPdSt{});
    Tensor sDs = make_tensor(make_smem_ptr(storage.ds.data()), typename Cfg::SmemLayoutPdS{});
    Tensor sDst = make_tensor(sDs.data(), typename Cfg::SmemLayoutPdSt{});

    auto sdp = make_sdp_sm80<Element, typename Cfg::TiledMmaSdP, typename Cfg::SmemCopyAtom, kBlockM, kBlockN,
                             kHeadDim, kHeadDimV>(sQ, sDo, sK, sV, tid);
    auto s_dp = [=](auto& acc_s, auto& acc_dp, int stage) mutable CUTLASS_LAMBDA_FUNC_INLINE {
      sdp(acc_s, acc_dp, stage * Cfg::kQElems, stage * Cfg::kDoElems, 0, 0);
    };

    auto smem_store_pds = make_tiled_copy_C(typename Cfg::SmemStoreAtomPdS{}, typename Cfg::TiledMmaSdP{});
    auto thr_store_pds = smem_store_pds.get_thread_slice(tid);
    Tensor tPsP = thr_store_pds.partition_D(sP);
    Tensor tPsDs = thr_store_pds.partition_D(sDs);
    auto store_p_ds = [=](auto const& rP, auto const& rDs) mutable CUTLASS_LAMBDA_FUNC_INLINE {
      copy(smem_store_pds, thr_store_pds.retile_S(rP), tPsP);
      copy(smem_store_pds, thr_store_pds.retile_S(rDs), tPsDs);
    };

    // dV, dK: (kBlockN, head dim); A = P^T / dS^T, B = dO^T / Q^T, all transposed reads.
    auto dv_dk = [=](auto& acc_dv, auto& acc_dk, int stage) CUTLASS_LAMBDA_FUNC_INLINE {
      typename Cfg::TiledMmaDkDv mma_dkdv;
      Tensor tdVrPt = make_tensor<Element>(partition_shape_A(mma_dkdv, Shape<Int<kBlockN>, Int<kBlockM>>{}));
      Tensor tdVrDot = make_tensor<Element>(partition_shape_B(mma_dkdv, Shape<Int<kHeadDimV>, Int<kBlockM>>{}));
      Tensor tdKrDst = make_tensor<Element>(partition_shape_A(mma_dkdv, Shape<Int<kBlockN>, Int<kBlockM>>{}));
      Tensor tdKrQt = make_tensor<Element>(partition_shape_B(mma_dkdv, Shape<Int<kHeadDim>, Int<kBlockM>>{}));
      auto copy_a_dkdv = make_tiled_copy_A(typename Cfg::SmemCopyAtomT{}, mma_dkdv);
      auto copy_b_dkdv = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma_dkdv);
      Tensor tdVsPt = copy_a_dkdv.get_thread_slice(tid).partition_S(sPt);
      Tensor tdKsDst = copy_a_dkdv.get_thread_slice(tid).partition_S(sDst);
      Tensor tdVsDot = copy_b_dkdv.get_thread_slice(tid).partition_S(sDot);
      Tensor tdKsQt = copy_b_dkdv.get_thread_slice(tid).partition_S(sQt);
      gemm_ss(acc_dv, tdVrPt, tdVrDot, tdVsPt, shifted(tdVsDot, stage * Cfg::kDoElems), mma_dkdv, copy_a_dkdv,
              copy_b_dkdv);
      gemm_ss(acc_dk, tdKrDst, tdKrQt, tdKsDst, shifted(tdKsQt, stage * Cfg::kQElems), mma_dkdv, copy_a_dkdv,
              copy_b_dkdv);
    };

    // dQ (kBlockM, kHeadDim) = dS K: A = dS, B = K^T read transposed. Partitioned where it runs: only the
    // atomic-dQ instantiation has it.
    auto dq = [=](float* dq_rows, int rows, int head_dim) CUTLASS_LAMBDA_FUNC_INLINE {
      typename Cfg::TiledMmaDq mma_dq;
      Tensor tdQrDs = make_tensor<Element>(partition_shape_A(mma_dq, Shape<Int<kBlockM>, Int<kBlockN>>{}));
      Tensor tdQrKt = make_tensor<Element>(partition_shape_B(mma_dq, Shape<Int<kHeadDim>, Int<kBlockN>>{}));
      auto copy_a_dq = make_tiled_copy_A(typename Cfg::SmemCopyAtom{}, mma_dq);
      auto copy_b_dq = make_tiled_copy_B(typename Cfg::SmemCopyAtomT{}, mma_dq);
      Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
      clear(acc_dq);
      gemm_ss(acc_dq, tdQrDs, tdQrKt, copy_a_dq.get_thread_slice(tid).partition_S(sDs),
              copy_b_dq.get_thread_slice(tid).partition_S(sKt), mma_dq, copy_a_dq, copy_b_dq);
      Tensor tdQcdQ =
          mma_dq.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
      atomic_add_acc(acc_dq, tdQcdQ, dq_rows, head_dim, rows, head_dim);
    };
    return DkdvProductSet{s_dp, store_p_ds, dv_dk, dq};
  }
};

}  // namespace jax_flash
