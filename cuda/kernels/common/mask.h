// Causal / sliding-window / key-length masking, bottom-right aligned (DESIGN.md "Semantics").
//
// Query row i of a sequence with sq queries and sk keys sits at key position p = i + sk - sq and sees key j iff
//   p - window_left <= j <= p + window_right  and  0 <= j < sk        (a negative window side is unbounded).
// Causal is window_right = 0. Besides the element-wise test, the struct answers the block questions both
// passes need: which key blocks can hold a visible key for a query block (forward, dq), which query blocks
// can see a key block (dk/dv), and whether a whole (query block, key block) tile is visible, so that
// unmasked tiles skip the masking code. Block sizes are template parameters: any tile shape works.
// Shared by the forward and backward kernels.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "kernels/common/seqlen.h"

namespace jax_flash {

struct AttnMask {
  int seqlen_q, seqlen_k;
  int diag;          // seqlen_k - seqlen_q: key position of query row 0
  int window_left;   // >= 0; "unbounded" is stored as seqlen_q + seqlen_k, which no index can exceed
  int window_right;  // >= 0; likewise

  __device__ AttnMask(int sq, int sk, int wl, int wr) : seqlen_q(sq), seqlen_k(sk), diag(sk - sq) {
    const int unbounded = sq + sk;
    window_left = (wl < 0 || wl > unbounded) ? unbounded : wl;
    window_right = (wr < 0 || wr > unbounded) ? unbounded : wr;
  }

  // Visible keys of query row `row`: [key_begin(row), key_end(row)) (may be empty: end <= begin).
  __device__ __forceinline__ int key_begin(int row) const { return max(row + diag - window_left, 0); }
  __device__ __forceinline__ int key_end(int row) const {
    return min(row + diag + window_right + 1, seqlen_k);
  }
  __device__ __forceinline__ bool visible(int row, int col) const {
    return col >= key_begin(row) && col < key_end(row);
  }

  // Key blocks [n_min, n_max) that hold at least one key visible to a row of query block `m_block`
  // (rows past seqlen_q ignored). Empty (n_min == n_max) when no row of the block sees any key.
  template <int kBlockM, int kBlockN>
  __device__ void n_block_range(int m_block, int& n_min, int& n_max) const {
    const int row_first = m_block * kBlockM;
    n_block_range_of_rows<kBlockN>(row_first, min(row_first + kBlockM, seqlen_q) - 1, n_min, n_max);
  }

  // The same for the query rows [row_first, row_last] (empty when row_last < row_first).
  template <int kBlockN>
  __device__ void n_block_range_of_rows(int row_first, int row_last, int& n_min, int& n_max) const {
    const int begin = key_begin(row_first);
    const int end = key_end(row_last);
    if (row_last < row_first || end <= begin) {
      n_min = n_max = 0;
      return;
    }
    n_min = begin / kBlockN;
    n_max = ceil_div(end, kBlockN);
  }

  // Query blocks [m_min, m_max) holding at least one row that sees a key of key block `n_block`
  // (keys past seqlen_k ignored). Empty when no row sees any key of the block.
  template <int kBlockM, int kBlockN>
  __device__ void m_block_range(int n_block, int& m_min, int& m_max) const {
    const int key_first = n_block * kBlockN;
    const int key_last = min(key_first + kBlockN, seqlen_k) - 1;
    // row sees key j iff j - diag - window_right <= row <= j - diag + window_left
    const int begin = max(key_first - diag - window_right, 0);
    const int end = min(key_last - diag + window_left + 1, seqlen_q);
    if (key_last < key_first || end <= begin) {
      m_min = m_max = 0;
      return;
    }
    m_min = begin / kBlockM;
    m_max = ceil_div(end, kBlockM);
  }

  // True when every key of key block `n_block` is visible to every valid row of query block `m_block`:
  // such a tile needs no masking.
  template <int kBlockM, int kBlockN>
  __device__ bool tile_fully_visible(int m_block, int n_block) const {
    const int row_first = m_block * kBlockM;
    return keys_fully_visible<kBlockN>(row_first, min(row_first + kBlockM, seqlen_q) - 1, n_block);
  }

  // The same for the query rows [row_first, row_last] (the paged kernel's rows are (query, head) pairs).
  template <int kBlockN>
  __device__ bool keys_fully_visible(int row_first, int row_last, int n_block) const {
    const int key_first = n_block * kBlockN;
    const int key_last = key_first + kBlockN - 1;
    return key_last < seqlen_k && key_first >= key_begin(row_last) && key_last < key_end(row_first);
  }

  // Key blocks [n_lo, n_hi) that are fully visible to every valid row of query block `m_block` (the
  // block-range form of tile_fully_visible). May be empty (n_lo >= n_hi) or extend past [n_min, n_max).
  template <int kBlockM, int kBlockN>
  __device__ void full_n_block_range(int m_block, int& n_hi, int& n_lo) const {
    const int row_first = m_block * kBlockM;
    const int row_last = min(row_first + kBlockM, seqlen_q) - 1;
    const int end = key_end(row_first);      // every row sees all keys below this
    const int begin = key_begin(row_last);   // every row sees all keys from this on
    n_hi = end >= 0 ? end / kBlockN : -1;    // tiles entirely below `end`
    n_lo = ceil_div(begin, kBlockN);         // tiles entirely at or after `begin` (begin >= 0)
  }

  // Sets every invisible score of a tile to -inf. `scores` and `coords` are rank-2 (row, col) views of the
  // same register fragment: `coords(r, c)` is the tile-local (row, col) of `scores(r, c)`, e.g. an identity
  // tensor partitioned like the accumulator and viewed row/col. Rows share one row index along mode 1 and
  // columns one column index along mode 0. row0 / col0: global index of the tile's first query / key.
  template <class ScoreTensor, class CoordTensor>
  __device__ __forceinline__ void apply(ScoreTensor& scores, CoordTensor const& coords, int row0,
                                        int col0) const {
    apply_to_rows(scores, coords, [row0](int tile_row) { return row0 + tile_row; }, col0);
  }

  // apply() for tiles whose rows are not consecutive queries: query_of(tile-local row) gives each row's
  // query index (the paged kernel's rows are (query, head of the kv group) pairs).
  template <class ScoreTensor, class CoordTensor, class QueryOf>
  __device__ __forceinline__ void apply_to_rows(ScoreTensor& scores, CoordTensor const& coords,
                                                QueryOf query_of, int col0) const {
    static_assert(decltype(cute::rank(scores))::value == 2, "scores must be a (row, col) view");
    CUTE_UNROLL
    for (int r = 0; r < cute::size<0>(scores); ++r) {
      const int row = query_of(cute::get<0>(coords(r, 0)));
      const int begin = key_begin(row) - col0;
      const int end = key_end(row) - col0;
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(scores); ++c) {
        const int col = cute::get<1>(coords(r, c));
        if (col < begin || col >= end) scores(r, c) = -INFINITY;
      }
    }
  }
};

}  // namespace jax_flash
