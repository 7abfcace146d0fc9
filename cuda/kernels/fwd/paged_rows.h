// Where the paged forward's rows live. Rows of a tile are (query, query head) pairs of ONE kv head,
// query-major: row = query * kv_group + g for query head bidhk * kv_group + g (GQA packing), so each page of K
// and V is read once per kv head, not once per query head. PagedRows maps tile rows to queries, heads and
// addresses; it is also the forward epilogue's OutRows policy (epilogue.h): O rows gathered over the heads of
// the group, the LSE per (query, head), and the rows of the split-KV partials.
#pragma once

#include <cstdint>

#include "kernels/common/gather_copy.h"
#include "kernels/common/seqlen.h"
#include "kernels/params.h"

namespace jax_flash {

// kBlockM: rows of the tile (every warp's 16-row slices, or one slice shared by the warps: paged_key_split.h).
template <class Element, int kBlockM>
struct PagedRows {
  const PagedFwdParams& params;
  PagedSeqInfo seq;
  int bidb, bidhk, split;
  int group;      // query heads per kv head
  int rows;       // (query, head) pairs of this sequence and kv head
  int row0;       // first pair of the tile
  int rows_left;  // pairs from row0 on

  __device__ PagedRows(const PagedFwdParams& p, const PagedSeqInfo& s, int bidb_, int bidhk_, int split_, int block)
      : params(p),
        seq(s),
        bidb(bidb_),
        bidhk(bidhk_),
        split(split_),
        group(p.kv_group),
        rows(s.seqlen_q * p.kv_group),
        row0(block * kBlockM),
        rows_left(rows - block * kBlockM) {}

  // Queries of the tile's first and last pairs: the mask's row range.
  __device__ int query_first() const { return row0 / group; }
  __device__ int query_last() const { return (row0 + min(kBlockM, rows_left) - 1) / group; }
  __device__ int query_of_row(int r) const { return (row0 + r) / group; }

  // Tile row r -> element offset of its (query, head) row in a q-like tensor, or -1 past the pairs.
  __device__ int64_t pair_offset(int r, int64_t row_stride, int64_t head_stride) const {
    const int pair = row0 + r;
    if (r >= kBlockM || pair >= rows) return -1;
    const int query = pair / group;
    const int head = bidhk * group + (pair - query * group);
    return seq.query_row(params, bidb, query) * row_stride + int64_t(head) * head_stride;
  }

  // (query, head) of tile row r, or query -1 past the pairs.
  __device__ void pair_of_row(int r, int& query, int& head) const {
    const int pair = row0 + r;
    query = r < kBlockM && pair < rows ? pair / group : -1;
    head = bidhk * group + (pair - (pair / group) * group);
  }

  // ---- OutRows policy of the forward epilogue ----
  __device__ void store_lse(int r, float lse) const {
    int query, head;
    pair_of_row(r, query, head);
    if (query >= 0) params.lse[seq.lse_index(params, bidb, head, query)] = lse;
  }

  template <class GmemCopy, class GmemThr, class Frag, class Coords>
  __device__ void store_o(GmemCopy const&, GmemThr const&, Frag const& tOrO, Coords const& tOcO) const {
    store_rows_gather(static_cast<Element*>(params.out), tOrO, tOcO,
                      [&](int r) { return pair_offset(r, params.out_row_stride, params.out_head_stride); },
                      params.head_dim_v);
  }

  // Row of tile row r in the partials (split, query row, head), or -1 past the pairs.
  __device__ int64_t partial_row(int r) const {
    int query, head;
    pair_of_row(r, query, head);
    if (query < 0) return -1;
    const int64_t query_rows = int64_t(params.layout_batch()) * params.seqlen_q;
    return (split * query_rows + seq.query_row(params, bidb, query)) * params.heads_q + head;
  }
};

}  // namespace jax_flash
