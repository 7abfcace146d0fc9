"""Choosing between the CUDA kernels and the pure-JAX reference."""

from __future__ import annotations

import jax.numpy as jnp

from jax_flash import _ffi

IMPLEMENTATIONS = ("cuda", "xla")


def choose_implementation(implementation, dtype, head_dim: int, head_dim_v: int) -> str:
    """"cuda" or "xla". None picks cuda when it can run these shapes here; asking for "cuda" where it
    cannot is an error that says why, never a silent fallback."""
    if implementation not in (None, *IMPLEMENTATIONS):
        raise ValueError(f"implementation must be None, 'cuda' or 'xla', got {implementation!r}")
    if implementation == "xla":
        return "xla"
    reason = _ffi.unavailable_reason()
    if reason is None and not _ffi.supported(dtype, head_dim, head_dim_v):
        reason = (f"this build has no kernel for dtype {jnp.dtype(dtype).name}, head dims "
                  f"D={head_dim}, Dv={head_dim_v} (see JAX_FLASH_HEAD_DIMS / JAX_FLASH_DTYPES)")
    if reason is None:
        return "cuda"
    if implementation == "cuda":
        raise ValueError(f"implementation='cuda' cannot run: {reason}")
    return "xla"
