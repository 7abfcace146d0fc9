// The alignment the backward asks of its operands: 16-byte base pointers and batch / row / head strides in
// multiples of 8 elements. Shared by the backward driver (bwd_launch.cuh) and the warp-specialized dK/dV
// launcher (its tensor maps and stores need a subset).
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

// Every global load / store of the backward moves 16 bytes (8 elements) per thread, dk / dv / dq 4 bytes.
inline bool bwd_operands_aligned(const AttnBwdParams& p) {
  auto ptr_ok = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  auto strides_ok = [](int64_t a, int64_t b, int64_t c) { return a % 8 == 0 && b % 8 == 0 && c % 8 == 0; };
  return ptr_ok(p.q) && ptr_ok(p.k) && ptr_ok(p.v) && ptr_ok(p.out) && ptr_ok(p.dout) && ptr_ok(p.dq) &&
         ptr_ok(p.dk) && ptr_ok(p.dv) && ptr_ok(p.workspace) &&
         strides_ok(p.q_batch_stride, p.q_row_stride, p.q_head_stride) &&
         strides_ok(p.k_batch_stride, p.k_row_stride, p.k_head_stride) &&
         strides_ok(p.v_batch_stride, p.v_row_stride, p.v_head_stride) &&
         strides_ok(p.out_batch_stride, p.out_row_stride, p.out_head_stride) &&
         strides_ok(p.dout_batch_stride, p.dout_row_stride, p.dout_head_stride) &&
         strides_ok(p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride) &&
         strides_ok(p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride) &&
         strides_ok(p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
}

}  // namespace jax_flash
