// The dynamic shared memory of every kernel, seen as its config's SharedStorage struct. One declaration for
// all kernels of a translation unit: the 1024-byte alignment (wgmma descriptors and TMA boxes with the
// 128-byte swizzle see absolute addresses) is the one they all get, so all of them say it.
#pragma once

namespace jax_flash {

template <class Storage>
__device__ __forceinline__ Storage& shared_storage() {
  extern __shared__ __align__(1024) char smem[];
  return *reinterpret_cast<Storage*>(smem);
}

}  // namespace jax_flash
