// GPU check of the warp-specialized Hopper dK/dV kernel (kernels/bwd/sm90_ws/): dQ, dK and dV against an fp32
// reference on the GPU, with the current backward's error on the same inputs as the yardstick (DESIGN.md's
// oracle rule with the current kernel in the place of the naive one), then speed beside the current backward.
// Both run as run_attn_bwd runs them: delta (bwd_delta_kernel), the dq accumulator zeroed, dK/dV with the dQ
// sums (the current kernel's atomics into rows, the new one's bulk reduce-adds into blocks), the accumulator
// converted. The current dK/dV kernel is the sm90 wgmma one where its tile exists (D128), else the sm80 one
// (above D128 without dQ sums: then the dq kernel, as the library runs it there).
// Every case also runs the library's deterministic backward (the new kernel's dQ sums in key-block order,
// behind a semaphore per block; where the tile has no shared dQ block, D256, added by the consumers' atomics in
// their turn) twice: dK and dV must equal the dQ mode's bit for bit, dq meets the same
// tolerance and is bitwise repeatable. A few cases and the timing add the other deterministic way (the new
// kernel without dQ, then the dq kernel).
//
// Build from the repository root (CHECK_HEAD_DIM picks the tile: 64, 96, 128 (the swapped layout), 192 or 256
// (the split layout); CHECK_HEAD_DIM_V, default CHECK_HEAD_DIM, may be 128 with CHECK_HEAD_DIM=192):
//   nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 --expt-relaxed-constexpr --use_fast_math \
//        -lineinfo -DJAX_FLASH_HAS_SM90A -DCHECK_HEAD_DIM=128 -Icuda -I<CUTLASS include> \
//        cuda/tools/bwd_sm90_ws_check.cu -o /tmp/bwd_sm90_ws_check
// Run: bwd_sm90_ws_check [--small] [--no-timing] [--bf16]
//   --small      a few small cases, bf16, the new kernel only, fixed tolerances (for compute-sanitizer:
//                --kernel-name kns=attn_bwd_dkdv_sm90_ws_kernel)
//   --no-timing  correctness only
//   --bf16       bf16 only (correctness and timing; fp16 too by default)
//   --profile S full|causal   one bf16 backward of that standard-grid cell, nothing else (for ncu)
// Exit status 0 when every case passes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "host/bwd_launch.cuh"
#include "host/bwd_sm90_ws_launch.cuh"
#include "host/fwd_sm90_ws_launch.cuh"
#include "kernels/bwd/preprocess.cuh"
#include "kernels/bwd/workspace_layout.h"
#include "tools/check_common.h"

#ifndef CHECK_HEAD_DIM
#define CHECK_HEAD_DIM 128
#endif

namespace jax_flash {
namespace {

using namespace check;  // tools/check_common.h

constexpr int kD = CHECK_HEAD_DIM;
#ifndef CHECK_HEAD_DIM_V
#define CHECK_HEAD_DIM_V CHECK_HEAD_DIM
#endif
constexpr int kDv = CHECK_HEAD_DIM_V;  // Dv != D: the split layout's only (tile_size_split.h)


// ---- The backward chains -----------------------------------------------------------------------------------------

using WsCfg = Sm90WsBwdDefaultConfig<cutlass::bfloat16_t, kD, kDv>;  // the tile (the same for fp16)

// The workspace for every chain: as attn_bwd_workspace_bytes sizes it for the atomic sums (the accumulator for
// rows and for the new kernel's blocks) and for the deterministic backward (blocks and their semaphores).
inline BwdWorkspaceLayout workspace_layout(const AttnBwdParams& p, bool deterministic) {
  return bwd_workspace_layout(p.batch, p.packed(), p.seqlen_q, p.heads_q, p.head_dim, deterministic,
                              Sm90WsDqAccumBlocks<WsCfg>::block_shape());
}
inline size_t workspace_bytes(const AttnBwdParams& p) {
  return std::max(workspace_layout(p, false).total_bytes, workspace_layout(p, true).total_bytes);
}

// The current dK/dV kernel with atomic dQ sums: sm90 (wgmma) where it has the tile, else sm80.
template <class Element>
KernelChoice current_choice() {
  KernelChoice choice{};
  choice.feature = KernelFeature::kBwd;
  choice.variant = Sm90BwdDefaultConfig<Element, kD, kDv>::kAvailable ? KernelVariant::kSm90 : KernelVariant::kSm80;
  choice.pinned = true;
  choice.dq = bwd_atomic_dq_sums(kD, /*deterministic=*/false) ? DqPath::kAtomicSums : DqPath::kDqKernel;
  return choice;
}

template <class Element>
Status current_dkdv(const AttnBwdParams& p, const float* delta, float* dq_accum, cudaStream_t stream) {
  return bwd_launch_detail::launch_chosen_dkdv<Element, kD, kDv>(p, current_choice<Element>(), delta, dq_accum,
                                                                  stream);
}

// The new dK/dV kernel alone, summing dQ into the accumulator's blocks.
template <class Element>
Status new_dkdv(const AttnBwdParams& p, const float* delta, float* dq_accum, cudaStream_t stream) {
  return launch_attn_bwd_dkdv_sm90_ws<Sm90WsBwdDefaultConfig<Element, kD, kDv>, DqPath::kAtomicSums>(
      p, delta, dq_accum, nullptr, stream);
}

static_assert(find_kernel_tile(KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, kD, kDv) != nullptr,
              "kernel_table.h lists the new kernel's tile");
// The deterministic backward of the new kernel: its ordered dQ sums (by the dq writer warp where the tile has
// the shared dQ block, else by the consumers' float4 atomics in their turn, D256).
constexpr const char* kDeterministicName =
    WsCfg::kDqSharedBlock ? "ordered dQ sums" : "ordered dQ sums (consumers' atomics)";

// The new kernel's choice, as the kernel table gives it for the pinned sm90_ws variant: atomic sums, or ordered
// ones when deterministic.
inline KernelChoice new_choice(bool deterministic) {
  KernelChoice choice{};
  choice.feature = deterministic ? KernelFeature::kBwdDeterministic : KernelFeature::kBwd;
  choice.variant = KernelVariant::kSm90Ws;
  choice.pinned = true;
  choice.tile = *find_kernel_tile(KernelKind::kBwdDkDv, KernelVariant::kSm90Ws, kD, kDv);
  choice.dq = deterministic ? DqPath::kOrderedSums : DqPath::kAtomicSums;
  return choice;
}

// The whole backward as run_attn_bwd runs it (delta, dK/dV, dq) with each kernel: the current one, the new one
// with atomic sums, and the library's deterministic backward (the new one with ordered sums).
template <class Element>
Status launch_current(const AttnBwdParams& p, cudaStream_t stream) {
  return run_attn_bwd<Element, kD, kDv>(p, current_choice<Element>(), stream);
}
template <class Element>
Status launch_new(const AttnBwdParams& p, cudaStream_t stream) {
  return run_attn_bwd<Element, kD, kDv>(p, new_choice(false), stream);
}

// The other deterministic way, for comparison: the new kernel without dQ, then the dq kernel (no library path
// runs it: ordered sums replaced it).
template <class Element>
Status launch_new_with_dq_kernel(const AttnBwdParams& p, cudaStream_t stream) {
  float* delta = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + workspace_layout(p, true).delta_offset);
  const int64_t rows = int64_t(p.layout_batch()) * p.heads_q * p.seqlen_q;
  if (Status s = bwd_launch_detail::launch_delta<Element, kDv>(p, delta, nullptr, 0, stream); !s.ok()) return s;
  if (p.seqlen_k > 0) {
    const Status s = launch_attn_bwd_dkdv_sm90_ws<Sm90WsBwdDefaultConfig<Element, kD, kDv>, DqPath::kDqKernel>(
        p, delta, nullptr, nullptr, stream);
    if (!s.ok()) return s;
  }
  if (rows == 0) return Status{};
  return bwd_launch_detail::launch_dq<typename BwdDefaultConfig<Element, kD, kDv>::Dq>(p, delta, stream);
}

// The library's deterministic backward with the new kernel (kDeterministicName).
template <class Element>
Status launch_new_deterministic(const AttnBwdParams& p, cudaStream_t stream) {
  AttnBwdParams det = p;
  det.deterministic = true;
  return run_attn_bwd<Element, kD, kDv>(det, new_choice(true), stream);
}

// ---- Inputs and the fp32 reference -------------------------------------------------------------------------------


// Tensors are contiguous: q (rows_q, hq, d), k (rows_k, hk, d), v (rows_k, hk, dv), dout (rows_q, hq, dv).
// The reference keeps every per-row array in (rows, heads) order and writes fp32 results in the inputs' layouts.
struct RefProblem {
  const void *q, *k, *v, *dout;
  float *out, *lse, *delta;  // (rows_q, hq, dv), (rows_q, hq), (rows_q, hq)
  float *dq_out, *dk_out, *dv_out;  // (rows_q, hq, d), (rows_k, hk, d), (rows_k, hk, dv)
  bool packed;
  int sq, sk;  // dense lengths
  const int *cu_q, *cu_k, *used_q, *used_k;
  int hq, hk, d, dv;
  float scale, softcap;
  int window_left, window_right;

  __device__ void bounds(int b, int& q0, int& len_q, int& k0, int& len_k) const {
    if (packed) {
      q0 = cu_q[b];
      k0 = cu_k[b];
      len_q = used_q ? used_q[b] : cu_q[b + 1] - q0;
      len_k = used_k ? used_k[b] : cu_k[b + 1] - k0;
    } else {
      q0 = b * sq;
      k0 = b * sk;
      len_q = sq;
      len_k = sk;
    }
  }
  __device__ bool visible(int i, int j, int len_q, int len_k) const {
    const int pos = i + len_k - len_q;
    return (window_left < 0 || j >= pos - window_left) && (window_right < 0 || j <= pos + window_right);
  }
  // Scaled, capped score of query row q_row (fp32 copy) and key j; t: tanh(scale * q.k / softcap) when capped.
  template <class Element>
  __device__ float score(const float* q_row, int64_t k_row, int hkv, float& t) const {
    const Element* kj = static_cast<const Element*>(k) + (k_row * hk + hkv) * d;
    float dot = 0.f;
    for (int c = 0; c < d; ++c) dot += q_row[c] * float(kj[c]);
    const float x = dot * scale;
    if (softcap > 0.f) {
      t = tanhf(x / softcap);
      return softcap * t;
    }
    t = 0.f;
    return x;
  }
  template <class Element>
  __device__ float dot_v(const float* do_row, int64_t v_row, int hkv) const {
    const Element* vj = static_cast<const Element*>(v) + (v_row * hk + hkv) * dv;
    float acc = 0.f;
    for (int c = 0; c < dv; ++c) acc += do_row[c] * float(vj[c]);
    return acc;
  }
};


// Forward, one block per (query row, head, sequence): out and lse (exact softmax over the row's scores).
template <class Element>
__global__ void reference_fwd(RefProblem r) {
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  int q0, sq, k0, sk;
  r.bounds(b, q0, sq, k0, sk);
  if (i >= sq) return;
  extern __shared__ float sm[];
  float* q_row = sm;          // 256
  float* scratch = sm + 256;  // 32
  float* s = sm + 288;        // sk
  const int hkv = h / (r.hq / r.hk);
  const Element* q = static_cast<const Element*>(r.q) + (int64_t(q0 + i) * r.hq + h) * r.d;
  for (int c = threadIdx.x; c < r.d; c += blockDim.x) q_row[c] = float(q[c]);
  __syncthreads();
  float local_max = -INFINITY;
  for (int j = threadIdx.x; j < sk; j += blockDim.x) {
    float t;
    const float x = r.visible(i, j, sq, sk) ? r.score<Element>(q_row, k0 + j, hkv, t) : -INFINITY;
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
  const Element* v = static_cast<const Element*>(r.v);
  for (int c = threadIdx.x; c < r.dv; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < sk; ++j) acc += s[j] * float(v[(int64_t(k0 + j) * r.hk + hkv) * r.dv + c]);
    out[c] = acc / sum;
  }
  if (threadIdx.x == 0) *lse = m + logf(sum);
}

// dq and delta, one block per (query row, head, sequence):
//   delta = dO . O,  dS_j = P_j (dP_j - delta) ds/dx_j,  dq = scale * sum_j dS_j k_j.
template <class Element>
__global__ void reference_bwd_dq(RefProblem r) {
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  int q0, sq, k0, sk;
  r.bounds(b, q0, sq, k0, sk);
  if (i >= sq) return;
  extern __shared__ float sm[];
  float* q_row = sm;          // 256
  float* do_row = sm + 256;   // 256
  float* scratch = sm + 512;  // 32
  float* ds = sm + 544;       // sk
  const int hkv = h / (r.hq / r.hk);
  const int64_t row = q0 + i;
  const Element* q = static_cast<const Element*>(r.q) + (row * r.hq + h) * r.d;
  const Element* dout = static_cast<const Element*>(r.dout) + (row * r.hq + h) * r.dv;
  const float* out = r.out + (row * r.hq + h) * r.dv;
  float part = 0.f;
  for (int c = threadIdx.x; c < r.d; c += blockDim.x) q_row[c] = float(q[c]);
  for (int c = threadIdx.x; c < r.dv; c += blockDim.x) {
    do_row[c] = float(dout[c]);
    part += do_row[c] * out[c];
  }
  const float delta = block_reduce(part, false, scratch);  // synchronizes: q_row / do_row are complete
  if (threadIdx.x == 0) r.delta[row * r.hq + h] = delta;
  const float lse = r.lse[row * r.hq + h];
  float* dq = r.dq_out + (row * r.hq + h) * r.d;
  if (lse == -INFINITY) {
    for (int c = threadIdx.x; c < r.d; c += blockDim.x) dq[c] = 0.f;
    return;
  }
  for (int j = threadIdx.x; j < sk; j += blockDim.x) {
    float value = 0.f;
    if (r.visible(i, j, sq, sk)) {
      float t;
      const float p = expf(r.score<Element>(q_row, k0 + j, hkv, t) - lse);
      const float dp = r.dot_v<Element>(do_row, k0 + j, hkv);
      value = p * (dp - delta) * (r.softcap > 0.f ? 1.f - t * t : 1.f);
    }
    ds[j] = value;
  }
  __syncthreads();
  const Element* k = static_cast<const Element*>(r.k);
  for (int c = threadIdx.x; c < r.d; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < sk; ++j) acc += ds[j] * float(k[(int64_t(k0 + j) * r.hk + hkv) * r.d + c]);
    dq[c] = acc * r.scale;
  }
}

// dk and dv, one block of 128 threads per (key row, kv head, sequence), summed over the group's query heads:
// each chunk of 128 queries computes P and dS (one query per thread), then the columns add them up.
template <class Element>
__global__ void reference_bwd_dkdv(RefProblem r) {
  constexpr int kChunk = 128;
  const int j = blockIdx.x, hkv = blockIdx.y, b = blockIdx.z;
  int q0, sq, k0, sk;
  r.bounds(b, q0, sq, k0, sk);
  if (j >= sk) return;
  __shared__ float p_chunk[kChunk], ds_chunk[kChunk];
  const int tid = threadIdx.x;
  const int group = r.hq / r.hk;
  float dk_acc[2] = {0.f, 0.f}, dv_acc[2] = {0.f, 0.f};  // columns tid and tid + 128
  float q_row[256], do_row[256];
  const Element* q = static_cast<const Element*>(r.q);
  const Element* dout = static_cast<const Element*>(r.dout);
  for (int h = hkv * group; h < (hkv + 1) * group; ++h) {
    for (int base = 0; base < sq; base += kChunk) {
      const int i = base + tid;
      float p = 0.f, ds = 0.f;
      if (i < sq) {
        const int64_t row = q0 + i;
        const float lse = r.lse[row * r.hq + h];
        if (lse != -INFINITY && r.visible(i, j, sq, sk)) {
          for (int c = 0; c < r.d; ++c) q_row[c] = float(q[(row * r.hq + h) * r.d + c]);
          for (int c = 0; c < r.dv; ++c) do_row[c] = float(dout[(row * r.hq + h) * r.dv + c]);
          float t;
          p = expf(r.score<Element>(q_row, k0 + j, hkv, t) - lse);
          const float dp = r.dot_v<Element>(do_row, k0 + j, hkv);
          ds = p * (dp - r.delta[row * r.hq + h]) * (r.softcap > 0.f ? 1.f - t * t : 1.f);
        }
      }
      p_chunk[tid] = p;
      ds_chunk[tid] = ds;
      __syncthreads();
      const int n = min(kChunk, sq - base);
      for (int e = 0; e < 2; ++e) {
        const int c = tid + e * kChunk;
        for (int t = 0; t < n; ++t) {
          const int64_t row = q0 + base + t;
          if (c < r.d) dk_acc[e] += ds_chunk[t] * float(q[(row * r.hq + h) * r.d + c]);
          if (c < r.dv) dv_acc[e] += p_chunk[t] * float(dout[(row * r.hq + h) * r.dv + c]);
        }
      }
      __syncthreads();
    }
  }
  const int64_t krow = k0 + j;
  for (int e = 0; e < 2; ++e) {
    const int c = tid + e * kChunk;
    if (c < r.d) r.dk_out[(krow * r.hk + hkv) * r.d + c] = dk_acc[e] * r.scale;
    if (c < r.dv) r.dv_out[(krow * r.hk + hkv) * r.dv + c] = dv_acc[e];
  }
}

// The kernels' inputs from the reference forward: out in the element type, lse in the kernel layout
// (dense (B, Hq, Sq), packed (Hq, Tq)). One thread per (row, head).
template <class Element>
__global__ void reference_to_inputs(const float* out_ref, const float* lse_ref, Element* out, float* lse, int rows,
                                    int hq, int dv, int sq_dense, bool packed) {
  const int64_t n = int64_t(rows) * hq;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int row = int(e / hq), h = int(e % hq);
    for (int c = 0; c < dv; ++c) out[e * dv + c] = Element(out_ref[e * dv + c]);
    const int64_t dst = packed ? int64_t(h) * rows + row
                               : (int64_t(row / sq_dense) * hq + h) * sq_dense + row % sq_dense;
    lse[dst] = lse_ref[e];
  }
}

// ---- One problem: shapes, buffers, params ---------------------------------------------------------------------
struct Case {
  std::string name;
  int batch, sq, sk, hq, hk, d, dv;
  int window_left, window_right;  // causal: (-1, 0)
  float softcap;
  std::vector<int> lens_q, lens_k, used_q, used_k;  // packed when lens_q is not empty; used_* optional
  int pad_rows;                                    // packed: rows after the last sequence
  bool deterministic_too = false;                  // also run the deterministic backward (not with --small)
};



template <class Element>
std::vector<float> fetch(const Element* x, size_t n) {
  std::vector<Element> raw(n);
  if (n > 0) CHECK_CUDA(cudaMemcpy(raw.data(), x, sizeof(Element) * n, cudaMemcpyDeviceToHost));
  std::vector<float> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = to_float(raw[i]);
  return r;
}
std::vector<float> fetch(const float* x, size_t n) {
  std::vector<float> r(n);
  if (n > 0) CHECK_CUDA(cudaMemcpy(r.data(), x, sizeof(float) * n, cudaMemcpyDeviceToHost));
  return r;
}

// Gradients in the inputs' layouts: dq (rows_q, hq, d), dk (rows_k, hk, d), dv (rows_k, hk, dv).
struct Grads {
  std::vector<float> dq, dk, dv;
};

template <class Element>
struct Problem {
  Case c;
  bool packed;
  int rows_q, rows_k, n_seq;
  std::vector<int> cu_q, cu_k;
  Element *q, *k, *v, *dout, *out, *dq, *dk, *dv;
  float* lse;
  void* workspace;
  int *d_cu_q = nullptr, *d_cu_k = nullptr, *d_used_q = nullptr, *d_used_k = nullptr;
  AttnBwdParams p{};

  int used_len_q(int b) const { return c.used_q.empty() ? c.lens_q[b] : c.used_q[b]; }
  int used_len_k(int b) const { return c.used_k.empty() ? c.lens_k[b] : c.used_k[b]; }

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
    const int64_t nq = int64_t(rows_q) * c.hq, nk = int64_t(rows_k) * c.hk;
    q = device_alloc<Element>(nq * c.d);
    k = device_alloc<Element>(nk * c.d);
    v = device_alloc<Element>(nk * c.dv);
    dout = device_alloc<Element>(nq * c.dv);
    out = device_alloc<Element>(nq * c.dv);
    dq = device_alloc<Element>(nq * c.d);
    dk = device_alloc<Element>(nk * c.d);
    dv = device_alloc<Element>(nk * c.dv);
    lse = device_alloc<float>(nq);
    fill_uniform<<<1024, 256>>>(q, nq * c.d, 1u, 2.f);
    fill_uniform<<<1024, 256>>>(k, nk * c.d, 2u, 1.f);
    fill_uniform<<<1024, 256>>>(v, nk * c.dv, 3u, 1.f);
    fill_uniform<<<1024, 256>>>(dout, nq * c.dv, 4u, 1.f);
    CHECK_CUDA(cudaMemset(out, 0, sizeof(Element) * size_t(std::max<int64_t>(nq * c.dv, 1))));
    fill(lse, 0, nq, -INFINITY);
    if (packed) {
      // Rows outside every sequence's used part: NaN, which a kernel that multiplies them by a zero
      // probability (or a zero dS) would spread.
      for (int b = 0; b <= n_seq; ++b) {
        const int kb = b < n_seq ? cu_k[b] + used_len_k(b) : cu_k[b], ke = b < n_seq ? cu_k[b + 1] : rows_k;
        const int qb = b < n_seq ? cu_q[b] + used_len_q(b) : cu_q[b], qe = b < n_seq ? cu_q[b + 1] : rows_q;
        fill(k, int64_t(kb) * c.hk * c.d, int64_t(ke) * c.hk * c.d, NAN);
        fill(v, int64_t(kb) * c.hk * c.dv, int64_t(ke) * c.hk * c.dv, NAN);
        fill(q, int64_t(qb) * c.hq * c.d, int64_t(qe) * c.hq * c.d, NAN);
        fill(dout, int64_t(qb) * c.hq * c.dv, int64_t(qe) * c.hq * c.dv, NAN);
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
    p.dout = dout;
    p.dq = dq;
    p.dk = dk;
    p.dv = dv;
    p.dlse = nullptr;
    set_fwd_layout(p, c, packed, n_seq, rows_q, rows_k);
    p.dout_row_stride = p.out_row_stride, p.dout_head_stride = p.out_head_stride;
    p.dout_batch_stride = p.out_batch_stride;
    p.dq_row_stride = p.q_row_stride, p.dq_head_stride = p.q_head_stride, p.dq_batch_stride = p.q_batch_stride;
    p.dk_row_stride = p.k_row_stride, p.dk_head_stride = p.k_head_stride, p.dk_batch_stride = p.k_batch_stride;
    p.dv_row_stride = p.v_row_stride, p.dv_head_stride = p.v_head_stride, p.dv_batch_stride = p.v_batch_stride;
    p.cu_seqlens_q = d_cu_q;
    p.cu_seqlens_k = d_cu_k;
    p.seqused_q = d_used_q;
    p.seqused_k = d_used_k;
    p.deterministic = false;
    workspace = device_alloc<char>(int64_t(workspace_bytes(p)));
    p.workspace = workspace;
  }

  ~Problem() {
    for (void* ptr : {(void*)q, (void*)k, (void*)v, (void*)dout, (void*)out, (void*)dq, (void*)dk, (void*)dv,
                      (void*)lse, workspace, (void*)d_cu_q, (void*)d_cu_k, (void*)d_used_q, (void*)d_used_k}) {
      if (ptr) cudaFree(ptr);
    }
  }

  int64_t q_elems() const { return int64_t(rows_q) * c.hq * c.d; }
  int64_t k_elems() const { return int64_t(rows_k) * c.hk * c.d; }
  int64_t v_elems() const { return int64_t(rows_k) * c.hk * c.dv; }

  void poison() {  // NaN everywhere a kernel must write
    CHECK_CUDA(cudaMemset(dq, 0xff, sizeof(Element) * size_t(std::max<int64_t>(q_elems(), 1))));
    CHECK_CUDA(cudaMemset(dk, 0xff, sizeof(Element) * size_t(std::max<int64_t>(k_elems(), 1))));
    CHECK_CUDA(cudaMemset(dv, 0xff, sizeof(Element) * size_t(std::max<int64_t>(v_elems(), 1))));
  }

  Grads grads() const {
    return {fetch(dq, size_t(q_elems())), fetch(dk, size_t(k_elems())), fetch(dv, size_t(v_elems()))};
  }

  // Rows [start, start + count) of each sequence that hold gradients, along the query or the key axis.
  std::vector<std::pair<int, int>> valid_rows(bool keys) const {
    std::vector<std::pair<int, int>> rows;
    for (int b = 0; b < n_seq; ++b) {
      if (!packed) {
        rows.push_back(keys ? std::make_pair(b * c.sk, c.sk) : std::make_pair(b * c.sq, c.sq));
      } else {
        rows.push_back(keys ? std::make_pair(cu_k[b], used_len_k(b)) : std::make_pair(cu_q[b], used_len_q(b)));
      }
    }
    return rows;
  }
  int max_len(bool keys) const {
    int m = 0;
    for (auto [s, n] : valid_rows(keys)) m = std::max(m, n);
    return m;
  }

  // The reference forward's out and lse as the kernels' inputs, and the reference gradients.
  Grads reference() {
    const int64_t nq = int64_t(rows_q) * c.hq;
    float* out_ref = device_alloc<float>(nq * c.dv);
    float* lse_ref = device_alloc<float>(nq);
    float* delta_ref = device_alloc<float>(nq);
    float* dq_ref = device_alloc<float>(q_elems());
    float* dk_ref = device_alloc<float>(k_elems());
    float* dv_ref = device_alloc<float>(v_elems());
    CHECK_CUDA(cudaMemset(out_ref, 0, sizeof(float) * size_t(std::max<int64_t>(nq * c.dv, 1))));
    fill(lse_ref, 0, nq, -INFINITY);
    CHECK_CUDA(cudaMemset(dq_ref, 0, sizeof(float) * size_t(std::max<int64_t>(q_elems(), 1))));
    CHECK_CUDA(cudaMemset(dk_ref, 0, sizeof(float) * size_t(std::max<int64_t>(k_elems(), 1))));
    CHECK_CUDA(cudaMemset(dv_ref, 0, sizeof(float) * size_t(std::max<int64_t>(v_elems(), 1))));
    RefProblem r{q, k, v, dout, out_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, packed, c.sq, c.sk,
                 d_cu_q, d_cu_k, d_used_q, d_used_k, c.hq, c.hk, c.d, c.dv, p.scale, c.softcap,
                 c.window_left, c.window_right};
    const int max_q = std::max(max_len(false), 1), max_k = std::max(max_len(true), 1);
    const size_t smem_fwd = sizeof(float) * (288 + size_t(max_k));
    const size_t smem_dq = sizeof(float) * (544 + size_t(max_k));
    CHECK_CUDA(cudaFuncSetAttribute(reference_fwd<Element>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(smem_fwd)));
    CHECK_CUDA(cudaFuncSetAttribute(reference_bwd_dq<Element>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    int(smem_dq)));
    reference_fwd<Element><<<dim3(max_q, c.hq, n_seq), 128, smem_fwd>>>(r);
    CHECK_CUDA(cudaGetLastError());
    if (nq > 0) {
      reference_to_inputs<Element><<<256, 256>>>(out_ref, lse_ref, out, lse, rows_q, c.hq, c.dv,
                                                 std::max(c.sq, 1), packed);
      CHECK_CUDA(cudaGetLastError());
    }
    reference_bwd_dq<Element><<<dim3(max_q, c.hq, n_seq), 128, smem_dq>>>(r);
    CHECK_CUDA(cudaGetLastError());
    reference_bwd_dkdv<Element><<<dim3(max_k, c.hk, n_seq), 128>>>(r);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());
    Grads g{fetch(dq_ref, size_t(q_elems())), fetch(dk_ref, size_t(k_elems())), fetch(dv_ref, size_t(v_elems()))};
    for (float* ptr : {out_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref}) cudaFree(ptr);
    return g;
  }
};

struct Errors {
  double dq = 0, dk = 0, dv = 0;           // largest |ours - ref|
  double ref_dq = 0, ref_dk = 0, ref_dv = 0;  // largest |ref|
  long bad = 0;                            // NaN / inf
};

// Largest |got - ref| over the valid rows (width `cols` per (row, head)); NaN / inf counted in bad.
void compare_rows(const std::vector<float>& got, const std::vector<float>& ref,
                  const std::vector<std::pair<int, int>>& rows, int heads, int cols, double& err, double& ref_max,
                  long& bad) {
  for (auto [start, count] : rows) {
    const size_t begin = size_t(start) * heads * cols, end = size_t(start + count) * heads * cols;
    for (size_t i = begin; i < end; ++i) {
      if (!std::isfinite(got[i])) {
        ++bad;
        continue;
      }
      err = std::max(err, double(std::fabs(got[i] - ref[i])));
      ref_max = std::max(ref_max, double(std::fabs(ref[i])));
    }
  }
}

template <class Element>
Errors compare(const Problem<Element>& pr, const Grads& got, const Grads& ref) {
  Errors e;
  compare_rows(got.dq, ref.dq, pr.valid_rows(false), pr.c.hq, pr.c.d, e.dq, e.ref_dq, e.bad);
  compare_rows(got.dk, ref.dk, pr.valid_rows(true), pr.c.hk, pr.c.d, e.dk, e.ref_dk, e.bad);
  compare_rows(got.dv, ref.dv, pr.valid_rows(true), pr.c.hk, pr.c.dv, e.dv, e.ref_dv, e.bad);
  return e;
}

// dk and dv over the valid key rows bitwise equal (the new kernel sums them in a fixed order; dq has atomics).
template <class Element>
bool same_dk_dv(const Problem<Element>& pr, const Grads& a, const Grads& b) {
  for (auto [start, count] : pr.valid_rows(true)) {
    const size_t k0 = size_t(start) * pr.c.hk * pr.c.d, kn = size_t(count) * pr.c.hk * pr.c.d;
    const size_t v0 = size_t(start) * pr.c.hk * pr.c.dv, vn = size_t(count) * pr.c.hk * pr.c.dv;
    if (kn > 0 && std::memcmp(&a.dk[k0], &b.dk[k0], kn * sizeof(float)) != 0) return false;
    if (vn > 0 && std::memcmp(&a.dv[v0], &b.dv[v0], vn * sizeof(float)) != 0) return false;
  }
  return true;
}

// dq bitwise equal on every query row of every sequence.
template <class Element>
bool same_dq(const Problem<Element>& pr, const Grads& a, const Grads& b) {
  for (auto [start, count] : pr.valid_rows(false)) {
    const size_t q0 = size_t(start) * pr.c.hq * pr.c.d, qn = size_t(count) * pr.c.hq * pr.c.d;
    if (qn > 0 && std::memcmp(&a.dq[q0], &b.dq[q0], qn * sizeof(float)) != 0) return false;
  }
  return true;
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
        // GQA 7: each kv head's CTA sums seven query heads' dK / dV (the sanitizer grid's GQA ratio).
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
      {"full softcap30 gqa7 sq513 sk1500", 1, 513, 1500, 14, 2, d, dv, -1, -1, 30.f, {}, {}, {}, {}, 0, true},
      {"causal sq300 sk5", 1, 300, 5, 2, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"full sk0 (no keys)", 2, 100, 0, 2, 2, d, dv, -1, -1, 0.f, {}, {}, {}, {}, 0},
      {"full sq0 (no queries)", 2, 0, 100, 2, 2, d, dv, -1, -1, 0.f, {}, {}, {}, {}, 0},
      {"causal decode sq1 sk1000 gqa4", 3, 1, 1000, 8, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"full head dims D-8", 1, 600, 700, 3, 1, d - 8, dv - 8, -1, -1, 0.f, {}, {}, {}, {}, 0},
      {"packed full gqa2", 0, 0, 0, 4, 2, d, dv, -1, -1, 0.f, {0, 300, 1, 517, 129}, {5, 300, 700, 517, 0}, {}, {}, 16},
      {"packed causal seqused", 0, 0, 0, 4, 2, d, dv, c_wl, c_wr, 0.f, {0, 300, 1, 517, 129}, {5, 300, 700, 517, 0},
       {0, 250, 1, 517, 100}, {5, 300, 650, 400, 0}, 16, true},
      // More dK/dV CTAs (2 kv heads x 71 key blocks at D128) than an H100 has SMs: the ordered dQ sums' CTAs wait
      // only on CTAs launched before them (the ordered mode launches each sequence's last key block first).
      {"causal S9000 gqa2 (grid > SMs)", 1, 9000, 9000, 4, 2, d, dv, c_wl, c_wr, 0.f, {}, {}, {}, {}, 0},
      {"packed long causal gqa2 (grid > SMs)", 0, 0, 0, 4, 2, d, dv, c_wl, c_wr, 0.f, {40, 9000}, {40, 9000}, {}, {},
       8, true},
  };
}

template <class Element>
bool check_correctness(bool small, const char* dtype) {
  bool all_ok = true;
  for (const Case& c : correctness_cases(small)) {
    Problem<Element> pr(c);
    const Grads ref = pr.reference();
    Errors cur{};
    if (!small) {
      pr.poison();
      check_status(launch_current<Element>(pr.p, nullptr), "current backward");
      CHECK_CUDA(cudaDeviceSynchronize());
      cur = compare(pr, pr.grads(), ref);
    }
    pr.poison();
    check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws backward");
    CHECK_CUDA(cudaDeviceSynchronize());
    const Grads got = pr.grads();
    const Errors e = compare(pr, got, ref);
    pr.poison();
    check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws backward");
    CHECK_CUDA(cudaDeviceSynchronize());
    const bool same = same_dk_dv(pr, got, pr.grads());
    // DESIGN.md's rule with the current kernel as the yardstick (factor 3 with softcap); --small: 2% of the
    // largest reference gradient.
    const double factor = c.softcap > 0.f ? 3.0 : 2.0, atol = 1e-3;
    auto tol = [&](double cur_err, double ref_max) {
      return small ? 2e-2 * std::max(1.0, ref_max) : factor * cur_err + atol;
    };
    const bool ok = e.bad == 0 && e.dq <= tol(cur.dq, e.ref_dq) && e.dk <= tol(cur.dk, e.ref_dk) &&
                    e.dv <= tol(cur.dv, e.ref_dv) && same && (small || cur.bad == 0);
    all_ok = all_ok && ok;
    std::printf("%-5s D%d %-36s dq %.2e (cur %.2e) dk %.2e (cur %.2e) dv %.2e (cur %.2e) |ref| %.1e/%.1e/%.1e "
                "bad %ld/%ld %s %s\n",
                dtype, c.d, c.name.c_str(), e.dq, cur.dq, e.dk, cur.dk, e.dv, cur.dv, e.ref_dq, e.ref_dk, e.ref_dv,
                e.bad, cur.bad, same ? "dkdv-repeatable" : "DKDV NOT REPEATABLE", ok ? "PASS" : "FAIL");
    if (!small && c.deterministic_too) {
      pr.poison();
      check_status(launch_new_with_dq_kernel<Element>(pr.p, nullptr), "sm90_ws without dQ + dq kernel");
      CHECK_CUDA(cudaDeviceSynchronize());
      const Grads det = pr.grads();
      const Errors e_det = compare(pr, det, ref);
      const bool det_same = same_dk_dv(pr, got, det);
      const bool det_ok = e_det.bad == 0 && e_det.dq <= tol(cur.dq, e_det.ref_dq) && det_same;
      all_ok = all_ok && det_ok;
      std::printf("%-5s D%d %-36s no dQ + dq kernel: dq %.2e bad %ld, dk/dv %s %s\n", dtype, c.d, c.name.c_str(),
                  e_det.dq, e_det.bad, det_same ? "bitwise equal to the dQ mode's" : "DIFFER FROM THE DQ MODE'S",
                  det_ok ? "PASS" : "FAIL");
    }
    // The deterministic backward (ordered dQ sums) on every case, twice: dq within the tolerance and bitwise
    // equal across the runs, dK / dV the dQ mode's. A wait that never ends (the key blocks of a query block
    // counted differently from the dK/dV CTAs' own walks) hangs here: the line names the case first.
    std::printf("%-5s D%d %-36s deterministic (%s) ...\n", dtype, c.d, c.name.c_str(), kDeterministicName);
    std::fflush(stdout);
    Grads ordered[2];
    for (Grads& g : ordered) {
      pr.poison();
      check_status(launch_new_deterministic<Element>(pr.p, nullptr), "sm90_ws deterministic backward");
      CHECK_CUDA(cudaDeviceSynchronize());
      g = pr.grads();
    }
    const Errors e_ord = compare(pr, ordered[0], ref);
    const bool ord_repeatable = same_dq(pr, ordered[0], ordered[1]) && same_dk_dv(pr, ordered[0], ordered[1]);
    const bool ord_ok = e_ord.bad == 0 && e_ord.dq <= tol(cur.dq, e_ord.ref_dq) && ord_repeatable &&
                        same_dk_dv(pr, got, ordered[0]);
    all_ok = all_ok && ord_ok;
    std::printf("%-5s D%d %-36s deterministic (%s): dq %.2e bad %ld, %s %s\n", dtype, c.d,
                c.name.c_str(), kDeterministicName, e_ord.dq, e_ord.bad, ord_repeatable ? "bitwise repeatable" : "NOT REPEATABLE",
                ord_ok ? "PASS" : "FAIL");
  }
  return all_ok;
}


// ---- Speed ------------------------------------------------------------------------------------------------------

// The standard grid (DESIGN.md): 16k tokens per batch, hidden 2048. Inputs from the warp-specialized forward.
template <class Element>
void benchmark(const char* dtype) {
  for (bool causal : {false, true}) {
    for (int s : {1024, 4096, 16384}) {
      const Case c = standard_grid_case<Case>("bench", s, causal, kD, kDv);
      const int batch = c.batch, heads = c.hq;
      Problem<Element> pr(c);
      check_status(run_attn_fwd_sm90_ws<Element, kD, kDv>(pr.p, nullptr), "sm90_ws forward");
      check_status(launch_current<Element>(pr.p, nullptr), "current backward");
      CHECK_CUDA(cudaDeviceSynchronize());
      const Grads cur = pr.grads();
      check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws backward");
      CHECK_CUDA(cudaDeviceSynchronize());
      const Grads got = pr.grads();
      const double diff = std::max({max_abs_diff(got.dq, cur.dq), max_abs_diff(got.dk, cur.dk),
                                    max_abs_diff(got.dv, cur.dv)});
      const int reps = s >= 16384 ? 5 : 10;
      // The dK/dV kernels alone (the accumulator just keeps adding), then the whole chain.
      const BwdWorkspaceLayout ws = workspace_layout(pr.p, false);
      float* delta = reinterpret_cast<float*>(static_cast<char*>(pr.workspace) + ws.delta_offset);
      float* dq_accum = reinterpret_cast<float*>(static_cast<char*>(pr.workspace) + ws.dq_accum_offset);
      const float ms_cur_k = time_ms([&] { current_dkdv<Element>(pr.p, delta, dq_accum, nullptr); }, reps);
      const float ms_new_k = time_ms([&] { new_dkdv<Element>(pr.p, delta, dq_accum, nullptr); }, reps);
      const float ms_cur = time_ms([&] { launch_current<Element>(pr.p, nullptr); }, reps);
      const float ms_new = time_ms([&] { launch_new<Element>(pr.p, nullptr); }, reps);
      CHECK_CUDA(cudaGetLastError());
      // DESIGN.md: backward = 2.5 x forward, forward = 4 B Hq Sq Sk D (half for causal).
      const double flops = 2.5 * 4.0 * batch * heads * double(s) * s * kD * (causal ? 0.5 : 1.0);
      std::printf("%-5s D%d %-6s B%-2d S%-5d H%-2d | dK/dV kernel: current %7.3f ms, sm90_ws %7.3f ms x%.3f | "
                  "backward: current %7.3f ms %6.1f TFLOP/s, sm90_ws %7.3f ms %6.1f TFLOP/s x%.3f | "
                  "max |new - current| %.2e\n",
                  dtype, kD, causal ? "causal" : "full", batch, s, heads, ms_cur_k, ms_new_k, ms_cur_k / ms_new_k,
                  ms_cur, flops / ms_cur * 1e-9, ms_new, flops / ms_new * 1e-9, ms_cur / ms_new, diff);
      // The chain's memory-bound pieces around the dK/dV kernel, each alone: delta, zeroing the accumulator (a
      // memset; the library's delta kernel does both in one grid), the convert kernel.
      using Cfg = Sm90WsBwdDefaultConfig<Element, kD, kDv>;
      const size_t accum_bytes = size_t(Sm90WsDqAccumBlocks<Cfg>::copy_floats(pr.p)) * sizeof(float);
      const float ms_delta =
          time_ms([&] { bwd_launch_detail::launch_delta<Element, kDv>(pr.p, delta, nullptr, 0, nullptr); }, reps);
      const float ms_zero = time_ms([&] { cudaMemsetAsync(dq_accum, 0, accum_bytes, nullptr); }, reps);
      const float ms_both = time_ms(
          [&] { bwd_launch_detail::launch_delta<Element, kDv>(pr.p, delta, dq_accum, accum_bytes, nullptr); }, reps);
      const float ms_convert =
          time_ms([&] { launch_attn_bwd_dq_blocks_convert<Cfg>(pr.p, dq_accum, 1, nullptr); }, reps);
      CHECK_CUDA(cudaGetLastError());
      std::printf("%-5s D%d %-6s B%-2d S%-5d H%-2d | pieces: delta %6.3f ms, memset of the dq accumulator %6.3f ms, "
                  "delta + zeroing %6.3f ms, convert %6.3f ms\n",
                  dtype, kD, causal ? "causal" : "full", batch, s, heads, ms_delta, ms_zero, ms_both, ms_convert);
      // The deterministic backward (kDeterministicName) and the other way (the kernel without dQ, the dq kernel).
      const float ms_dqk = time_ms([&] { launch_new_with_dq_kernel<Element>(pr.p, nullptr); }, reps);
      const float ms_det = time_ms([&] { launch_new_deterministic<Element>(pr.p, nullptr); }, reps);
      CHECK_CUDA(cudaGetLastError());
      std::printf("%-5s D%d %-6s B%-2d S%-5d H%-2d | deterministic: %s %7.3f ms (%.2f of sm90_ws), "
                  "no dQ + dq kernel %7.3f ms (%.2f of sm90_ws)\n",
                  dtype, kD, causal ? "causal" : "full", batch, s, heads, kDeterministicName, ms_det, ms_new / ms_det,
                  ms_dqk,
                  ms_new / ms_dqk);
    }
  }
}

// One backward of the standard grid's (S, mask) cell and nothing else, for a profiler (`ncu --kernel-name
// regex:attn_bwd_dkdv --launch-count 1 ... --profile 16384 full`): the forward, then the library's chain once.
template <class Element>
void profile_once(int s, bool causal) {
  const Case c = standard_grid_case<Case>("profile", s, causal, kD, kDv);
  Problem<Element> pr(c);
  check_status(run_attn_fwd_sm90_ws<Element, kD, kDv>(pr.p, nullptr), "sm90_ws forward");
  check_status(launch_new<Element>(pr.p, nullptr), "sm90_ws backward");
  CHECK_CUDA(cudaDeviceSynchronize());
  std::printf("profiled: bf16 D%d %s B%d S%d H%d\n", kD, causal ? "causal" : "full", c.batch, s, c.hq);
}

}  // namespace
}  // namespace jax_flash

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
  bool ok = check_correctness<cutlass::bfloat16_t>(small, "bf16");
  if (!small && fp16) ok = check_correctness<cutlass::half_t>(small, "fp16") && ok;
  if (timing && !small) {
    benchmark<cutlass::bfloat16_t>("bf16");
    if (fp16) benchmark<cutlass::half_t>("fp16");
  }
  std::printf("%s\n", ok ? "ALL PASS" : "SOME FAILED");
  return ok ? 0 : 1;
}
