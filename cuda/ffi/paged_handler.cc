// XLA FFI handlers of attention over a paged KV cache, dense queries (B, Sq, Hq, D) and packed queries
// (Tq, Hq, D) with cu_seqlens_q: decode, validate, fill params, launch. run_paged is what they share.
#include "ffi/attn_handlers.h"
#include "ffi/attributes.h"
#include "ffi/buffers.h"

namespace jax_flash::ffi_glue {
namespace {

ffi::Error invalid(const std::string& what) { return ffi::Error::InvalidArgument("jax_flash paged: " + what); }

// Decodes a (P, page_size, Hk, dim) cache.
std::optional<ffi::Error> decode_cache(const ffi::AnyBuffer& cache, const char* name, Bshd* shape) {
  if (cache.dimensions().size() != 4) {
    return invalid(std::string(name) + " must have rank 4 (num_pages, page_size, heads_k, dim), got rank " +
                   std::to_string(cache.dimensions().size()));
  }
  return decode_bshd(cache, name, /*packed=*/false, shape);
}

ffi::Error run_paged(cudaStream_t stream, bool packed, ffi::AnyBuffer q, ffi::AnyBuffer k_cache,
                     ffi::AnyBuffer v_cache, ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> cache_seqlens,
                     const ffi::Buffer<ffi::S32>* cu_seqlens_q, ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse,
                     ffi::Buffer<ffi::F32> out_partial, ffi::Buffer<ffi::F32> lse_partial,
                     const AttnAttributes& attrs, int32_t num_splits, bool split_halving) {
  Bshd qs, ks, vs;
  DType dtype, k_dtype, v_dtype;
  if (auto e = decode_bshd(q, "q", packed, &qs)) return *std::move(e);
  if (!packed && q.dimensions().size() != 4) return invalid("q must have rank 4 (B, Sq, Hq, D)");
  if (auto e = decode_cache(k_cache, "k_cache", &ks)) return *std::move(e);
  if (auto e = decode_cache(v_cache, "v_cache", &vs)) return *std::move(e);
  if (auto e = decode_dtype(q, "q", &dtype)) return *std::move(e);
  if (auto e = decode_dtype(k_cache, "k_cache", &k_dtype)) return *std::move(e);
  if (auto e = decode_dtype(v_cache, "v_cache", &v_dtype)) return *std::move(e);
  if (k_dtype != dtype || v_dtype != dtype) return invalid("q, k_cache and v_cache must have the same dtype");
  if (vs.batch != ks.batch || vs.seq != ks.seq || vs.heads != ks.heads || ks.dim != qs.dim || ks.heads == 0 ||
      qs.heads % ks.heads != 0) {
    return invalid("inconsistent shapes q " + describe(qs) + ", k_cache " + describe(ks) + ", v_cache " +
                   describe(vs));
  }
  auto table_dims = page_table.dimensions();
  if (table_dims.size() != 2) return invalid("page_table must have rank 2 (B, max_pages)");
  const int64_t batch = table_dims[0], max_pages = table_dims[1];
  if (!packed && batch != qs.batch) {
    return invalid("page_table has " + std::to_string(batch) + " rows, q has batch " + std::to_string(qs.batch));
  }
  if (packed && cu_seqlens_q->element_count() != static_cast<size_t>(batch) + 1) {
    return invalid("cu_seqlens_q must have B + 1 = " + std::to_string(batch + 1) + " elements, got " +
                   std::to_string(cu_seqlens_q->element_count()));
  }
  if (cache_seqlens.element_count() != static_cast<size_t>(batch)) {
    return invalid("cache_seqlens must have B = " + std::to_string(batch) + " elements");
  }
  if (qs.seq > INT32_MAX || batch > INT32_MAX || ks.batch > INT32_MAX || max_pages * ks.seq > INT32_MAX) {
    return invalid("sizes beyond int32");
  }
  if (num_splits < 1) return invalid("num_splits must be >= 1");
  if (split_halving && num_splits > kMaxHalvingSplits) {
    return invalid("halving splits: num_splits " + std::to_string(num_splits) + " above " +
                   std::to_string(kMaxHalvingSplits));
  }

  PagedFwdParams params{};
  params.q = q.untyped_data();
  params.k = k_cache.untyped_data();
  params.v = v_cache.untyped_data();
  params.q_batch_stride = packed ? 0 : qs.batch_stride();
  params.q_row_stride = qs.row_stride();
  params.q_head_stride = qs.head_stride();
  params.k_row_stride = ks.row_stride();
  params.k_head_stride = ks.head_stride();
  params.k_page_stride = ks.batch_stride();
  params.v_row_stride = vs.row_stride();
  params.v_head_stride = vs.head_stride();
  params.v_page_stride = vs.batch_stride();
  params.batch = static_cast<int>(batch);
  params.seqlen_q = static_cast<int>(qs.seq);
  params.seqlen_k = static_cast<int>(max_pages * ks.seq);
  params.heads_q = static_cast<int>(qs.heads);
  params.heads_k = static_cast<int>(ks.heads);
  params.kv_group = static_cast<int>(qs.heads / ks.heads);
  params.head_dim = static_cast<int>(qs.dim);
  params.head_dim_v = static_cast<int>(vs.dim);
  params.cu_seqlens_q = packed ? cu_seqlens_q->typed_data() : nullptr;
  params.num_pages = static_cast<int>(ks.batch);
  params.page_size = static_cast<int>(ks.seq);
  params.page_table = page_table.typed_data();
  params.page_table_stride = max_pages;
  params.max_pages = static_cast<int>(max_pages);
  params.cache_seqlens = cache_seqlens.typed_data();
  params.num_splits = num_splits;
  params.split_halving = split_halving;
  if (!attn_supported(dtype, params.head_dim, params.head_dim_v)) {
    return invalid("this build has no kernel for head_dim " + std::to_string(params.head_dim) + ", head_dim_v " +
                   std::to_string(params.head_dim_v));
  }

  // Outputs: out like q with Dv; lse (B, Hq, Sq) or (Hq, Tq).
  const int layout_batch = params.layout_batch();
  const Bshd out_shape{layout_batch, params.seqlen_q, params.heads_q, params.head_dim_v};
  if (auto e = expect_bshd(out, "out", packed, out_shape)) return *std::move(e);
  const size_t pairs = static_cast<size_t>(layout_batch) * params.seqlen_q * params.heads_q;
  if (lse.element_count() != pairs) return invalid("lse must have (B * Sq or Tq) * Hq elements");
  params.out = out.untyped_data();
  params.out_batch_stride = out_shape.batch_stride();
  params.out_row_stride = out_shape.row_stride();
  params.out_head_stride = out_shape.head_stride();
  params.lse = lse.typed_data();
  params.lse_batch_stride = int64_t(params.heads_q) * params.seqlen_q;
  params.lse_head_stride = params.seqlen_q;
  if (num_splits > 1) {
    if (out_partial.element_count() != num_splits * pairs * params.head_dim_v ||
        lse_partial.element_count() != num_splits * pairs) {
      return invalid("split scratch must have num_splits * rows * Hq * (Dv | 1) elements");
    }
    params.out_partial = out_partial.typed_data();
    params.lse_partial = lse_partial.typed_data();
  }
  fill_attributes(attrs, &params);
  if (pairs == 0) return ffi::Error::Success();

  Status status = paged_fwd(params, dtype, attrs.variant, stream);
  if (!status.ok()) return ffi::Error::Internal("jax_flash paged forward: " + status.message);
  return ffi::Error::Success();
}

ffi::Error PagedFwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k_cache, ffi::AnyBuffer v_cache,
                        ffi::Buffer<ffi::S32> page_table, ffi::Buffer<ffi::S32> cache_seqlens,
                        ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                        ffi::Result<ffi::Buffer<ffi::F32>> out_partial,
                        ffi::Result<ffi::Buffer<ffi::F32>> lse_partial, ffi::Dictionary attrs) {
  AttnAttributes attributes;
  int32_t num_splits = 1;
  bool split_halving = false;
  if (auto e = decode_attributes(attrs, &attributes, OwnAttr<int32_t>{"num_splits", &num_splits},
                                 OwnAttr<bool>{"split_halving", &split_halving})) {
    return *std::move(e);
  }
  return run_paged(stream, /*packed=*/false, q, k_cache, v_cache, page_table, cache_seqlens, nullptr, *out, *lse,
                   *out_partial, *lse_partial, attributes, num_splits, split_halving);
}

// max_seqlen_q is part of the call (each value has its own executable) but never sizes work.
ffi::Error PagedVarlenFwdImpl(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k_cache,
                              ffi::AnyBuffer v_cache, ffi::Buffer<ffi::S32> page_table,
                              ffi::Buffer<ffi::S32> cache_seqlens, ffi::Buffer<ffi::S32> cu_seqlens_q,
                              ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse,
                              ffi::Result<ffi::Buffer<ffi::F32>> out_partial,
                              ffi::Result<ffi::Buffer<ffi::F32>> lse_partial, ffi::Dictionary attrs) {
  AttnAttributes attributes;
  int32_t num_splits = 1, max_seqlen_q = 0;
  bool split_halving = false;
  if (auto e = decode_attributes(attrs, &attributes, OwnAttr<int32_t>{"num_splits", &num_splits},
                                 OwnAttr<bool>{"split_halving", &split_halving},
                                 OwnAttr<int32_t>{"max_seqlen_q", &max_seqlen_q})) {
    return *std::move(e);
  }
  return run_paged(stream, /*packed=*/true, q, k_cache, v_cache, page_table, cache_seqlens, &cu_seqlens_q, *out,
                   *lse, *out_partial, *lse_partial, attributes, num_splits, split_halving);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PagedFwd, PagedFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (B, Sq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k_cache (P, page_size, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v_cache (P, page_size, Hk, Dv)
        .Arg<ffi::Buffer<ffi::S32>>()    // page_table (B, max_pages)
        .Arg<ffi::Buffer<ffi::S32>>()    // cache_seqlens (B,)
        .Ret<ffi::AnyBuffer>()           // out (B, Sq, Hq, Dv)
        .Ret<ffi::Buffer<ffi::F32>>()    // lse (B, Hq, Sq)
        .Ret<ffi::Buffer<ffi::F32>>()    // out_partial (num_splits, B * Sq, Hq, Dv), or (1,) without splits
        .Ret<ffi::Buffer<ffi::F32>>()    // lse_partial (num_splits, B * Sq, Hq), or (1,)
        .Attrs(),  // AttnAttributes (attributes.h), num_splits (int32), split_halving (bool: halving splits,
                   // PagedFwdParams::split_halving, else equal)
    {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PagedVarlenFwd, PagedVarlenFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<ffi::AnyBuffer>()           // q (Tq, Hq, D)
        .Arg<ffi::AnyBuffer>()           // k_cache (P, page_size, Hk, D)
        .Arg<ffi::AnyBuffer>()           // v_cache (P, page_size, Hk, Dv)
        .Arg<ffi::Buffer<ffi::S32>>()    // page_table (B, max_pages)
        .Arg<ffi::Buffer<ffi::S32>>()    // cache_seqlens (B,)
        .Arg<ffi::Buffer<ffi::S32>>()    // cu_seqlens_q (B + 1,)
        .Ret<ffi::AnyBuffer>()           // out (Tq, Hq, Dv)
        .Ret<ffi::Buffer<ffi::F32>>()    // lse (Hq, Tq)
        .Ret<ffi::Buffer<ffi::F32>>()    // out_partial (num_splits, Tq, Hq, Dv), or (1,)
        .Ret<ffi::Buffer<ffi::F32>>()    // lse_partial (num_splits, Tq, Hq), or (1,)
        .Attrs(),                        // AttnAttributes, num_splits, split_halving, max_seqlen_q (int32)
    {ffi::Traits::kCmdBufferCompatible});

}  // namespace jax_flash::ffi_glue
