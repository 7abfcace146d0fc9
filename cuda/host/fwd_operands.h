// The alignment every forward launcher asks of q / k / v / out: 16-byte base pointers and batch / row / head
// strides in multiples of 8 elements, so each global load or store (cp.async, TMA box, vector store) moves
// 16 bytes. Shared by the dense, paged and warp-specialized forward launchers.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

inline bool fwd_operands_aligned(const AttnFwdParams& p) {
  auto ptr_ok = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  auto strides_ok = [](int64_t a, int64_t b, int64_t c) { return a % 8 == 0 && b % 8 == 0 && c % 8 == 0; };
  return ptr_ok(p.q) && ptr_ok(p.k) && ptr_ok(p.v) && ptr_ok(p.out) && p.head_dim % 8 == 0 &&
         p.head_dim_v % 8 == 0 && strides_ok(p.q_batch_stride, p.q_row_stride, p.q_head_stride) &&
         strides_ok(p.k_batch_stride, p.k_row_stride, p.k_head_stride) &&
         strides_ok(p.v_batch_stride, p.v_row_stride, p.v_head_stride) &&
         strides_ok(p.out_batch_stride, p.out_row_stride, p.out_head_stride);
}

}  // namespace jax_flash
