# The CUDA architectures of the GPUs visible at build time, so that a default install on a GPU machine
# compiles the kernels once (for that GPU) instead of once per architecture of the default list.

# jax_flash_visible_gpu_archs(<archs_var> <reason_var>): sets <archs_var> to the architectures of the GPUs
# nvidia-smi reports (compute capability 9.0 -> 90a, 8.x -> 80), or to "" when there is no visible GPU or
# one we have no dedicated build for; <reason_var> says which, for the status message.
function(jax_flash_visible_gpu_archs archs_var reason_var)
  set(${archs_var} "" PARENT_SCOPE)
  find_program(JAX_FLASH_NVIDIA_SMI nvidia-smi)
  if(NOT JAX_FLASH_NVIDIA_SMI)
    set(${reason_var} "no nvidia-smi, so no GPU visible at build time" PARENT_SCOPE)
    return()
  endif()
  execute_process(COMMAND "${JAX_FLASH_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
    OUTPUT_VARIABLE _caps RESULT_VARIABLE _status ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 30)
  string(REGEX REPLACE "[ \t\r]*\n[ \t\r]*" ";" _caps "${_caps}")
  if(NOT _status EQUAL 0 OR _caps STREQUAL "")
    set(${reason_var} "nvidia-smi lists no GPU" PARENT_SCOPE)
    return()
  endif()
  set(_archs "")
  foreach(_cap ${_caps})
    if(_cap STREQUAL "9.0")
      list(APPEND _archs "90a")  # the wgmma / TMA kernels need the arch-specific target
    elseif(_cap MATCHES "^8\\.[0-9]+$")
      list(APPEND _archs "80")  # sm_80 code runs on every 8.x GPU
    else()
      # Other GPUs (e.g. 10.x, 12.x) run the sm_80 PTX of the default build through the driver's JIT.
      set(${reason_var} "a visible GPU has compute capability ${_cap}, which has no build of its own"
        PARENT_SCOPE)
      return()
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _archs)
  set(${archs_var} "${_archs}" PARENT_SCOPE)
  list(JOIN _caps ", " _caps_text)
  set(${reason_var} "the GPUs visible at build time have compute capability ${_caps_text}" PARENT_SCOPE)
endfunction()
