"""Merging partial attention results over disjoint key sets, exactly, in float32.

A partial result over keys K_a is (out_a, lse_a) with out_a = softmax-weighted values over K_a and
lse_a = log sum exp of the scores over K_a. Over K_a + K_b:
    lse = log(exp(lse_a) + exp(lse_b)),  out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.
A row that sees no key has lse = -inf and out = 0, which is the identity of the merge. Both sides -inf
stays -inf with out 0: the max used for stability is replaced by 0 there, so no inf - inf is formed.

lse is (..., H, S) and out (..., S, H, Dv): (B, Hq, Sq) / (B, Sq, Hq, Dv) dense, (Hq, T) / (T, Hq, Dv) packed.
"""

from __future__ import annotations

import jax.numpy as jnp


def empty_partial(out_shape, lse_shape):
    """The merge identity: out 0, lse -inf (float32)."""
    return jnp.zeros(out_shape, jnp.float32), jnp.full(lse_shape, -jnp.inf, jnp.float32)


def merge(acc, partial):
    """(out, lse) of the union of two disjoint key sets; out in float32."""
    (out_a, lse_a), (out_b, lse_b) = acc, partial
    lse_a, lse_b = lse_a.astype(jnp.float32), lse_b.astype(jnp.float32)
    m = jnp.maximum(lse_a, lse_b)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w_a, w_b = jnp.exp(lse_a - m), jnp.exp(lse_b - m)  # exp(-inf) = 0 for a side that saw no key
    total = w_a + w_b
    seen = total > 0
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)
    scale_a = jnp.where(seen, w_a / jnp.where(seen, total, 1.0), 0.0)
    scale_b = jnp.where(seen, w_b / jnp.where(seen, total, 1.0), 0.0)
    out = (_rows_last(scale_a) * out_a.astype(jnp.float32) + _rows_last(scale_b) * out_b.astype(jnp.float32))
    return out, lse


def _rows_last(lse_like):
    """(..., H, S) -> (..., S, H, 1), to scale out (..., S, H, Dv)."""
    return jnp.swapaxes(lse_like, -1, -2)[..., None]
