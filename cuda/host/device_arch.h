// Which kernel family the current device runs, asked once per device (a host attribute query: no stream
// work, safe during graph capture).
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace jax_flash {

// True on compute capability 9.0 (Hopper), where the sm_90a kernels of this build run.
inline bool current_device_is_sm90() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> major_of[kMaxDevices] = {};  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
  int major = major_of[device].load(std::memory_order_relaxed);
  if (major == 0) {
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    major_of[device].store(major, std::memory_order_relaxed);
  }
  return major == 9;
}

}  // namespace jax_flash
