// The one plain-data struct that crosses host -> device. No templates, no CuTe, no XLA here.
//
// Tensors are addressed through element strides (int64: a tensor may pass 2^31 elements).
// Dense layout is BSHD: q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv), out (B, Sq, Hq, Dv),
// lse (B, Hq, Sq) float32.
// Packed (varlen, THD) layout: q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv), out (Tq, Hq, Dv), lse (Hq, Tq);
// `batch` is then the number of sequences N, seqlen_q / seqlen_k the token totals Tq / Tk, the batch
// strides 0, and sequence b lives at the rows cu_seqlens[b] ... (common/seqlen.h reads them on the device).
#pragma once

#include <cuda.h>          // CUtensorMap
#include <cuda_runtime.h>  // __host__ __device__

#include <cstdint>

namespace jax_flash {

struct AttnFwdParams {
  const void* __restrict__ q;
  const void* __restrict__ k;
  const void* __restrict__ v;
  void* __restrict__ out;
  float* __restrict__ lse;  // always written: the backward pass needs it

  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t out_batch_stride, out_row_stride, out_head_stride;
  int64_t lse_batch_stride, lse_head_stride;  // lse row stride is 1

  int batch, seqlen_q, seqlen_k;
  // Packed only, host side (the kernels never read it): the call's max_seqlen_k attribute, the key count the
  // kernel choice goes by (kernel_table.h auto_min_keys; dense calls go by seqlen_k). 0: not given.
  int max_seqlen_k;
  int heads_q, heads_k;
  int kv_group;  // heads_q / heads_k: query head h reads kv head h / kv_group
  int head_dim, head_dim_v;  // the real sizes; the instantiation's tile may be larger

  float scale;       // applied to q.k before softcap
  float softcap;     // 0 = none; else s = softcap * tanh(s / softcap)
  // Bottom-right aligned window around key position p = i + seqlen_k - seqlen_q of query i:
  // keys in [p - window_left, p + window_right] are visible; -1 means unbounded on that side.
  // causal is expressed as window_right = 0.
  int window_left, window_right;

  // Packed layout only (all null for dense): (N + 1,) and (N,) int32 device arrays. Sequence b owns rows
  // [cu_seqlens[b], cu_seqlens[b + 1]) and uses the first seqused[b] of them.
  const int* __restrict__ cu_seqlens_q;
  const int* __restrict__ cu_seqlens_k;
  const int* __restrict__ seqused_q;
  const int* __restrict__ seqused_k;

  // Attention sinks (forward): null for none, else float32 shaped and strided like lse, holding each head's
  // sink logit on every row of a sequence (the FFI layer's operand is lse-shaped so that it shards and
  // batches like lse; jax_flash/ops/_sinks.py). The kernels read the value at each sequence's first row.
  // The paged forward ignores it (paged attention adds its sinks in JAX).
  const float* __restrict__ sinks;

  __host__ __device__ bool packed() const { return cu_seqlens_q != nullptr; }
  // Leading dim of the (batch, heads, rows) scratch and of the row-wise kernels: 1 when packed.
  __host__ __device__ int layout_batch() const { return packed() ? 1 : batch; }
};

struct AttnBwdParams : AttnFwdParams {
  const void* __restrict__ dout;  // (B, Sq, Hq, Dv)
  void* __restrict__ dq;          // (B, Sq, Hq, D)
  void* __restrict__ dk;          // (B, Sk, Hk, D)
  void* __restrict__ dv;          // (B, Sk, Hk, Dv)
  // In the backward pass lse is an input (the forward's); the pointer above is reused read-only,
  // and so is out (the forward's output, for delta = rowsum(dout * out)).
  // Cotangent of lse (B, Hq, Sq) float32 with lse's strides: it adds dlse_i * P_ij to dS_ij, i.e.
  // delta_i -> delta_i - dlse_i. Never null from the FFI layer (zeros when lse is not used).
  const float* __restrict__ dlse;

  int64_t dout_batch_stride, dout_row_stride, dout_head_stride;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;

  // Scratch from XLA, attn_bwd_workspace_bytes() long, 256-byte aligned, contents undefined on entry.
  void* workspace;

  bool deterministic;  // bitwise-repeatable gradients
};

// Most splits of a halving split schedule (PagedFwdParams::split_halving): the last ones are 1/2^15 of a range.
constexpr int kMaxHalvingSplits = 16;

// New queries over a paged KV cache (forward only). The AttnFwdParams part describes q, out, lse (dense BSHD,
// or packed THD with cu_seqlens_q; seqused_q / cu_seqlens_k / seqused_k are null) and the per-token / per-head
// strides of the caches: k points at k_cache (num_pages, page_size, Hk, D), k_row_stride steps one token
// inside a page, k_head_stride one head; likewise v. seqlen_k is the table's capacity max_pages * page_size.
struct PagedFwdParams : AttnFwdParams {
  int64_t k_page_stride, v_page_stride;  // elements between consecutive pages
  int num_pages, page_size;
  // (batch, max_pages) int32 page indices and (batch,) int32 valid tokens per sequence (new keys included).
  // Read on the device and never trusted: lengths are clamped to [0, capacity], and a page index outside
  // [0, num_pages) reads as a page of zeros.
  const int* __restrict__ page_table;
  int64_t page_table_stride;
  int max_pages;
  const int* __restrict__ cache_seqlens;

  // Split-KV: each query tile's key range is cut into num_splits parts whose normalized fp32 outputs and
  // LSEs go to out_partial (num_splits, rows, Hq, Dv) / lse_partial (num_splits, rows, Hq), rows = B * Sq or
  // Tq; a combine kernel merges them. num_splits == 1: the kernel writes out / lse itself (partials null).
  int num_splits;
  // Halving splits (split_halving, decode over long caches): split s < num_splits - 1 takes half of the keys
  // the splits before it left, the last split the rest; the grid lists every sequence's split 0 first, so the
  // big parts run first and the small ones fill the slots that free up at different times (SMs stream at
  // different rates). Otherwise the parts are equal. At most kMaxHalvingSplits splits.
  bool split_halving;
  float* __restrict__ out_partial;
  float* __restrict__ lse_partial;
};

// Tensor maps of the K and V caches for the Hopper decode load path (paged_kv_tma.h), encoded on the host at
// each launch since they hold the cache addresses. A kernel argument of its own: a tensor map must sit in
// parameter (or constant / global) memory.
struct PagedKvTma {
  CUtensorMap k, v;
  int box_rows;  // cache slots per box, gcd(page_size, 16); 0: no maps (the cp.async path)
};

}  // namespace jax_flash
