// Shared memory of the forward kernels (dense and paged): the Q tile, which the output tile reuses once the
// mainloop is done with Q, and kStages K and V buffers each.
//
// Every tile is 1024-byte aligned: the wgmma descriptors and TMA boxes with the 128-byte swizzle see absolute
// addresses. The tiles' sizes are multiples of 1024 bytes, so the alignment adds no padding.
#pragma once

#include <cute/container/array_aligned.hpp>
#include <cute/tensor.hpp>

namespace jax_flash {

template <class Element, class LayoutQ, class LayoutO, class LayoutK, class LayoutV>
struct FwdSharedStorage {
  union {
    cute::array_aligned<Element, cute::cosize_v<LayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<LayoutO>, 1024> o;  // written after the last read of q
  };
  cute::array_aligned<Element, cute::cosize_v<LayoutK>, 1024> k;  // (kBlockN, kHeadDim, kStages)
  cute::array_aligned<Element, cute::cosize_v<LayoutV>, 1024> v;  // (kBlockN, kHeadDimV, kStages)
};

}  // namespace jax_flash
