// Decoding XLA buffers into the kernel's params: shapes, dtypes and strides. No kernels here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "host/attention.h"
#include "xla/ffi/api/ffi.h"

namespace jax_flash::ffi_glue {

namespace ffi = xla::ffi;

// A contiguous (..., S, H, D) buffer: every leading dim folds into the batch, which is how a vmapped
// call (an extra leading axis) reaches the kernels.
struct Bshd {
  int64_t batch;
  int64_t seq, heads, dim;
  int64_t batch_stride() const { return seq * heads * dim; }
  int64_t row_stride() const { return heads * dim; }
  int64_t head_stride() const { return dim; }
};

// Fills `shape` or returns an error naming `name` and what was expected.
std::optional<ffi::Error> decode_bshd(const ffi::AnyBuffer& buffer, const char* name, Bshd* shape);

// The dtype of q/k/v: float16 or bfloat16.
std::optional<ffi::Error> decode_dtype(const ffi::AnyBuffer& buffer, const char* name, DType* dtype);

std::string describe(const Bshd& shape);

}  // namespace jax_flash::ffi_glue

namespace jax_flash::ffi_glue {

// Decodes q, k, v, checks that they agree (dtype, batch, heads, head dims) and fills the geometry,
// pointers and strides of q/k/v in `params`.
std::optional<ffi::Error> fill_qkv(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                                   const ffi::AnyBuffer& v, AttnFwdParams* params, DType* dtype);

// Checks that `buffer` has exactly `expected`'s layout and returns it (for out, dout, dq, dk, dv).
std::optional<ffi::Error> expect_bshd(const ffi::AnyBuffer& buffer, const char* name,
                                      const Bshd& expected);

// The attributes every attention call carries.
void fill_attributes(float scale, float softcap, int32_t window_left, int32_t window_right,
                     AttnFwdParams* params);

}  // namespace jax_flash::ffi_glue
