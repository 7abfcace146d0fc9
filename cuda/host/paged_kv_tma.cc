#include "host/paged_kv_tma.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <numeric>

namespace jax_flash {
namespace {

// cuTensorMapEncodeTiled from the driver through the runtime, so the library does not link libcuda itself
// (it must still import on machines without a driver).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
               : nullptr;
  }();
  return encode;
}

// One cache: dims innermost first (column, head, slot, page); strides in bytes of the last three.
bool encode_cache(PFN_cuTensorMapEncodeTiled_v12000 encode, CUtensorMap* map, const void* base, bool bf16,
                  int cols, int64_t head_stride, int64_t row_stride, int64_t page_stride, const PagedFwdParams& p,
                  int box_rows) {
  constexpr int kElementBytes = 2;
  const cuuint64_t dims[4] = {cuuint64_t(cols), cuuint64_t(p.heads_k), cuuint64_t(p.page_size),
                              cuuint64_t(p.num_pages)};
  const cuuint64_t strides[3] = {cuuint64_t(head_stride) * kElementBytes, cuuint64_t(row_stride) * kElementBytes,
                                 cuuint64_t(page_stride) * kElementBytes};
  const cuuint32_t box[4] = {64, 1, cuuint32_t(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  // L2 promotion to 128 bytes, the width of a box row: promoting to 256 bytes made the H200 read the key-shape
  // decode at 4074 GB/s instead of 4332 (2026-11-22; none and 128 bytes measured the same, 64 bytes 4295).
  const CUresult r = encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
                            const_cast<void*>(base), dims, strides, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

}  // namespace

bool encode_paged_kv_tma(const PagedFwdParams& p, bool bf16, int max_box_rows, PagedKvTma* out) {
  out->box_rows = 0;
  if (p.page_size <= 0 || p.page_size % 8 != 0 || p.num_pages <= 0 || p.heads_k <= 0) return false;
  if (max_box_rows <= 0 || max_box_rows > 256 || max_box_rows % 8 != 0) return false;
  if (p.head_dim % 64 != 0 || p.head_dim_v % 64 != 0) return false;
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const int box_rows = std::gcd(p.page_size, max_box_rows);
  if (!encode_cache(encode, &out->k, p.k, bf16, p.head_dim, p.k_head_stride, p.k_row_stride, p.k_page_stride, p,
                    box_rows) ||
      !encode_cache(encode, &out->v, p.v, bf16, p.head_dim_v, p.v_head_stride, p.v_row_stride, p.v_page_stride,
                    p, box_rows)) {
    return false;
  }
  out->box_rows = box_rows;
  return true;
}

}  // namespace jax_flash
