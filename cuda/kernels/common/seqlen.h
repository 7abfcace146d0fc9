// Where one (sequence, head) problem lives: a sequence's lengths and the element offsets of its rows.
//
// Dense layout addresses sequence b through the batch strides; the packed (varlen) layout starts sequence b at
// token cu_seqlens[b] of one token axis and addresses it through the row stride. SeqlenInfo's offset helpers
// are the only code that knows which, so mainloops and epilogues stay layout-agnostic. Which (sequence, block)
// a CTA works on is the tile scheduler's business (kernels/sched/).
//
// Device data is never trusted: offsets are clamped to [0, T] and lengths to the rows that remain, so any
// cu_seqlens / seqused content keeps every access inside the tensors. (Offsets that decrease give
// overlapping sequences: memory-safe, but the result is unspecified.)
// Shared by the forward and backward kernels.
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

__host__ __device__ __forceinline__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Rows [start, start + length) of one packed sequence along a token axis of `total` rows.
struct PackedSpan {
  int start, length;

  __device__ static PackedSpan load(const int* cu_seqlens, const int* seqused, int b, int total) {
    const int start = min(max(cu_seqlens[b], 0), total);
    const int end = min(max(cu_seqlens[b + 1], start), total);
    int length = end - start;
    if (seqused != nullptr) length = min(max(seqused[b], 0), length);
    return {start, length};
  }
};

struct SeqlenInfo {
  int seqlen_q;  // queries of this sequence
  int seqlen_k;  // keys of this sequence
  // Packed layouts only: first token of this sequence in the shared token dimension.
  bool packed;
  int64_t q_start, k_start;

  __device__ static SeqlenInfo make(const AttnFwdParams& p, int bidb) {
    if (!p.packed()) return SeqlenInfo{p.seqlen_q, p.seqlen_k, false, 0, 0};
    const PackedSpan q = PackedSpan::load(p.cu_seqlens_q, p.seqused_q, bidb, p.seqlen_q);
    const PackedSpan k = PackedSpan::load(p.cu_seqlens_k, p.seqused_k, bidb, p.seqlen_k);
    return SeqlenInfo{q.length, k.length, true, q.start, k.start};
  }

  // Element offset of row 0 of sequence `bidb` in a q-like (q, out, dout, dq) tensor.
  __device__ int64_t q_offset(int64_t batch_stride, int64_t row_stride, int bidb) const {
    return packed ? q_start * row_stride : int64_t(bidb) * batch_stride;
  }
  // Element offset of row 0 of sequence `bidb` in a k-like (k, v, dk, dv) tensor.
  __device__ int64_t k_offset(int64_t batch_stride, int64_t row_stride, int bidb) const {
    return packed ? k_start * row_stride : int64_t(bidb) * batch_stride;
  }
  // Element offset of query 0 of sequence `bidb`, head `bidh` in lse (dense (B, Hq, Sq); packed (Hq, Tq)).
  __device__ int64_t lse_offset(int64_t batch_stride, int64_t head_stride, int bidb, int bidh) const {
    return (packed ? q_start : int64_t(bidb) * batch_stride) + int64_t(bidh) * head_stride;
  }
  // Row offset of query 0 of sequence `bidb`, head `bidh` in contiguous (layout_batch, Hq, rows) scratch
  // (the backward's delta and dq accumulator), where rows is params.seqlen_q (Sq, or Tq when packed).
  __device__ int64_t scratch_row(const AttnFwdParams& p, int bidb, int bidh) const {
    return lse_offset(int64_t(p.heads_q) * p.seqlen_q, p.seqlen_q, bidb, bidh);
  }
};

// The paged forward's sequence b: its new queries (dense rows or a packed span, no seqused) and the valid keys
// of its cache, cache_seqlens[b] clamped to the page table's capacity.
struct PagedSeqInfo {
  int seqlen_q, seqlen_k;
  int64_t q_start;  // packed: first token of the sequence; dense: 0

  __device__ static PagedSeqInfo make(const PagedFwdParams& p, int bidb) {
    const int capacity = p.max_pages * p.page_size;
    const int seqlen_k = min(max(p.cache_seqlens[bidb], 0), capacity);
    if (!p.packed()) return {p.seqlen_q, seqlen_k, 0};
    const PackedSpan q = PackedSpan::load(p.cu_seqlens_q, nullptr, bidb, p.seqlen_q);
    return {q.length, seqlen_k, q.start};
  }

  // Row of query `query` in the (B * Sq) or (Tq) query-row axis shared by out / lse / the partials.
  __device__ int64_t query_row(const PagedFwdParams& p, int bidb, int query) const {
    return p.packed() ? q_start + query : int64_t(bidb) * p.seqlen_q + query;
  }
  // Index of (query, head) in lse: dense (B, Hq, Sq), packed (Hq, Tq).
  __device__ int64_t lse_index(const PagedFwdParams& p, int bidb, int head, int query) const {
    return (p.packed() ? q_start : int64_t(bidb) * p.lse_batch_stride) + int64_t(head) * p.lse_head_stride + query;
  }
};

// GQA/MQA: query head h reads kv head h / kv_group.
__device__ __forceinline__ int kv_head_of(int bidh, int kv_group) { return bidh / kv_group; }

}  // namespace jax_flash
