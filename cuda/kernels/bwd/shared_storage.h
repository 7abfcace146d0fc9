// Shared memory of the backward kernels.
//
// dK/dV: the Q and dO tiles of every stage (the next step's load while this one computes), the CTA's resident
// K and V tiles, and P and dS staged for their transposed reads. dq: its resident Q and dO tiles, and the K and
// V tiles of every stage. Every tile is 1024-byte aligned for the wgmma descriptors of the Hopper dK/dV kernel
// (the 128-byte swizzle sees absolute addresses); the tiles' sizes are multiples of 1024 bytes, so the
// alignment adds no padding.
#pragma once

#include <cute/container/array_aligned.hpp>

namespace jax_flash {

template <class Element, int kQElems, int kDoElems, int kKElems, int kVElems, int kPdSElems>
struct DkdvSharedStorage {
  cute::array_aligned<Element, kQElems, 1024> q;  // every stage
  cute::array_aligned<Element, kDoElems, 1024> dout;
  cute::array_aligned<Element, kKElems, 1024> k;
  cute::array_aligned<Element, kVElems, 1024> v;
  cute::array_aligned<Element, kPdSElems, 1024> p;
  cute::array_aligned<Element, kPdSElems, 1024> ds;
};

template <class Element, int kQElems, int kDoElems, int kKElems, int kVElems>
struct DqSharedStorage {
  cute::array_aligned<Element, kQElems, 1024> q;
  cute::array_aligned<Element, kDoElems, 1024> dout;
  cute::array_aligned<Element, kKElems, 1024> k;  // every stage
  cute::array_aligned<Element, kVElems, 1024> v;
};

}  // namespace jax_flash
