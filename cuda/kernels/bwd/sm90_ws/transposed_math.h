// P and dS on the swapped tiles of the warp-specialized dK/dV kernel: the same formulas as bwd/math.h
// (probs_and_dscores), for accumulators of S^T = K Q^T and dP^T = V dO^T (keys along M, queries along N).
//
// Two differences from math.h, both from the swap:
//   - a thread holds 2 key rows x kBlockM / 4 query columns of a tile (math.h: 2 query rows), so the per-query
//     statistics (lse, delta) are read from shared memory at their use instead of held in registers
//     (2 x kBlockM / 4 registers that the consumers' budget does not have: tile_size.h);
//   - the views are (query, key): transposed_rowcol_view of the accumulator, and coordinates whose first
//     component is the query (swapped_identity), so AttnMask::apply masks them unchanged.
#pragma once

#include <cute/tensor.hpp>

#include "kernels/common/fragment.h"
#include "kernels/common/mask.h"
#include "kernels/common/softmax.h"

namespace jax_flash {

// (query, key) view of an S^T-shaped accumulator (values or coordinates): mode 0 indexes the thread's
// queries (the accumulator's columns), mode 1 its keys (the accumulator's rows).
template <class Tensor>
__device__ __forceinline__ auto transposed_rowcol_view(Tensor&& t) {
  auto rc = rowcol_layout(t.layout());
  return cute::make_tensor(t.data(), cute::make_layout(cute::get<1>(rc), cute::get<0>(rc)));
}

// Coordinates of a (kRows, kCols) tile with the components swapped: element (i, j) holds (j, i). Partitioned
// like an S^T accumulator and viewed with transposed_rowcol_view, each entry holds its (query, key).
template <int kRows, int kCols>
__device__ __forceinline__ auto swapped_identity() {
  using namespace cute;
  return make_coord_tensor(make_layout(Shape<Int<kRows>, Int<kCols>>{}, make_stride(E<1>{}, E<0>{})));
}

// The exponent offset of a query's P = exp2(score x log2_scale - offset): lse in log2 units, and +inf for a row
// with no visible key (lse = -inf), so that its P is exp2(x - inf) = 0 rather than exp2(-inf + inf) = NaN.
__device__ __forceinline__ float probs_log2_offset(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

// One pass per query of the thread: P = exp2(scores x log2_scale - lse x log2 e) into scores and dS into dp,
// dS = (dP - delta) x P with kSubtractDelta, else dp x P (dp already holds the softcap's (dP - delta) x tanh').
// Each query's lse (and delta) are loaded where they are used, in the one pass: with delta subtracted in a pass
// of its own before the mask, ptxas spilled the uncapped consumers at D128 and at D64 128 x 128 (README.md).
template <bool kSubtractDelta, class Scores, class Dp, class Coords>
__device__ __forceinline__ void probs_times_dscores(Scores& scores, Dp& dp, Coords const& coords, const float* lse,
                                                    const float* delta, ScoreScale const& sc) {
  using namespace cute;
  CUTE_UNROLL
  for (int r = 0; r < size<0>(scores); ++r) {
    const int query = get<0>(coords(r, 0));
    const float l = probs_log2_offset(lse[query]);
    const float d = kSubtractDelta ? delta[query] : 0.f;
    CUTE_UNROLL
    for (int c = 0; c < size<1>(scores); ++c) {
      const float p = fast_exp2(scores(r, c) * sc.log2_scale - l);
      scores(r, c) = p;
      dp(r, c) = kSubtractDelta ? (dp(r, c) - d) * p : dp(r, c) * p;
    }
  }
}

// scores / dp: (query, key) views of this tile's S^T and dP^T accumulators; coords: the same view of the
// (query, key) coordinates (tile-local). lse / delta: the tile's rows in shared memory, indexed by the
// tile-local query. On return scores holds P and dp holds dS (without `scale`); masked entries are exactly 0.
// Rows with no visible key, and rows past the sequence, have lse = -inf (query_rows.h), taken as +inf here so
// that P = exp2(x - inf) = 0 (not exp2(-inf + inf) = NaN); rows past the sequence have zeroed Q / dO rows
// (finite scores).
template <bool kSoftcap, class Scores, class Dp, class Coords>
__device__ __forceinline__ void probs_and_dscores_transposed(Scores& scores, Dp& dp, Coords const& coords,
                                                             const float* lse, const float* delta,
                                                             ScoreScale const& sc, AttnMask const& mask,
                                                             bool needs_mask, int row0, int col0) {
  using namespace cute;
  if constexpr (kSoftcap) {
    // The tanh derivative is folded into (dP - delta) before masking: a masked t = -inf must not meet P = 0.
    CUTE_UNROLL
    for (int r = 0; r < size<0>(scores); ++r) {
      const float d = delta[get<0>(coords(r, 0))];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores); ++c) {
        const float t = fast_tanh(scores(r, c) * sc.pre_tanh);
        scores(r, c) = t;
        dp(r, c) = (dp(r, c) - d) * (1.f - t * t);
      }
    }
    if (needs_mask) mask.apply(scores, coords, row0, col0);
    probs_times_dscores</*kSubtractDelta=*/false>(scores, dp, coords, lse, delta, sc);
  } else {
    if (needs_mask) mask.apply(scores, coords, row0, col0);  // scores only: dP needs no mask (P is 0 there)
    probs_times_dscores</*kSubtractDelta=*/true>(scores, dp, coords, lse, delta, sc);
  }
}

// The uncapped path in two passes, so that P can be computed while dP^T is still on the tensor cores (the
// mainloops issue S^T and dP^T as two batches and wait for the first only): probs_transposed masks where needed
// and turns scores into P; dscores_transposed then turns dp into dS = (dP - delta) x P. The same values as
// probs_and_dscores_transposed<false>, operation for operation.
template <class Scores, class Coords>
__device__ __forceinline__ void probs_transposed(Scores& scores, Coords const& coords, const float* lse,
                                                 ScoreScale const& sc, AttnMask const& mask, bool needs_mask,
                                                 int row0, int col0) {
  using namespace cute;
  if (needs_mask) mask.apply(scores, coords, row0, col0);
  CUTE_UNROLL
  for (int r = 0; r < size<0>(scores); ++r) {
    const float l = probs_log2_offset(lse[get<0>(coords(r, 0))]);
    CUTE_UNROLL
    for (int c = 0; c < size<1>(scores); ++c) scores(r, c) = fast_exp2(scores(r, c) * sc.log2_scale - l);
  }
}
template <class Probs, class Dp, class Coords>
__device__ __forceinline__ void dscores_transposed(Probs const& probs, Dp& dp, Coords const& coords,
                                                   const float* delta) {
  using namespace cute;
  CUTE_UNROLL
  for (int r = 0; r < size<0>(dp); ++r) {
    const float d = delta[get<0>(coords(r, 0))];
    CUTE_UNROLL
    for (int c = 0; c < size<1>(dp); ++c) dp(r, c) = (dp(r, c) - d) * probs(r, c);
  }
}

}  // namespace jax_flash
