// Host side of the Hopper paged decode load path (kernels/paged_kv_tma.h): the tensor maps of the caches.
#pragma once

#include "kernels/params.h"

namespace jax_flash {

// Encodes the K and V cache tensor maps of `params` for 16-bit elements, boxes of 64 columns and
// gcd(page_size, max_box_rows) slots. False (and `out` unusable) where the TMA unit cannot address the caches as
// (head_dim, head, slot, page) boxes: then the launch keeps the cp.async path. Encoding is a host-only driver
// call: no stream work, safe during graph capture.
bool encode_paged_kv_tma(const PagedFwdParams& params, bool bf16, int max_box_rows, PagedKvTma* out);

}  // namespace jax_flash
