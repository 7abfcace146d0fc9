// What this build compiled, from CMake's JAX_FLASH_HEAD_DIMS / JAX_FLASH_DTYPES / JAX_FLASH_ARCHS (the
// JAX_FLASH_HAS_* defines of the kernel library): head-dim tiles and dtypes, visited at compile time so that only
// compiled instantiations are ever referenced. The nanobind module does not see the defines; it asks through
// attention.h and kernel_choice.h.
#pragma once

#include <type_traits>

#include "host/attention.h"

namespace jax_flash {

template <int D, int Dv>
struct HeadDimTile {
  static constexpr int kD = D;
  static constexpr int kDv = Dv;
};

// Calls visit(HeadDimTile<D, Dv>{}) on each compiled tile, smallest first, until a call returns true; returns
// whether one did.
template <typename Visitor>
bool visit_compiled_tiles(Visitor&& visit) {
#ifdef JAX_FLASH_HAS_HDIM_64
  if (visit(HeadDimTile<64, 64>{})) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_96
  if (visit(HeadDimTile<96, 96>{})) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_128
  if (visit(HeadDimTile<128, 128>{})) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_192x128
  if (visit(HeadDimTile<192, 128>{})) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_192
  if (visit(HeadDimTile<192, 192>{})) return true;
#endif
#ifdef JAX_FLASH_HAS_HDIM_256
  if (visit(HeadDimTile<256, 256>{})) return true;
#endif
  (void)visit;
  return false;
}

template <DType kDType>
using DTypeTag = std::integral_constant<DType, kDType>;

// Calls visit(DTypeTag<dtype>{}) when this build compiled `dtype`; returns whether it did.
template <typename Visitor>
bool visit_compiled_dtype(DType dtype, Visitor&& visit) {
  switch (dtype) {
#ifdef JAX_FLASH_HAS_BF16
    case DType::kBFloat16: visit(DTypeTag<DType::kBFloat16>{}); return true;
#endif
#ifdef JAX_FLASH_HAS_FP16
    case DType::kFloat16: visit(DTypeTag<DType::kFloat16>{}); return true;
#endif
    default: (void)visit; return false;
  }
}

// The Hopper (KernelVariant::kSm90) kernels exist only in builds with sm_90a code.
#ifdef JAX_FLASH_HAS_SM90A
inline constexpr bool kBuildHasSm90a = true;
#else
inline constexpr bool kBuildHasSm90a = false;
#endif

}  // namespace jax_flash
