// Which tensor-core instruction a tile config's products use, and whether this compilation pass has it.
//
// Every config names its kind (using MmaKind = MmaSync or Wgmma); the kernels pick their products from it
// (fwd/products.h, bwd/dkdv_products.h), so "is this the Hopper kernel" is asked one way everywhere.
#pragma once

namespace jax_flash {

// m16n8k16 mma.sync per warp, operands staged through registers with ldmatrix: sm_80 and later.
struct MmaSync {
  static constexpr bool kNeedsSm90a = false;
};

// Warpgroup MMA reading shared memory through descriptors: sm_90a only.
struct Wgmma {
  static constexpr bool kNeedsSm90a = true;
};

// True in the device pass for sm_90a, the only one with wgmma and TMA instructions. Kernels that need them
// compile to an empty body in the other passes (the launchers never pick them there), and the host pass needs
// no body at all.
__host__ __device__ constexpr bool sm90a_pass() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  return true;
#else
  return false;
#endif
}

}  // namespace jax_flash
