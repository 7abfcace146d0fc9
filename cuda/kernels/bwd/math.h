// The element-wise heart of the backward pass: from recomputed raw scores r = q.k and dP = dO.v to
//   P  = exp(s - lse)                            s = scale * r, or softcap * tanh(scale * r / softcap)
//   dS = P * (dP - delta) * ds/d(scale * r)      ds/d(scale * r) = 1, or 1 - tanh^2
// The caller multiplies dS-products by `scale` once, at the end (dK = scale * dS^T Q, dQ = scale * dS K).
// Shared by the dk/dv and dq kernels.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

#include "kernels/common/mask.h"
#include "kernels/common/softmax.h"

namespace jax_flash {

// Per-row statistics of the rows a thread holds in an accumulator fragment.
template <int kRows>
struct BwdRowStats {
  // lse * log2(e). +inf for rows with no visible key (lse = -inf) and rows past the sequence, so that
  // exp2(x - lse_log2) is exactly 0 there instead of inf or NaN.
  float lse_log2[kRows];
  float delta[kRows];  // rowsum(dO * O) - dlse

  // rows: (row, col) view of the tile's identity coordinates; lse / delta: row 0 of this (batch, head);
  // row0: the tile's first query.
  template <class Coords>
  __device__ __forceinline__ void load(Coords const& rows, const float* __restrict__ lse,
                                       const float* __restrict__ delta_rows, int row0, int seqlen_q) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + cute::get<0>(rows(r, 0));
      if (row < seqlen_q) {
        const float l = lse[row];
        lse_log2[r] = l == -INFINITY ? INFINITY : l * kLog2e;
        delta[r] = delta_rows[row];
      } else {
        lse_log2[r] = INFINITY;
        delta[r] = 0.f;
      }
    }
  }
};

// scores / dp: (row, col) views of the S = Q K^T and dP = dO V^T accumulators of one tile; coords: the same
// view of the tile's identity coordinates. On return scores holds P and dp holds dS (without `scale`).
// Masked entries come out exactly 0 in both.
template <class Scores, class Dp, class Coords, int kRows>
__device__ __forceinline__ void probs_and_dscores(Scores& scores, Dp& dp, Coords const& coords,
                                                  BwdRowStats<kRows> const& stats, ScoreScale const& sc,
                                                  AttnMask const& mask, bool needs_mask, int row0, int col0) {
  using namespace cute;
  static_assert(decltype(size<0>(scores))::value == kRows, "row count mismatch");
  if (sc.softcap) {
    // Fold the tanh derivative into (dP - delta) before masking: a masked t = -inf must not meet P = 0.
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores); ++c) {
        const float t = fast_tanh(scores(r, c) * sc.pre_tanh);
        scores(r, c) = t;
        dp(r, c) = (dp(r, c) - stats.delta[r]) * (1.f - t * t);
      }
    }
  } else {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(scores); ++c) dp(r, c) -= stats.delta[r];
    }
  }
  if (needs_mask) mask.apply(scores, coords, row0, col0);
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    CUTE_UNROLL
    for (int c = 0; c < size<1>(scores); ++c) {
      const float p = fast_exp2(scores(r, c) * sc.log2_scale - stats.lse_log2[r]);
      scores(r, c) = p;
      dp(r, c) *= p;
    }
  }
}

}  // namespace jax_flash
