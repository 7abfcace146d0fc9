"""Runs a few dense cases with the kernels and saves every output to an .npz: the child process of
tests that need other XLA flags (command buffers) or a tool around Python (compute-sanitizer).

usage: python tests/gpu_subprocess_cases.py OUT.npz [--small] [--default-backward]
  --default-backward: deterministic=False (dQ summed in any order), else the bitwise-repeatable backward
"""

import sys

import jax
import numpy as np

from gpu_harness import forward_and_grads, make_inputs

CASES = [
    dict(dtype="bfloat16", head_dims=(128, 128), causal=True, heads=(28, 4), seqlens=(255, 1000),
         softcap=None, window=None),
    dict(dtype="float16", head_dims=(80, 80), causal=False, heads=(4, 1), seqlens=(17, 255),
         softcap=30.0, window=(64, 0)),
    dict(dtype="bfloat16", head_dims=(192, 128), causal=False, heads=(4, 2), seqlens=(1000, 17),
         softcap=None, window=(128, 128)),
]
SMALL_CASES = [dict(c, seqlens=(min(c["seqlens"][0], 130), min(c["seqlens"][1], 200))) for c in CASES]


def built(cases):
    """The cases this build has kernels for (a subset build, JAX_FLASH_HEAD_DIMS / JAX_FLASH_DTYPES, runs
    the others nowhere)."""
    from jax_flash import _ffi

    return [c for c in cases if _ffi.supported(c["dtype"], *c["head_dims"])]


def run(cases, deterministic=True):
    results = {}
    for i, case in enumerate(cases):
        q, k, v, dout = make_inputs(case)
        outs = forward_and_grads(q, k, v, dout, impl="ours", causal=case["causal"], window=case["window"],
                                 softcap=case["softcap"], deterministic=deterministic)
        for name, x in zip(("out", "lse", "dq", "dk", "dv"), jax.device_get(outs)):
            results[f"{i}_{name}"] = np.asarray(x)
        # A line per case, so a log (e.g. compute-sanitizer's) shows the kernels really ran.
        print(f"case {i}: out sum {np.nansum(results[f'{i}_out'].astype(np.float32)):.4f}, "
              f"dq sum {np.nansum(results[f'{i}_dq'].astype(np.float32)):.4f}", flush=True)
    return results


if __name__ == "__main__":
    np.savez(sys.argv[1], **run(built(SMALL_CASES if "--small" in sys.argv else CASES),
                                deterministic="--default-backward" not in sys.argv))
