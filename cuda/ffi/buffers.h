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
// call (an extra leading axis) reaches the kernels. A packed (T, H, D) buffer is read as batch 1, seq T.
struct Bshd {
  int64_t batch;
  int64_t seq, heads, dim;
  int64_t batch_stride() const { return seq * heads * dim; }
  int64_t row_stride() const { return heads * dim; }
  int64_t head_stride() const { return dim; }
};

// Fills `shape` or returns an error naming `name` and what was expected. packed: rank exactly 3.
std::optional<ffi::Error> decode_bshd(const ffi::AnyBuffer& buffer, const char* name, bool packed, Bshd* shape);

// The dtype of q/k/v: float16 or bfloat16.
std::optional<ffi::Error> decode_dtype(const ffi::AnyBuffer& buffer, const char* name, DType* dtype);

std::string describe(const Bshd& shape);

}  // namespace jax_flash::ffi_glue

namespace jax_flash::ffi_glue {

// Decodes q, k, v, checks that they agree (dtype, batch, heads, head dims) and fills the geometry,
// pointers and strides of q/k/v in `params` (packed: batch 1 and seq = tokens, until fill_packed).
std::optional<ffi::Error> fill_qkv(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                                   const ffi::AnyBuffer& v, bool packed, AttnFwdParams* params, DType* dtype);

// Packed layouts: the (N + 1,) cu_seqlens and (N,) seqused int32 arrays; sets batch = N and the pointers.
std::optional<ffi::Error> fill_packed(const ffi::Buffer<ffi::S32>& cu_seqlens_q,
                                      const ffi::Buffer<ffi::S32>& cu_seqlens_k,
                                      const ffi::Buffer<ffi::S32>& seqused_q,
                                      const ffi::Buffer<ffi::S32>& seqused_k, AttnFwdParams* params);

// The forward's attention sinks: with has_sinks, a float32 buffer shaped like the lse that goes with params
// ((..., Hq, Sq) dense, (Hq, Tq) packed) holding each head's sink logit on every row (jax_flash/ops/_sinks.py),
// which sets params->sinks; without, an empty buffer and params->sinks stays null. After fill_qkv (and
// fill_packed).
std::optional<ffi::Error> fill_sinks(const ffi::AnyBuffer& sinks, bool has_sinks, AttnFwdParams* params);

// Checks that `buffer` has exactly `expected`'s layout and returns it (for out, dout, dq, dk, dv).
std::optional<ffi::Error> expect_bshd(const ffi::AnyBuffer& buffer, const char* name, bool packed,
                                      const Bshd& expected);

}  // namespace jax_flash::ffi_glue
