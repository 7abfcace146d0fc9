// Does compute-sanitizer's racecheck see mbarrier synchronization between plain shared-memory stores and loads?
// The warp-specialized backward's first row writer (a producer warp, since replaced by the consumers' own
// cp.async fetch, kernels/bwd/sm90_ws/query_rows.h) stored the lse / delta rows of a stage after waiting on the
// stage's empty barrier; the consumers read them, met at a named barrier, and one thread per warpgroup arrived
// on the empty barrier. This probe runs that protocol alone, so a racecheck report on it says what the tool can
// see, not what a kernel does. Answer (H100, 2026-12-07, BENCHMARKS.md session 17): every mode is reported (2
// hazards each, "each" included): racecheck does not model such a hand-off, so the kernels avoid it.
//
// Modes (argv[1]):
//   named    the kernel's protocol: readers load, bar.sync among the readers, one arrival per warpgroup
//   each     every reader arrives on the empty barrier itself (arrival count 256)
//   none     no barrier at all between the writer's stores and the readers' loads: a real race (racecheck
//            must report it)
// Build: nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -O3 -Icuda -I<cutlass>/include
//        cuda/tools/racecheck_mbarrier_probe.cu -o probe
// Run:   compute-sanitizer --tool racecheck --error-exitcode 9 ./probe named
#include <cuda_runtime.h>
#include <cutlass/arch/barrier.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace {

constexpr int kReaders = 256;  // two "consumer warpgroups"
constexpr int kRows = 64;
constexpr int kStages = 2;
constexpr int kSteps = 8;
enum Mode { kNamed = 0, kEach = 1, kNone = 2 };

__global__ void probe_kernel(int mode, float* out) {
  __shared__ float rows[kStages][kRows];
  __shared__ uint64_t full[kStages], empty[kStages];
  using Barrier = cutlass::arch::ClusterBarrier;
  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&full[s], 1);
      Barrier::init(&empty[s], mode == kEach ? kReaders : kReaders / 128);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (tid >= kReaders) {  // the writer warp
    const int lane = tid - kReaders;
    for (int step = 0; step < kSteps; ++step) {
      const int stage = step % kStages;
      if (step >= kStages && mode != kNone) Barrier::wait(&empty[stage], ((step / kStages) - 1) & 1);
      for (int i = lane; i < kRows; i += 32) rows[stage][i] = float(step * kRows + i);
      __syncwarp();
      if (lane == 0 && mode != kNone) Barrier::arrive(&full[stage]);
    }
    return;
  }
  float sum = 0.f;
  for (int step = 0; step < kSteps; ++step) {
    const int stage = step % kStages;
    if (mode != kNone) Barrier::wait(&full[stage], (step / kStages) & 1);
    sum += rows[stage][tid % kRows];
    if (mode == kEach) {
      Barrier::arrive(&empty[stage]);
    } else if (mode == kNamed) {
      cutlass::arch::NamedBarrier::sync(kReaders, 1);
      if (tid % 128 == 0) Barrier::arrive(&empty[stage]);
    }
  }
  out[tid] = sum;
}

}  // namespace

int main(int argc, char** argv) {
  const char* name = argc > 1 ? argv[1] : "named";
  const int mode = std::strcmp(name, "each") == 0 ? kEach : std::strcmp(name, "none") == 0 ? kNone : kNamed;
  float* out = nullptr;
  cudaMalloc(&out, kReaders * sizeof(float));
  probe_kernel<<<1, kReaders + 32>>>(mode, out);
  const cudaError_t err = cudaDeviceSynchronize();
  float host[kReaders];
  cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost);
  // Every reader sums its row over the steps: sum_s (s * kRows + r) for r = tid % kRows.
  bool ok = err == cudaSuccess;
  for (int t = 0; t < kReaders && mode != kNone; ++t) {
    const float want = float(kRows * (kSteps * (kSteps - 1) / 2) + kSteps * (t % kRows));
    ok = ok && host[t] == want;
  }
  std::printf("mode %s: %s (%s)\n", name, ok ? "values as expected" : "WRONG VALUES", cudaGetErrorString(err));
  cudaFree(out);
  return ok ? 0 : 1;
}
