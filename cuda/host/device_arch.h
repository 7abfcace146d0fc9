// The compute capability of the current device, asked once per device (a host attribute query: no stream work,
// safe during graph capture). Only the kernel choice (kernel_choice.cc) asks.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace jax_flash {

// The major compute capability of the current device (9 on Hopper), or 0 when there is no usable device.
inline int current_device_major() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> major_of[kMaxDevices] = {};  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 0;
  int major = major_of[device].load(std::memory_order_relaxed);
  if (major == 0) {
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return 0;
    major_of[device].store(major, std::memory_order_relaxed);
  }
  return major;
}

}  // namespace jax_flash
