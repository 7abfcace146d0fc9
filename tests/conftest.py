"""Test setup: 8 host devices for sharding tests on the CPU, and the `gpu` marker's skip."""

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
