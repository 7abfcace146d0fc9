"""Trace-time checks shared by the context-parallel entry points; errors name the argument and shapes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_flash.ops._config import check_flags, check_scale, check_softcap, check_window, shape_of
from jax_flash.parallel.layouts import check_layout


@dataclasses.dataclass(frozen=True)
class Attributes:
    """The normalized attention attributes: window sides None when unbounded (causal: right = 0)."""

    scale: float
    softcap: float | None
    left: int | None
    right: int | None

    @property
    def window(self):
        """As the ops take it: (left, right) with -1 for an unbounded side."""
        return (-1 if self.left is None else self.left, -1 if self.right is None else self.right)


def axis_size(axis_name) -> int:
    try:
        return jax.lax.axis_size(axis_name)
    except NameError as e:
        raise ValueError(f"axis_name {axis_name!r} is not bound here: call this inside shard_map (or use "
                         "jax_flash.parallel.context_parallel_attention)") from e


def check_arrays(q, k, v, *, packed: bool):
    """Self-attention shards: q (B, n, Hq, D), k (B, n, Hk, D), v (B, n, Hk, Dv) dense, or (T, H, D)
    packed; one float dtype; Hq a multiple of Hk."""
    rank = 3 if packed else 4
    names = "(tokens, heads, head_dim)" if packed else "(batch, seq, heads, head_dim)"
    shapes = f"q {shape_of(q)}, k {shape_of(k)}, v {shape_of(v)}"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(shape_of(x)) != rank:
            raise ValueError(f"{name} must have rank {rank} {names}, got shape {shape_of(x)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must be a float array, got {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError("q, k and v must be shards of one sequence (self-attention): same leading axes, "
                         f"k and v the same heads: {shapes}")
    (hq, d), (hk, dk) = q.shape[-2:], k.shape[-2:]
    if d != dk:
        raise ValueError(f"q and k must have the same head dim: {shapes}")
    if hk == 0 or hq % hk:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hk}): {shapes}")


def window_sides(window, causal):
    """(left, right) of the window, None for an unbounded side; causal bounds the right side at 0."""
    left, right = check_window(window, causal)
    return None if left == -1 else left, None if right == -1 else right


def check_attributes(q, *, causal, layout, window, softcap, scale, **flags) -> Attributes:
    check_layout(layout)
    check_flags(**flags)
    left, right = window_sides(window, causal)
    return Attributes(scale=check_scale(scale, q.shape[-1]), softcap=check_softcap(softcap), left=left,
                      right=right)


def check_packed_metadata(cu_seqlens, seqused, max_seqlen):
    """cu_seqlens (N + 1,) int32 and seqused (N,) int32 or None; max_seqlen None or a static int."""
    cu_shape = shape_of(cu_seqlens)
    if len(cu_shape) != 1 or cu_shape[0] < 2:
        raise ValueError(f"cu_seqlens must have shape (N + 1,) with N >= 1, got {cu_shape}")
    if jnp.dtype(cu_seqlens.dtype) != jnp.int32:
        raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if seqused is not None:
        if shape_of(seqused) != (cu_shape[0] - 1,):
            raise ValueError(f"seqused must have shape ({cu_shape[0] - 1},), got {shape_of(seqused)}")
        if jnp.dtype(seqused.dtype) != jnp.int32:
            raise TypeError(f"seqused must be int32, got {seqused.dtype}")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                   or max_seqlen < 0):
        raise TypeError(f"max_seqlen must be None or a static Python int >= 0, got {max_seqlen!r}")
