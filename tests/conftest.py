"""Test setup: 8 host devices for sharding tests on the CPU, the `gpu` marker's skip, and under a pinned kernel
variant (JAX_FLASH_KERNEL_VARIANT) a skip for the GPU cases that variant has no kernel for."""

import os

# Before JAX initializes: sharding tests need several devices, which the CPU can fake.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()

# The GPU grid compiles a few programs per case; XLA's GEMM autotuning would dominate its run time.
if "--xla_gpu_autotune_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_gpu_autotune_level=0"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import jax_flash

    if jax_flash.cuda_available():
        return
    from jax_flash._ffi import unavailable_reason

    skip = pytest.mark.skip(reason=f"needs the CUDA kernels: {unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The message jax_flash._ffi raises when the variant pinned by the environment cannot serve a call.
PINNED_VARIANT_CANNOT_RUN = "(_variant or JAX_FLASH_KERNEL_VARIANT) cannot run here"
# The message of ops/_implementation.py for head dims or a dtype a subset build (JAX_FLASH_HEAD_DIMS /
# JAX_FLASH_DTYPES) did not compile.
NOT_IN_THIS_BUILD = "this build has no kernel for dtype"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """With JAX_FLASH_KERNEL_VARIANT pinned, the whole GPU suite runs under that kernel family: a GPU case whose
    call the family cannot serve (no such kernel for its head dims or direction, e.g. sm90_ws under a gradient
    at head dim 192) is skipped with the reason, instead of failing. So is a GPU case on head dims or a dtype a
    subset build left out. Every other error still fails."""
    try:
        return (yield)
    except ValueError as err:
        pinned = os.environ.get("JAX_FLASH_KERNEL_VARIANT", "") not in ("", "auto")
        if pinned and "gpu" in item.keywords and PINNED_VARIANT_CANNOT_RUN in str(err):
            pytest.skip(f"pinned variant cannot serve this case: {str(err).splitlines()[0]}")
        if "gpu" in item.keywords and NOT_IN_THIS_BUILD in str(err):
            pytest.skip(f"not in this build: {str(err).splitlines()[0]}")
        raise
