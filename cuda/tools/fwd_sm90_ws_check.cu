// GPU check of the warp-specialized Hopper forward (kernels/fwd/sm90_ws/): every output element against an
// fp32 reference, with the current forward's error on the same inputs as the yardstick (DESIGN.md's oracle
// rule with the current kernel in the place of the naive one), then speed beside the current forward.
//
// Build from the repository root (CHECK_HEAD_DIM / CHECK_HEAD_DIM_V pick the tile; Dv defaults to D; with
// -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED the timings add FlashAttention-3's wider key tile, see tile_size.h;
// -DCHECK_ALT_BLOCK_N=N times the key tile N instead; -DCHECK_BLOCK_M / _BLOCK_N / _PINGPONG / _OVERLAP /
// _PERSISTENT / _LONGEST_FIRST / _P_SMEM check and time that variant in place of the library's kernel, see TestedConfig):
//   nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr --use_fast_math \
//        -DJAX_FLASH_HAS_SM90A -DCHECK_HEAD_DIM=128 -Icuda -I<CUTLASS include> \
//        cuda/tools/fwd_sm90_ws_check.cu -o /tmp/fwd_sm90_ws_check
// Run: fwd_sm90_ws_check [--small] [--no-timing] [--bf16] [--profile S full|causal]
//   --small      a few small cases, the new kernel only, fixed tolerances (for compute-sanitizer)
//   --no-timing  correctness only
//   --bf16       bf16 only (correctness and timing; fp16 too by default)
//   --profile    one bf16 forward (the tested kernel) of that standard-grid cell, nothing else (for ncu)
// Exit status 0 when every case passes.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "host/fwd_sm90_ws_launch.cuh"
#include "host/smem_opt_in.h"
#include "kernels/fwd/kernel.cuh"
#include "kernels/fwd/tile_config.h"
#include "kernels/fwd/tile_config_sm90.h"
#include "kernels/sched/longest_first_scheduler.h"
#include "kernels/sched/single_tile_scheduler.h"
#include "tools/check_common.h"

#ifndef CHECK_HEAD_DIM
#define CHECK_HEAD_DIM 128
#endif
#ifndef CHECK_HEAD_DIM_V
#define CHECK_HEAD_DIM_V CHECK_HEAD_DIM
#endif

namespace jax_flash {
namespace {

using namespace check;  // tools/check_common.h

constexpr int kD = CHECK_HEAD_DIM;
constexpr int kDv = CHECK_HEAD_DIM_V;
// A second key tile timed beside the default: -DCHECK_ALT_BLOCK_N=N (non-standard wgmma N, e.g. 160 or 176,
// also need -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED), else FlashAttention-3's where it differs from the default
// and needs the extended wgmma shapes; 0: none.
#if defined(CHECK_ALT_BLOCK_N)
constexpr int kWideBlockN = CHECK_ALT_BLOCK_N;
#elif defined(CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED)
constexpr int kWideBlockN = kD != kDv ? 0 : kD == 96 ? 144 : kD == 128 ? 176 : kD == 192 ? 112 : kD == 256 ? 80 : 0;
#else
constexpr int kWideBlockN = 0;
#endif


// ---- The current forward (the kernel the new one replaces), launched directly -------------------------------
template <class Element, int D, int Dv, bool = Sm90FwdDefaultConfig<Element, D, Dv>::kAvailable>
struct CurrentConfig {
  using type = typename FwdDefaultConfig<Element, D, Dv>::type;
};
template <class Element, int D, int Dv>
struct CurrentConfig<Element, D, Dv, true> {
  using type = typename Sm90FwdDefaultConfig<Element, D, Dv>::type;
};

template <class Element>
Status launch_current(const AttnFwdParams& p, cudaStream_t stream) {
  using Cfg = typename CurrentConfig<Element, kD, kDv>::type;
  const dim3 grid(tile_grid_x(p, p.seqlen_q, Cfg::kBlockM), p.heads_q, p.layout_batch());
  auto kernel = p.softcap > 0.f ? &attn_fwd_kernel<Cfg, true> : &attn_fwd_kernel<Cfg, false>;
  if (Status s = opt_in_dynamic_smem(kernel, Cfg::kSmemBytes, "current forward"); !s.ok()) return s;
  kernel<<<grid, Cfg::kNThreads, Cfg::kSmemBytes, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? Status{} : Status{cudaGetErrorString(err)};
}

// ---- Inputs and the fp32 reference -------------------------------------------------------------------------------


// Tensors are contiguous: q (rows, hq, d), k (rows, hk, d), v (rows, hk, dv), out (rows, hq, dv); the
// reference writes ref_out (rows_q, hq, dv) and ref_lse (rows_q, hq) in fp32.
struct RefProblem {
  const void *q, *k, *v;
  float *out, *lse;
  bool packed;
  int sq, sk;  // dense lengths
  const int *cu_q, *cu_k, *used_q, *used_k;
  int hq, hk, d, dv;
  float scale, softcap;
  int window_left, window_right;
};


// One block per (query row, head, sequence): the scores of all keys in shared memory, then exact softmax.
template <class Element>
__global__ void reference_fwd(RefProblem r) {
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  int q0, sq, k0, sk;
  if (r.packed) {
    q0 = r.cu_q[b];
    k0 = r.cu_k[b];
    sq = r.used_q ? r.used_q[b] : r.cu_q[b + 1] - q0;
    sk = r.used_k ? r.used_k[b] : r.cu_k[b + 1] - k0;
  } else {
    q0 = b * r.sq;
    k0 = b * r.sk;
    sq = r.sq;
    sk = r.sk;
  }
  if (i >= sq) return;
  extern __shared__ float sm[];
  float* q_row = sm;        // 256
  float* scratch = sm + 256;  // 32
  float* s = sm + 288;        // sk
  const int hkv = h / (r.hq / r.hk);
  const Element* q = static_cast<const Element*>(r.q) + (int64_t(q0 + i) * r.hq + h) * r.d;
  const Element* k = static_cast<const Element*>(r.k);
  const Element* v = static_cast<const Element*>(r.v);
  for (int c = threadIdx.x; c < r.d; c += blockDim.x) q_row[c] = float(q[c]);
  __syncthreads();
  const int pos = i + sk - sq;
  float local_max = -INFINITY;
  for (int j = threadIdx.x; j < sk; j += blockDim.x) {
    const bool visible =
        (r.window_left < 0 || j >= pos - r.window_left) && (r.window_right < 0 || j <= pos + r.window_right);
    float x = -INFINITY;
    if (visible) {
      const Element* kj = k + (int64_t(k0 + j) * r.hk + hkv) * r.d;
      float dot = 0.f;
      for (int c = 0; c < r.d; ++c) dot += q_row[c] * float(kj[c]);
      x = dot * r.scale;
      if (r.softcap > 0.f) x = r.softcap * tanhf(x / r.softcap);
    }
    s[j] = x;
    local_max = fmaxf(local_max, x);
  }
  const float m = block_reduce(local_max, true, scratch);
  float* out = r.out + (int64_t(q0 + i) * r.hq + h) * r.dv;
  float* lse = r.lse + int64_t(q0 + i) * r.hq + h;
  if (m == -INFINITY) {
    for (int c = threadIdx.x; c < r.dv; c += blockDim.x) out[c] = 0.f;
    if (threadIdx.x == 0) *lse = -INFINITY;
    return;
  }
  float local_sum = 0.f;
  for (int j = threadIdx.x; j < sk; j += blockDim.x) {
    const float p = expf(s[j] - m);
    s[j] = p;
    local_sum += p;
  }
  const float sum = block_reduce(local_sum, false, scratch);
  __syncthreads();
  for (int c = threadIdx.x; c < r.dv; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < sk; ++j) acc += s[j] * float(v[(int64_t(k0 + j) * r.hk + hkv) * r.dv + c]);
    out[c] = acc / sum;
  }
  if (threadIdx.x == 0) *lse = m + logf(sum);
}

// ---- One problem: shapes, buffers, params ---------------------------------------------------------------------
struct Case {
  std::string name;
  int batch, sq, sk, hq, hk, d, dv;
  int window_left, window_right;  // causal: (-1, 0)
  float softcap;
  std::vector<int> lens_q, lens_k, used_q, used_k;  // packed when lens_q is not empty; used_* optional
  int pad_rows;                                    // packed: rows after the last sequence
};


template <class Element>
struct Problem {
  Case c;
  bool packed;
  int rows_q, rows_k, n_seq;
  std::vector<int> cu_q, cu_k;
  Element *q, *k, *v, *out;
  float* lse;
  int *d_cu_q = nullptr, *d_cu_k = nullptr, *d_used_q = nullptr, *d_used_k = nullptr;
  AttnFwdParams p{};

  explicit Problem(const Case& c_) : c(c_), packed(!c_.lens_q.empty()) {
    if (packed) {
      n_seq = int(c.lens_q.size());
      cu_q = {0};
      cu_k = {0};
      for (int b = 0; b < n_seq; ++b) {
        cu_q.push_back(cu_q.back() + c.lens_q[b]);
        cu_k.push_back(cu_k.back() + c.lens_k[b]);
      }
      rows_q = cu_q.back() + c.pad_rows;
      rows_k = cu_k.back() + c.pad_rows;
    } else {
      n_seq = c.batch;
      rows_q = c.batch * c.sq;
      rows_k = c.batch * c.sk;
    }
    q = device_alloc<Element>(int64_t(rows_q) * c.hq * c.d);
    k = device_alloc<Element>(int64_t(rows_k) * c.hk * c.d);
    v = device_alloc<Element>(int64_t(rows_k) * c.hk * c.dv);
    out = device_alloc<Element>(int64_t(rows_q) * c.hq * c.dv);
    lse = device_alloc<float>(int64_t(rows_q) * c.hq);
    fill_uniform<<<1024, 256>>>(q, int64_t(rows_q) * c.hq * c.d, 1u, 3.f);
    fill_uniform<<<1024, 256>>>(k, int64_t(rows_k) * c.hk * c.d, 2u, 1.f);
    fill_uniform<<<1024, 256>>>(v, int64_t(rows_k) * c.hk * c.dv, 3u, 1.f);
    if (packed) {
      // Key rows past each sequence's used length and after the last sequence: NaN, which a kernel that
      // multiplies them by a zero probability would spread.
      for (int b = 0; b <= n_seq; ++b) {
        const int begin = b < n_seq ? cu_k[b] + (c.used_k.empty() ? c.lens_k[b] : c.used_k[b]) : cu_k[b];
        const int end = b < n_seq ? cu_k[b + 1] : rows_k;
        fill(k, int64_t(begin) * c.hk * c.d, int64_t(end) * c.hk * c.d, NAN);
        fill(v, int64_t(begin) * c.hk * c.dv, int64_t(end) * c.hk * c.dv, NAN);
      }
    }
    CHECK_CUDA(cudaGetLastError());
    if (packed) {
      d_cu_q = device_ints(cu_q);
      d_cu_k = device_ints(cu_k);
      d_used_q = device_ints(c.used_q);
      d_used_k = device_ints(c.used_k);
    }

    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.lse = lse;
    set_fwd_layout(p, c, packed, n_seq, rows_q, rows_k);
    p.cu_seqlens_q = d_cu_q;
    p.cu_seqlens_k = d_cu_k;
    p.seqused_q = d_used_q;
    p.seqused_k = d_used_k;
  }

  ~Problem() {
    for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)out, (void*)lse, (void*)d_cu_q, (void*)d_cu_k,
                      (void*)d_used_q, (void*)d_used_k}) {
      if (ptr) cudaFree(ptr);
    }
  }

  void poison() {
    CHECK_CUDA(cudaMemset(out, 0xff, sizeof(Element) * size_t(rows_q) * c.hq * c.dv));  // NaN
    CHECK_CUDA(cudaMemset(lse, 0xff, sizeof(float) * size_t(rows_q) * c.hq));
  }

  // Rows [start, start + count) of each sequence that the kernel must write.
  std::vector<std::pair<int, int>> valid_rows() const {
    std::vector<std::pair<int, int>> rows;
    for (int b = 0; b < n_seq; ++b) {
      if (!packed) {
        rows.push_back({b * c.sq, c.sq});
      } else {
        rows.push_back({cu_q[b], c.used_q.empty() ? c.lens_q[b] : c.used_q[b]});
      }
    }
    return rows;
  }
  int max_len_q() const {
    int m = 0;
    for (auto [s, n] : valid_rows()) m = std::max(m, n);
    return m;
  }
  int max_len_k() const {
    if (!packed) return c.sk;
    int m = 0;
    for (int b = 0; b < n_seq; ++b) m = std::max(m, c.used_k.empty() ? c.lens_k[b] : c.used_k[b]);
    return m;
  }
};

// Host copies of one kernel's output over the valid rows, in reference layout.
struct Result {
  std::vector<float> out;  // (rows_q, hq, dv)
  std::vector<float> lse;  // (rows_q, hq)
};


template <class Element>
Result fetch(const Problem<Element>& pr) {
  const auto& c = pr.c;
  std::vector<Element> out(size_t(pr.rows_q) * c.hq * c.dv);
  std::vector<float> lse_raw(size_t(pr.rows_q) * c.hq);
  CHECK_CUDA(cudaMemcpy(out.data(), pr.out, sizeof(Element) * out.size(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(lse_raw.data(), pr.lse, sizeof(float) * lse_raw.size(), cudaMemcpyDeviceToHost));
  Result r;
  r.out.resize(out.size());
  for (size_t i = 0; i < out.size(); ++i) r.out[i] = to_float(out[i]);
  r.lse.resize(lse_raw.size());
  for (int row = 0; row < pr.rows_q; ++row) {
    for (int h = 0; h < c.hq; ++h) {
      // dense lse (B, Hq, Sq); packed (Hq, Tq)
      const int64_t src = pr.packed ? int64_t(h) * pr.rows_q + row
                                    : (int64_t(row / c.sq) * c.hq + h) * c.sq + row % c.sq;
      r.lse[size_t(row) * c.hq + h] = lse_raw[src];
    }
  }
  return r;
}

struct Errors {
  double out = 0, lse = 0;
  long bad = 0;  // NaN, or a row without keys that is not exactly (0, -inf)
};

template <class Element>
Errors compare(const Problem<Element>& pr, const Result& got, const Result& ref) {
  const auto& c = pr.c;
  Errors e;
  for (auto [start, count] : pr.valid_rows()) {
    for (int row = start; row < start + count; ++row) {
      for (int h = 0; h < c.hq; ++h) {
        const size_t li = size_t(row) * c.hq + h;
        const float rl = ref.lse[li], gl = got.lse[li];
        const bool empty = std::isinf(rl) && rl < 0;
        if (std::isnan(gl) || (empty && !(std::isinf(gl) && gl < 0))) ++e.bad;
        if (!empty && !std::isnan(gl)) e.lse = std::max(e.lse, double(std::fabs(gl - rl)));
        for (int col = 0; col < c.dv; ++col) {
          const size_t oi = li * c.dv + col;
          const float g = got.out[oi];
          if (std::isnan(g) || (empty && g != 0.f)) ++e.bad;
          if (!std::isnan(g)) e.out = std::max(e.out, double(std::fabs(g - ref.out[oi])));
        }
      }
    }
  }
  return e;
}

template <class Element>
Result run_reference(const Problem<Element>& pr) {
  const auto& c = pr.c;
  float* out = device_alloc<float>(int64_t(pr.rows_q) * c.hq * c.dv);
  float* lse = device_alloc<float>(int64_t(pr.rows_q) * c.hq);
  CHECK_CUDA(cudaMemset(out, 0, sizeof(float) * size_t(pr.rows_q) * c.hq * c.dv));
  CHECK_CUDA(cudaMemset(lse, 0, sizeof(float) * size_t(pr.rows_q) * c.hq));
  RefProblem r{pr.q, pr.k, pr.v, out, lse, pr.packed, c.sq, c.sk, pr.d_cu_q, pr.d_cu_k, pr.d_used_q, pr.d_used_k,
               c.hq, c.hk, c.d, c.dv, pr.p.scale, c.softcap, c.window_left, c.window_right};
  const int max_q = std::max(pr.max_len_q(), 1);
  const size_t smem = sizeof(float) * (288 + size_t(std::max(pr.max_len_k(), 1)));
  CHECK_CUDA(cudaFuncSetAttribute(reference_fwd<Element>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  reference_fwd<Element><<<dim3(max_q, c.hq, pr.n_seq), 128, smem>>>(r);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  Result res;
  res.out.resize(size_t(pr.rows_q) * c.hq * c.dv);
  res.lse.resize(size_t(pr.rows_q) * c.hq);
  CHECK_CUDA(cudaMemcpy(res.out.data(), out, sizeof(float) * res.out.size(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(res.lse.data(), lse, sizeof(float) * res.lse.size(), cudaMemcpyDeviceToHost));
  cudaFree(out);
  cudaFree(lse);
  return res;
}

// The kernel under test: the library's (through its launcher), or, when any of -DCHECK_BLOCK_M=M,
// -DCHECK_BLOCK_N=N, -DCHECK_PINGPONG=0/1, -DCHECK_OVERLAP=0/1, -DCHECK_PERSISTENT=0/1,
// -DCHECK_LONGEST_FIRST=0/1, -DCHECK_P_SMEM=0/1 (P V with P from shared memory) is given, that variant of the library's tile (e.g. 192 x 128 at D64, the steps of
// the schedule without pingpong / intra-warpgroup overlap, the persistent grid, or the longest-first order of
// the dense causal grid), launched directly for every case (correctness, --small, timing); the timing then
// shows the library's kernel beside it.
#if defined(CHECK_BLOCK_M) || defined(CHECK_BLOCK_N) || defined(CHECK_PINGPONG) || defined(CHECK_OVERLAP) || \
    defined(CHECK_PERSISTENT) || defined(CHECK_LONGEST_FIRST) || defined(CHECK_P_SMEM)
#define CHECK_OWN_VARIANT 1
#ifndef CHECK_BLOCK_M
#define CHECK_BLOCK_M Sm90WsTileSize<kD, kDv>::kBlockM
#endif
#ifndef CHECK_BLOCK_N
#define CHECK_BLOCK_N Sm90WsTileSize<kD, kDv>::kBlockN
#endif
#ifndef CHECK_PINGPONG
#define CHECK_PINGPONG Sm90WsTileSize<kD, kDv>::kPingpong
#endif
#ifndef CHECK_OVERLAP
#define CHECK_OVERLAP Sm90WsTileSize<kD, kDv>::kIntraWgOverlap
#endif
#ifndef CHECK_PERSISTENT
#define CHECK_PERSISTENT 0
#endif
#ifndef CHECK_LONGEST_FIRST
#define CHECK_LONGEST_FIRST kSm90WsFwdLongestFirst
#endif
#ifndef CHECK_P_SMEM
#define CHECK_P_SMEM Sm90WsTileSize<kD, kDv>::kPvFromSmem
#endif
template <class Element>
using TestedConfig = Sm90WsFwdConfig<Element, kD, kDv, CHECK_BLOCK_M, CHECK_BLOCK_N, 2, bool(CHECK_PINGPONG),
                                     bool(CHECK_OVERLAP), bool(CHECK_LONGEST_FIRST), bool(CHECK_P_SMEM)>;
constexpr bool kTestsOwnTile = true;
#else
constexpr bool kTestsOwnTile = false;
#endif

template <class Element>
Status launch_new(const AttnFwdParams& p, cudaStream_t stream) {
#if defined(CHECK_OWN_VARIANT)
  return launch_attn_fwd_sm90_ws<TestedConfig<Element>, bool(CHECK_PERSISTENT)>(p, stream);
#else
  return run_attn_fwd_sm90_ws<Element, kD, kDv>(p, stream);
#endif
}

// ---- Correctness ------------------------------------------------------------------------------------------------
std::vector<Case> correctness_cases(bool small) {
  const int d = kD, dv = kDv;
  const int c_wl = -1, c_wr = 0;  // causal
  if (small) {
    return {
        {"small causal gqa2 sq200 sk300", 2, 200, 300, 4, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
        {"small window(40,8) softcap sq260 sk190", 1, 260, 190, 2, 2, d, dv, 40, 8, 20.f, {}, {}, {}, {}, 0},
        {"small packed causal", 0, 0, 0, 2, 1, d, dv, c_wl, c_wr, 0.f,
         {0, 150, 1, 70}, {3, 130, 90, 0}, {0, 140, 1, 70}, {3, 130, 80, 0}, 16},
        // More tiles than SMs: a persistent grid's CTAs walk several tiles each (rows without keys included).
        {"small causal sq640 sk400 gqa5 H40 (tiles > SMs)", 1, 640, 400, 40, 8, d, dv, c_wl, c_wr, 0.f,
         {}, {}, {}, {}, 0},
        {"small packed causal H36 (tiles > SMs)", 0, 0, 0, 36, 4, d, dv, c_wl, c_wr, 0.f,
         {0, 150, 1, 70}, {3, 130, 90, 0}, {0, 140, 1, 70}, {3, 130, 80, 0}, 16},
        // GQA 7 (the sanitizer grid's ratio).
        {"small causal gqa7 sq150 sk170", 1, 150, 170, 14, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
    };
  }
  return {
      {"full B2 S1024 H4", 2, 1024, 1024, 4, 4, d, dv, -1, -1, 0.f, {}, {}, {}, {}, 0},
      {"causal B2 S1024 H4", 2, 1024, 1024, 4, 4, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"causal sq777 sk1000", 1, 777, 1000, 2, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"causal sq1000 sk777 (empty rows)", 1, 1000, 777, 2, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"window(100,30) B2 S900 gqa2", 2, 900, 900, 2, 1, d, dv, 100, 30, 0.f, {}, {}, {}, {}, 0},
      {"window(-1,64) softcap20 S700", 1, 700, 700, 2, 2, d, dv, -1, 64, 20.f, {}, {}, {}, {}, 0},
      {"full softcap30 gqa7 sq513 sk1500", 1, 513, 1500, 14, 2, d, dv, -1, -1, 30.f, {}, {}, {}, {}, 0},
      {"causal sq300 sk5", 1, 300, 5, 2, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"full sk0 (no keys)", 2, 100, 0, 2, 2, d, dv, -1, -1, 0.f, {}, {}, {}, {}, 0},
      {"causal decode sq1 sk1000", 3, 1, 1000, 8, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"full head dims D-8", 1, 600, 700, 3, 1, d - 8, dv - 8, -1, -1, 0.f, {}, {}, {}, {}, 0},
      {"packed full gqa2", 0, 0, 0, 4, 2, d, dv, -1, -1, 0.f, {0, 300, 1, 517, 129}, {5, 300, 700, 517, 0}, {}, {}, 16},
      {"packed causal seqused", 0, 0, 0, 4, 2, d, dv, c_wl, c_wr, 0.f, {0, 300, 1, 517, 129}, {5, 300, 700, 517, 0},
       {0, 250, 1, 517, 100}, {5, 300, 650, 400, 0}, 16},
      // More tiles than SMs (a persistent grid walks several per CTA).
      {"causal B4 S2048 gqa4 H16 (tiles > SMs)", 4, 2048, 2048, 16, 4, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"packed causal seqused H40 (tiles > SMs)", 0, 0, 0, 40, 8, d, dv, c_wl, c_wr, 0.f, {0, 300, 1, 517, 129},
       {5, 300, 700, 517, 0}, {0, 250, 1, 517, 100}, {5, 300, 650, 400, 0}, 16},
      // 18 (head, sequence) pairs whose K / V exceed the longest-first order's L2 budget in groups of
      // 2 (D256) to 10 (D64), the last group partial (longest_first_scheduler.h).
      {"causal B3 sq6000 sk6100 H6 (pair groups)", 3, 6000, 6100, 6, 6, d, dv, c_wl, c_wr, 0.f,
       {}, {}, {}, {}, 0},
  };
}

template <class Element>
bool check_correctness(bool small, const char* dtype) {
  bool all_ok = true;
  for (const Case& c : correctness_cases(small)) {
    Problem<Element> pr(c);
    const Result ref = run_reference(pr);
    Errors cur{};
    if (!small) {
      pr.poison();
      check_status(launch_current<Element>(pr.p, nullptr), "current forward");
      CHECK_CUDA(cudaDeviceSynchronize());
      cur = compare(pr, fetch(pr), ref);
    }
    pr.poison();
    check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws forward");
    CHECK_CUDA(cudaDeviceSynchronize());
    const Result got = fetch(pr);
    const Errors e = compare(pr, got, ref);
    // A second run on the same inputs must give the same bits.
    pr.poison();
    check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws forward");
    CHECK_CUDA(cudaDeviceSynchronize());
    const Result again = fetch(pr);
    bool same = true;
    for (auto [start, count] : pr.valid_rows()) {
      const size_t o0 = size_t(start) * c.hq * c.dv, on = size_t(count) * c.hq * c.dv;
      const size_t l0 = size_t(start) * c.hq, ln = size_t(count) * c.hq;
      same = same && std::memcmp(&got.out[o0], &again.out[o0], on * sizeof(float)) == 0 &&
             std::memcmp(&got.lse[l0], &again.lse[l0], ln * sizeof(float)) == 0;
    }
    const double out_tol = small ? 2e-2 : 2 * cur.out + 1e-3;
    const double lse_tol = small ? 1e-3 : 2 * cur.lse + 1e-3;
    const bool ok = e.bad == 0 && e.out <= out_tol && e.lse <= lse_tol && same && (small || cur.bad == 0);
    all_ok = all_ok && ok;
    std::printf("%-5s D%d/%d %-40s out err %.2e (current %.2e) lse err %.2e (current %.2e) bad %ld/%ld %s %s\n",
                dtype, c.d, c.dv, c.name.c_str(), e.out, cur.out, e.lse, cur.lse, e.bad, cur.bad,
                same ? "repeatable" : "NOT REPEATABLE", ok ? "PASS" : "FAIL");
  }
  return all_ok;
}


// ---- Speed ------------------------------------------------------------------------------------------------------

template <class Element>
void benchmark(const char* dtype) {
  for (bool causal : {false, true}) {
    for (int s : {1024, 4096, 16384}) {
      const Case c = standard_grid_case<Case>("bench", s, causal, kD, kDv);
      const int batch = c.batch, heads = c.hq;
      Problem<Element> pr(c);
      check_status(launch_current<Element>(pr.p, nullptr), "current forward");
      CHECK_CUDA(cudaDeviceSynchronize());
      const Result cur = fetch(pr);
      check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws forward");
      CHECK_CUDA(cudaDeviceSynchronize());
      const Result got = fetch(pr);
      const double diff = max_abs_diff(got.out, cur.out);
      const int reps = s >= 16384 ? 10 : 20;
      const float ms_cur = time_ms([&] { launch_current<Element>(pr.p, nullptr); }, reps);
      const float ms_new = time_ms([&] { launch_new<Element>(pr.p, nullptr); }, reps);
      // FlashAttention-3's wider key tile where it needs the extended wgmma shapes (tile_size.h).
      float ms_wide = 0.f;
      double wide_diff = 0;
      if constexpr (kWideBlockN > 0) {
        using Wide = Sm90WsFwdConfig<Element, kD, kDv, Sm90WsTileSize<kD, kDv>::kBlockM, kWideBlockN, 2,
                                     Sm90WsTileSize<kD, kDv>::kPingpong, Sm90WsTileSize<kD, kDv>::kIntraWgOverlap>;
        ms_wide = time_ms([&] { launch_attn_fwd_sm90_ws<Wide, false>(pr.p, nullptr); }, reps);
        pr.poison();
        check_status(launch_attn_fwd_sm90_ws<Wide, false>(pr.p, nullptr), "sm90_ws wide tile");
        CHECK_CUDA(cudaDeviceSynchronize());
        wide_diff = max_abs_diff(fetch(pr).out, cur.out);
      }
      // With a variant under test (CHECK_OWN_VARIANT), the library's kernel beside it.
      const float ms_library =
          kTestsOwnTile ? time_ms([&] { run_attn_fwd_sm90_ws<Element, kD, kDv>(pr.p, nullptr); }, reps) : 0.f;
      CHECK_CUDA(cudaGetLastError());
      const double flops = 2.0 * batch * heads * double(s) * s * (kD + kDv) * (causal ? 0.5 : 1.0);
      std::printf("%-5s D%d/%d %-6s B%-2d S%-5d H%-2d current %7.3f ms %6.1f TFLOP/s | sm90_ws %7.3f ms %6.1f TFLOP/s"
                  " | x%.3f | max |new - current| %.2e",
                  dtype, kD, kDv, causal ? "causal" : "full", batch, s, heads, ms_cur, flops / ms_cur * 1e-9, ms_new,
                  flops / ms_new * 1e-9, ms_cur / ms_new, diff);
      if (ms_wide > 0.f) {
        std::printf(" | N%d %6.1f TFLOP/s, diff %.2e", kWideBlockN, flops / ms_wide * 1e-9, wide_diff);
      }
      if (ms_library > 0.f) std::printf(" | library tile %6.1f TFLOP/s", flops / ms_library * 1e-9);
      std::printf("\n");
    }
  }
}

// One forward of the standard grid's (S, mask) cell with the tested kernel and nothing else, for a profiler
// (`ncu --kernel-name regex:attn_fwd_sm90_ws --launch-count 1 ... --profile 16384 full`).
template <class Element>
void profile_once(int s, bool causal) {
  const Case c = standard_grid_case<Case>("profile", s, causal, kD, kDv);
  Problem<Element> pr(c);
  check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws forward");
  CHECK_CUDA(cudaDeviceSynchronize());
  std::printf("profiled: bf16 D%d %s B%d S%d H%d\n", kD, causal ? "causal" : "full", c.batch, s, c.hq);
}

}  // namespace
}  // namespace jax_flash

// The longest-first order's index map (longest_first_scheduler.h interleaved_tile) on the host: a bijection of
// the grid onto (rank, pair), each group's pairs contiguous, ranks within a group nondecreasing.
bool check_longest_first_order() {
  bool ok = true;
  // (blocks, pairs, pairs per group): partial last groups, one group larger than the pairs, groups of one.
  const int shapes[][3] = {{32, 18, 5}, {47, 18, 10}, {1, 7, 3},  {5, 1, 4},
                           {12, 64, 64}, {9, 10, 1}, {16, 100, 7}, {3, 5, 100}};
  for (const auto& s : shapes) {
    const int blocks = s[0], pairs = s[1], group = s[2];
    std::vector<int> seen(size_t(blocks) * pairs, 0);
    int last_group = 0, last_rank = 0;
    for (int64_t l = 0; l < int64_t(blocks) * pairs; ++l) {
      const jax_flash::InterleavedTile t = jax_flash::interleaved_tile(l, blocks, pairs, group);
      if (t.rank < 0 || t.rank >= blocks || t.pair < 0 || t.pair >= pairs) {
        ok = false;
        break;
      }
      ++seen[size_t(t.rank) * pairs + size_t(t.pair)];
      const int g = int(t.pair / group);
      if (g < last_group || (g == last_group && t.rank < last_rank)) ok = false;
      last_group = g;
      last_rank = t.rank;
    }
    for (int n : seen) ok = ok && n == 1;
  }
  std::printf("longest-first order: %s\n", ok ? "a bijection, longest first within each group PASS" : "FAIL");
  return ok;
}

int main(int argc, char** argv) {
  using namespace jax_flash;
  const ToolArgs args = parse_tool_args(argc, argv);
  if (args.profile_seqlen > 0) {
    profile_once<cutlass::bfloat16_t>(args.profile_seqlen, args.profile_causal);
    return 0;
  }
  const bool small = args.small, timing = args.timing, fp16 = args.fp16;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  bool ok = check_longest_first_order();
  ok = check_correctness<cutlass::bfloat16_t>(small, "bf16") && ok;
  if (!small && fp16) ok = check_correctness<cutlass::half_t>(small, "fp16") && ok;
  if (timing && !small) {
    benchmark<cutlass::bfloat16_t>("bf16");
    if (fp16) benchmark<cutlass::half_t>("fp16");
  }
  std::printf("%s\n", ok ? "ALL PASS" : "SOME FAILED");
  return ok ? 0 : 1;
}
