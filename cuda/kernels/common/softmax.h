// Score scaling, softcap and the online (streaming) softmax in fp32 with exp2.
//
// The kernels keep raw scores r = q.k in their accumulators and fold every scale into one exp2 argument:
//   no softcap:  s = scale * r                       p = exp2(r * scale_log2 - max_r * scale_log2)
//   softcap c:   t = tanh(r * scale / c), s = c * t   p = exp2(t * c*log2e    - max_t * c*log2e)
// so the only per-element work besides exp2 is one FFMA (plus one tanh with softcap). `ScoreScale` holds
// these constants; the backward recomputes P = exp2(x * log2_scale - lse * log2e) from the same values.
// Shared by the forward and backward kernels.
#pragma once

#include <cute/tensor.hpp>

#include <cmath>

namespace jax_flash {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_tanh(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

struct ScoreScale {
  bool softcap;      // scores pass through tanh
  float pre_tanh;    // softcap: raw score multiplier inside tanh (scale / c)
  float log2_scale;  // multiplier of the (capped) score inside exp2
  float natural;     // multiplier of the (capped) score to natural-log units: s = natural * x

  __host__ __device__ static ScoreScale make(float scale, float softcap) {
    if (softcap > 0.f) return ScoreScale{true, scale / softcap, softcap * kLog2e, softcap};
    return ScoreScale{false, 1.f, scale * kLog2e, scale};
  }
};

// x <- tanh(x * pre_tanh) on every element (the capped score divided by the cap).
template <class Tensor>
__device__ __forceinline__ void apply_softcap(Tensor& x, float pre_tanh) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(x); ++i) x(i) = fast_tanh(x(i) * pre_tanh);
}

// Reduce over the 4 threads (lanes 4g .. 4g+3) that share a row of an m16n8 accumulator.
template <class Op>
__device__ __forceinline__ float quad_allreduce(float v, Op op) {
  v = op(v, __shfl_xor_sync(0xffffffff, v, 1));
  v = op(v, __shfl_xor_sync(0xffffffff, v, 2));
  return v;
}

// Streaming softmax over key tiles for kRows rows per thread. Row statistics are per thread while
// streaming: the max is made quad-uniform at each step (it sets the exp2 offset), the sum only at the end.
template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];  // running max of the (capped) score x, -inf while nothing is visible
  float row_sum[kRows];  // this thread's partial sum of exp2((x - max) * log2_scale)
  float log2_scale;

  __device__ explicit OnlineSoftmax(float log2_scale_) : log2_scale(log2_scale_) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  // One key tile. scores: (row, col) view of x for this tile, overwritten by the unnormalized probabilities;
  // acc_o: (row, col) view of the output accumulator, rescaled to the new max. Invisible scores are -inf.
  // kSkipKeptMax: skip the rescale when no row max of the warp moved (every correction is exactly 1, so the
  // result is the same bits). Worth its vote where tiles are narrow and the rescale is a large share of the
  // work per key (the paged decode's 16 keys per warp).
  template <bool kSkipKeptMax = false, class ScoreTensor, class OutTensor>
  __device__ __forceinline__ void step(ScoreTensor& scores, OutTensor& acc_o) {
    static_assert(decltype(cute::size<0>(scores))::value == kRows, "row count mismatch");
    float offset[kRows];  // new max in exp2 units; 0 while a row has nothing visible (exp2 -> exactly 0)
    float correction[kRows];
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float m = row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(scores); ++c) m = fmaxf(m, scores(r, c));
      m = quad_allreduce(m, [](float a, float b) { return fmaxf(a, b); });
      offset[r] = (m == -INFINITY) ? 0.f : m * log2_scale;
      correction[r] = fast_exp2(row_max[r] * log2_scale - offset[r]);
      row_max[r] = m;
      row_sum[r] *= correction[r];
    }
    bool rescale = true;
    if constexpr (kSkipKeptMax) {
      bool moved = false;
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) moved |= correction[r] != 1.f;
      rescale = __any_sync(0xffffffff, moved);  // warp-uniform branch
    }
    if (rescale) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int c = 0; c < cute::size<1>(acc_o); ++c) acc_o(r, c) *= correction[r];
      }
    }
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float sum = 0.f;
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(scores); ++c) {
        const float p = fast_exp2(scores(r, c) * log2_scale - offset[r]);
        scores(r, c) = p;
        sum += p;
      }
      row_sum[r] += sum;
    }
  }

  // Normalizes acc_o and returns each row's natural-log LSE through `lse`: max * natural + log(sum).
  // Rows that saw no key: output stays 0, lse = -inf.
  template <class OutTensor>
  __device__ __forceinline__ void finalize(OutTensor& acc_o, float natural_scale, float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_allreduce(row_sum[r], [](float a, float b) { return a + b; });
      const bool empty = !(sum > 0.f);  // also catches NaN
      const float inv = empty ? 0.f : 1.f / sum;
      lse[r] = empty ? -INFINITY : row_max[r] * natural_scale + logf(sum);
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(acc_o); ++c) acc_o(r, c) *= inv;
    }
  }

  // finalize with one more score per row, the raw logit `sink` (an attention sink: in the normaliser, no
  // value). With M = max * natural_scale (-inf for a row that saw no key) and m = max(M, sink):
  //   sum' = sum * exp(M - m) + exp(sink - m),   lse = m + log(sum'),   acc_o *= exp(M - m) / sum',
  // finite for any sink far above or below the scores. A row that saw no key gets out 0 and lse = sink;
  // sink = -inf is no sink, +inf takes all the weight (out 0, lse +inf).
  template <class OutTensor>
  __device__ __forceinline__ void finalize_with_sink(OutTensor& acc_o, float natural_scale, float sink,
                                                     float (&lse)[kRows]) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_allreduce(row_sum[r], [](float a, float b) { return a + b; });
      const bool seen = sum > 0.f;  // false for NaN too, as in finalize
      const float row_m = seen ? row_max[r] * natural_scale : -INFINITY;
      const float m = fmaxf(row_m, sink);
      const bool empty = m == -INFINITY;  // no key and no sink
      const float keep = fast_exp2((row_m - m) * kLog2e);  // 0 for a row that saw no key
      const float sink_p = sink == m ? 1.f : fast_exp2((sink - m) * kLog2e);  // no inf - inf
      const float total = (seen ? sum * keep : 0.f) + sink_p;
      const float inv = empty ? 0.f : keep / total;
      lse[r] = empty ? -INFINITY : m + logf(total);
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(acc_o); ++c) acc_o(r, c) *= inv;
    }
  }

  // finalize, or finalize_with_sink when `sink` (the sink logit of every row of the tile) is not null. The
  // branch is uniform, and without a sink the code and its results are finalize's.
  template <class OutTensor>
  __device__ __forceinline__ void finalize(OutTensor& acc_o, float natural_scale, const float* sink,
                                           float (&lse)[kRows]) {
    if (sink != nullptr) {
      finalize_with_sink(acc_o, natural_scale, *sink, lse);
    } else {
      finalize(acc_o, natural_scale, lse);
    }
  }
};

}  // namespace jax_flash
