// What the standalone GPU check tools (cuda/tools/*_check.cu) share: error checks, device buffers, random and
// constant fills, the fp32 reference kernels' block reduction, host copies, element-wise differences, timing,
// the standard grid's cases and the command line.
#pragma once

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "host/attention.h"

namespace jax_flash::check {

#define CHECK_CUDA(call)                                                                          \
  do {                                                                                            \
    const cudaError_t err_ = (call);                                                              \
    if (err_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(2);                                                                               \
    }                                                                                             \
  } while (0)

inline void check_status(const Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.message.c_str());
    std::exit(2);
  }
}

// ---- Device buffers and fills -------------------------------------------------------------------------------
template <class T>
T* device_alloc(int64_t n) {
  T* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, sizeof(T) * size_t(n > 0 ? n : 1)));
  return p;
}

inline int* device_ints(const std::vector<int>& v) {
  if (v.empty()) return nullptr;
  int* p = device_alloc<int>(int64_t(v.size()));
  CHECK_CUDA(cudaMemcpy(p, v.data(), sizeof(int) * v.size(), cudaMemcpyHostToDevice));
  return p;
}

__device__ inline float uniform_hash(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return float(x >> 40) * (1.f / float(1 << 24)) * 2.f - 1.f;  // [-1, 1)
}

template <class Element>
__global__ void fill_uniform(Element* x, int64_t n, uint32_t seed, float amplitude) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    x[i] = Element(amplitude * uniform_hash(uint64_t(i), seed));
  }
}

template <class T>
__global__ void fill_value(T* x, int64_t begin, int64_t end, float value) {
  for (int64_t i = begin + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < end;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] = T(value);
  }
}

// x[begin, end) = value (NaN for rows a kernel must never let into its results).
template <class T>
void fill(T* x, int64_t begin, int64_t end, float value) {
  if (end > begin) fill_value<<<256, 256>>>(x, begin, end, value);
}

// ---- The fp32 references ------------------------------------------------------------------------------------
// Max (is_max) or sum of v over the block; scratch holds one float per warp.
__device__ inline float block_reduce(float v, bool is_max, float* scratch) {
  for (int o = 16; o > 0; o /= 2) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int i = 1; i < warps; ++i) r = is_max ? fmaxf(r, scratch[i]) : r + scratch[i];
  return r;
}

// ---- Host side ----------------------------------------------------------------------------------------------
inline float to_float(cutlass::bfloat16_t x) { return float(x); }
inline float to_float(cutlass::half_t x) { return float(x); }

// ---- Problem layout -------------------------------------------------------------------------------------------
// The forward operands' strides, shapes and attributes of a tool's case `c` (its fields sq, sk, hq, hk, d, dv,
// softcap, window_left, window_right): dense (B, S, H, D) tensors, or packed (T, H, D) with n_seq sequences in
// rows_q / rows_k token rows; lse dense (B, Hq, Sq), packed (Hq, Tq). Pointers and sequence arrays are the
// caller's.
template <class Case>
void set_fwd_layout(AttnFwdParams& p, const Case& c, bool packed, int n_seq, int rows_q, int rows_k) {
  const int64_t sq = packed ? 0 : c.sq, sk = packed ? 0 : c.sk;
  p.q_row_stride = int64_t(c.hq) * c.d, p.q_head_stride = c.d, p.q_batch_stride = sq * p.q_row_stride;
  p.k_row_stride = int64_t(c.hk) * c.d, p.k_head_stride = c.d, p.k_batch_stride = sk * p.k_row_stride;
  p.v_row_stride = int64_t(c.hk) * c.dv, p.v_head_stride = c.dv, p.v_batch_stride = sk * p.v_row_stride;
  p.out_row_stride = int64_t(c.hq) * c.dv, p.out_head_stride = c.dv, p.out_batch_stride = sq * p.out_row_stride;
  p.lse_head_stride = packed ? rows_q : c.sq;
  p.lse_batch_stride = packed ? 0 : int64_t(c.hq) * c.sq;
  p.batch = n_seq;
  p.seqlen_q = packed ? rows_q : c.sq;
  p.seqlen_k = packed ? rows_k : c.sk;
  p.heads_q = c.hq;
  p.heads_k = c.hk;
  p.kv_group = c.hq / c.hk;
  p.head_dim = c.d;
  p.head_dim_v = c.dv;
  p.scale = 1.f / std::sqrt(float(c.d));
  p.softcap = c.softcap;
  p.window_left = c.window_left;
  p.window_right = c.window_right;
}

// Largest element-wise difference; NaN if either side has a NaN.
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return NAN;
    d = std::max(d, double(std::fabs(a[i] - b[i])));
  }
  return d;
}

// Milliseconds per launch(): 3 warm-up calls, then `reps` timed back to back with CUDA events.
template <class Launch>
float time_ms(Launch&& launch, int reps) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) launch();
  CHECK_CUDA(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) launch();
  CHECK_CUDA(cudaEventRecord(stop));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0.f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / reps;
}

// A tool's case (its Case type: name, batch, sq, sk, hq, hk, d, dv, window, softcap, packed fields) for the cell
// (seqlen, mask) of the standard grid (DESIGN.md): 16k tokens per batch, hidden 2048, no GQA.
template <class Case>
Case standard_grid_case(const char* name, int seqlen, bool causal, int d, int dv) {
  const int heads = 2048 / d, batch = std::max(16384 / seqlen, 1);
  return Case{name, batch, seqlen, seqlen, heads, heads, d, dv, -1, causal ? 0 : -1, 0.f, {}, {}, {}, {}, 0};
}

// The check tools' command line: [--small] [--no-timing] [--bf16] [--profile S full|causal].
struct ToolArgs {
  bool small = false;         // a few small cases, for compute-sanitizer
  bool timing = true;         // the standard grid's timings after the correctness cases
  bool fp16 = true;           // fp16 as well as bf16
  int profile_seqlen = 0;     // > 0: one bf16 pass of the standard grid's cell (profile_seqlen, mask) only
  bool profile_causal = false;
};
inline ToolArgs parse_tool_args(int argc, char** argv) {
  ToolArgs a;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--small") == 0) a.small = true;
    if (std::strcmp(argv[i], "--no-timing") == 0) a.timing = false;
    if (std::strcmp(argv[i], "--bf16") == 0) a.fp16 = false;
    if (std::strcmp(argv[i], "--profile") == 0 && i + 2 < argc) {
      a.profile_seqlen = std::atoi(argv[i + 1]);
      a.profile_causal = std::strcmp(argv[i + 2], "causal") == 0;
    }
  }
  return a;
}

}  // namespace jax_flash::check
