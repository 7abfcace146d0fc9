#include "ffi/buffers.h"

namespace jax_flash::ffi_glue {

std::optional<ffi::Error> decode_bshd(const ffi::AnyBuffer& buffer, const char* name, bool packed, Bshd* shape) {
  auto dims = buffer.dimensions();
  if (packed) {
    if (dims.size() != 3) {
      return ffi::Error::InvalidArgument(std::string("jax_flash: ") + name +
                                         " must have rank 3 (T, H, D) in the packed layout, got rank " +
                                         std::to_string(dims.size()));
    }
    *shape = Bshd{1, dims[0], dims[1], dims[2]};
    return std::nullopt;
  }
  if (dims.size() < 4) {
    return ffi::Error::InvalidArgument(std::string("jax_flash: ") + name +
                                       " must have rank >= 4 (..., S, H, D), got rank " +
                                       std::to_string(dims.size()));
  }
  const size_t rank = dims.size();
  shape->batch = 1;
  for (size_t i = 0; i + 3 < rank; ++i) shape->batch *= dims[i];
  shape->seq = dims[rank - 3];
  shape->heads = dims[rank - 2];
  shape->dim = dims[rank - 1];
  return std::nullopt;
}

std::optional<ffi::Error> decode_dtype(const ffi::AnyBuffer& buffer, const char* name, DType* dtype) {
  switch (buffer.element_type()) {
    case ffi::DataType::F16: *dtype = DType::kFloat16; return std::nullopt;
    case ffi::DataType::BF16: *dtype = DType::kBFloat16; return std::nullopt;
    default:
      return ffi::Error::InvalidArgument(std::string("jax_flash: ") + name +
                                         " must be float16 or bfloat16");
  }
}

std::string describe(const Bshd& shape) {
  return "(batch " + std::to_string(shape.batch) + ", seq " + std::to_string(shape.seq) + ", heads " +
         std::to_string(shape.heads) + ", dim " + std::to_string(shape.dim) + ")";
}

}  // namespace jax_flash::ffi_glue

namespace jax_flash::ffi_glue {

std::optional<ffi::Error> fill_qkv(const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                                   const ffi::AnyBuffer& v, bool packed, AttnFwdParams* params, DType* dtype) {
  Bshd qs, ks, vs;
  DType k_dtype, v_dtype;
  if (auto e = decode_bshd(q, "q", packed, &qs)) return e;
  if (auto e = decode_bshd(k, "k", packed, &ks)) return e;
  if (auto e = decode_bshd(v, "v", packed, &vs)) return e;
  if (auto e = decode_dtype(q, "q", dtype)) return e;
  if (auto e = decode_dtype(k, "k", &k_dtype)) return e;
  if (auto e = decode_dtype(v, "v", &v_dtype)) return e;
  if (k_dtype != *dtype || v_dtype != *dtype) {
    return ffi::Error::InvalidArgument("jax_flash: q, k and v must have the same dtype");
  }
  if (ks.batch != qs.batch || vs.batch != qs.batch || vs.seq != ks.seq || vs.heads != ks.heads ||
      ks.dim != qs.dim || ks.heads == 0 || qs.heads % ks.heads != 0) {
    return ffi::Error::InvalidArgument("jax_flash: inconsistent shapes q " + describe(qs) + ", k " +
                                       describe(ks) + ", v " + describe(vs));
  }
  if (qs.seq > INT32_MAX || ks.seq > INT32_MAX || qs.batch > INT32_MAX) {
    return ffi::Error::InvalidArgument("jax_flash: sequence length or batch beyond int32");
  }
  params->q = q.untyped_data();
  params->k = k.untyped_data();
  params->v = v.untyped_data();
  params->q_batch_stride = qs.batch_stride();
  params->q_row_stride = qs.row_stride();
  params->q_head_stride = qs.head_stride();
  params->k_batch_stride = ks.batch_stride();
  params->k_row_stride = ks.row_stride();
  params->k_head_stride = ks.head_stride();
  params->v_batch_stride = vs.batch_stride();
  params->v_row_stride = vs.row_stride();
  params->v_head_stride = vs.head_stride();
  params->batch = static_cast<int>(qs.batch);
  params->seqlen_q = static_cast<int>(qs.seq);
  params->seqlen_k = static_cast<int>(ks.seq);
  params->heads_q = static_cast<int>(qs.heads);
  params->heads_k = static_cast<int>(ks.heads);
  params->kv_group = static_cast<int>(qs.heads / ks.heads);
  params->head_dim = static_cast<int>(qs.dim);
  params->head_dim_v = static_cast<int>(vs.dim);
  // The (B, Hq, Sq) float32 LSE that goes with q.
  params->lse_batch_stride = qs.heads * qs.seq;
  params->lse_head_stride = qs.seq;
  if (!attn_supported(*dtype, params->head_dim, params->head_dim_v)) {
    return ffi::Error::InvalidArgument("jax_flash: this build has no kernel for head_dim " +
                                       std::to_string(params->head_dim) + ", head_dim_v " +
                                       std::to_string(params->head_dim_v));
  }
  return std::nullopt;
}

std::optional<ffi::Error> fill_packed(const ffi::Buffer<ffi::S32>& cu_seqlens_q,
                                      const ffi::Buffer<ffi::S32>& cu_seqlens_k,
                                      const ffi::Buffer<ffi::S32>& seqused_q,
                                      const ffi::Buffer<ffi::S32>& seqused_k, AttnFwdParams* params) {
  const size_t n1 = cu_seqlens_q.element_count();
  if (n1 < 2 || cu_seqlens_k.element_count() != n1 || seqused_q.element_count() != n1 - 1 ||
      seqused_k.element_count() != n1 - 1 || n1 - 1 > INT32_MAX) {
    return ffi::Error::InvalidArgument(
        "jax_flash: cu_seqlens_q / cu_seqlens_k must have N + 1 >= 2 elements and seqused_q / seqused_k N, got " +
        std::to_string(n1) + ", " + std::to_string(cu_seqlens_k.element_count()) + ", " +
        std::to_string(seqused_q.element_count()) + ", " + std::to_string(seqused_k.element_count()));
  }
  params->batch = static_cast<int>(n1 - 1);
  params->cu_seqlens_q = cu_seqlens_q.typed_data();
  params->cu_seqlens_k = cu_seqlens_k.typed_data();
  params->seqused_q = seqused_q.typed_data();
  params->seqused_k = seqused_k.typed_data();
  return std::nullopt;
}

std::optional<ffi::Error> fill_sinks(const ffi::AnyBuffer& sinks, bool has_sinks, AttnFwdParams* params) {
  auto dims = sinks.dimensions();
  if (!has_sinks) {
    if (sinks.element_count() != 0) {
      return ffi::Error::InvalidArgument("jax_flash: sinks must be empty when has_sinks is false");
    }
    return std::nullopt;
  }
  const int64_t rows = params->seqlen_q;
  const int64_t heads = params->heads_q;
  const int64_t layout_batch = params->layout_batch();
  int64_t lead = 1;
  for (size_t i = 0; i + 2 < dims.size(); ++i) lead *= dims[i];
  const bool shaped = params->packed() ? dims.size() == 2 : dims.size() >= 2;
  if (!shaped || dims[dims.size() - 2] != heads || dims[dims.size() - 1] != rows || lead != layout_batch) {
    return ffi::Error::InvalidArgument(
        std::string("jax_flash: sinks must be shaped like lse, ") +
        (params->packed() ? "(heads_q " + std::to_string(heads) + ", total_q " + std::to_string(rows) + ")"
                          : "(batch " + std::to_string(layout_batch) + ", heads_q " + std::to_string(heads) +
                                ", seqlen_q " + std::to_string(rows) + ")") +
        ", each head's sink logit on every row");
  }
  if (sinks.element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("jax_flash: sinks must be float32");
  }
  params->sinks = static_cast<const float*>(sinks.untyped_data());
  return std::nullopt;
}

std::optional<ffi::Error> expect_bshd(const ffi::AnyBuffer& buffer, const char* name, bool packed,
                                      const Bshd& expected) {
  Bshd got;
  if (auto e = decode_bshd(buffer, name, packed, &got)) return e;
  if (got.batch != expected.batch || got.seq != expected.seq || got.heads != expected.heads ||
      got.dim != expected.dim) {
    return ffi::Error::InvalidArgument(std::string("jax_flash: ") + name + " has shape " +
                                       describe(got) + ", expected " + describe(expected));
  }
  return std::nullopt;
}

}  // namespace jax_flash::ffi_glue
