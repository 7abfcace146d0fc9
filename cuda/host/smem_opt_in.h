// Dynamic shared memory opt-in, shared by the forward and backward launchers.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "host/attention.h"

namespace jax_flash {

// Every kernel opts in to its dynamic shared memory, even under 48 KB: the kernels also hold a little
// static shared memory (the tile coordinate of block_info.h), and the default limit counts both. A host-side
// attribute, no stream work: safe during graph capture.
template <class Kernel>
Status opt_in_dynamic_smem(Kernel kernel, int smem_bytes, const std::string& name) {
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err == cudaSuccess) return {};
  return {name + ": cannot get " + std::to_string(smem_bytes) + " bytes of dynamic shared memory: " +
          cudaGetErrorString(err)};
}

}  // namespace jax_flash
