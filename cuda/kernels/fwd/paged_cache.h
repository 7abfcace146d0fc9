// Where a key of the paged forward lives: key j of sequence b is slot j % page_size of page
// page_table[b, j / page_size]. Device data is clamped: keys past the sequence (cache_seqlens[b], clamped to
// the table's capacity) and page indices outside [0, num_pages) read as zeros. Used by both K / V load paths
// (paged_kv_cp_async.h, paged_kv_tma.h).
#pragma once

#include <cstdint>

#include "kernels/params.h"

namespace jax_flash {

struct PagedCache {
  const int* page_row;  // this sequence's row of the page table
  int seqlen_k;         // valid keys of this sequence
  int page_size, num_pages;
  int bidhk;            // kv head

  __device__ PagedCache(const PagedFwdParams& p, int bidb, int seqlen_k_, int bidhk_)
      : page_row(p.page_table + int64_t(bidb) * p.page_table_stride),
        seqlen_k(seqlen_k_),
        page_size(p.page_size),
        num_pages(p.num_pages),
        bidhk(bidhk_) {}

  // Key `key` -> element offset of its row in a cache (head bidhk included), or -1: past the sequence (masked
  // anyway) or in a page outside the cache (reads as zeros).
  __device__ int64_t key_offset(int key, int64_t page_stride, int64_t row_stride, int64_t head_stride) const {
    if (key >= seqlen_k) return -1;
    const int page_slot = key / page_size;
    const int page = page_row[page_slot];
    if (page < 0 || page >= num_pages) return -1;
    return int64_t(page) * page_stride + int64_t(key - page_slot * page_size) * row_stride +
           int64_t(bidhk) * head_stride;
  }

  // Cache page of key `key`, -1 past the sequence (the TMA unit zero-fills boxes outside the cache).
  __device__ int page_of_key(int key) const { return key < seqlen_k ? page_row[key / page_size] : -1; }
};

}  // namespace jax_flash
