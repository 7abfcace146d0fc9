"""Attention sinks on the kernels: the forward with the sink column, its backward, and the sink column added to
a sink-free (out, lse).

A sink s_h is one more score of query head h with no value, so from a sink-free (out, lse) over the keys:
    lse' = logaddexp(lse, s_h),   out' = exp(lse - lse') out       (lse = -inf: lse' = s_h, out' = 0).
The dense and packed forward kernels fuse this into their final normalisation (the sinks reach them as an
lse-shaped operand, sink_rows); segment-id attention, paged attention and the ring's merged blocks add it here
(add_sinks), one elementwise pass over out. The backward kernel, given (out', lse'), computes P = exp(s - lse')
(normalised with the sink) and delta = rowsum(dout * out') - dlse, which is exactly the gradient of q, k, v with
the sink; the sink's own gradient is d s_h = -sum over rows of exp(s_h - lse') * delta (sinks_grad, one
reduction).

lse is (..., Hq, S) and out (..., S, Hq, Dv): (B, Hq, Sq) / (B, Sq, Hq, Dv) dense, (Hq, T) / (T, Hq, Dv) packed.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jax_flash.ops._config import shape_of


def check_sinks(sinks, num_heads_q: int) -> None:
    """sinks: None or a (Hq,) float array."""
    if sinks is None:
        return
    if shape_of(sinks) != (num_heads_q,):
        raise ValueError(f"sinks must have shape (Hq,) = ({num_heads_q},), one logit per query head, got shape "
                         f"{shape_of(sinks)}")
    if not jnp.issubdtype(sinks.dtype, jnp.floating):
        raise TypeError(f"sinks must be a float array of shape ({num_heads_q},), got {sinks.dtype}")


def _heads_rows(lse_like):
    """(..., Hq, S) -> (..., S, Hq, 1), to scale out (..., S, Hq, Dv)."""
    return jnp.swapaxes(lse_like, -1, -2)[..., None]


def sink_rows(sinks, lse_shape):
    """The kernels' sinks operand: float32 shaped like lse (..., Hq, S), head h's sink logit on each of its rows.

    lse-shaped rather than (Hq,) so that it is split, folded and concatenated exactly like lse by the kernels'
    sharding and vmap rules (ops/_partition.py), batched sinks under vmap included; the kernels read one value
    per (sequence, head)."""
    return jnp.broadcast_to(sinks.astype(jnp.float32)[:, None], lse_shape)


def add_sinks(out, lse, sinks):
    """(out', lse') with the sink column, from the sink-free (out, lse); out' in out's dtype, lse' in lse's
    (at least float32)."""
    dtype = jnp.promote_types(lse.dtype, jnp.float32)
    lse = lse.astype(dtype)
    sink = sinks.astype(dtype)[:, None]
    new_lse = jnp.logaddexp(lse, sink)
    seen = jnp.isfinite(lse)
    keep = jnp.where(seen, jnp.exp(jnp.where(seen, lse, 0) - new_lse), 0)  # no exp(-inf - -inf)
    out = (out.astype(jnp.promote_types(out.dtype, dtype)) * _heads_rows(keep)).astype(out.dtype)
    return out, new_lse


def sinks_grad(out, lse, dout, dlse, sinks):
    """d sinks (Hq,) in sinks' dtype from the sink-normalised out' and lse' and their cotangents:
    -sum over batch and rows of exp(sink - lse') * (rowsum(dout * out') - dlse)."""
    dtype = jnp.promote_types(lse.dtype, jnp.float32)
    lse = lse.astype(dtype)
    delta = jnp.swapaxes(jnp.sum(dout.astype(dtype) * out.astype(dtype), axis=-1), -1, -2) - dlse.astype(dtype)
    p_sink = jnp.where(jnp.isfinite(lse), jnp.exp(sinks.astype(dtype)[:, None] - lse), 0)
    rows = tuple(a for a in range(lse.ndim) if a != lse.ndim - 2)
    return -jnp.sum(p_sink * delta, axis=rows).astype(sinks.dtype)


class Kernels(NamedTuple):
    """An attention op on the kernels. fused: fwd(sinks, *operands) -> (out', lse'), the sinks (Hq,) in the
    kernels' softmax; else fwd(*operands) -> the sink-free (out, lse), and add_sinks adds them. bwd(operands,
    out', lse', dout, dlse) -> the operands' cotangents (a tuple like operands, None for integer operands)."""
    fwd: Callable
    bwd: Callable
    fused: bool = False


def _forward(kernels: Kernels, sinks, operands):
    if kernels.fused:
        return kernels.fwd(sinks, *operands)
    return add_sinks(*kernels.fwd(*operands), sinks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def attention_with_sinks(kernels: Kernels, sinks, operands):
    """(out', lse') of the kernels with the sinks, differentiable in sinks and the operands."""
    return _forward(kernels, sinks, operands)


def _attention_with_sinks_fwd(kernels, sinks, operands):
    out, lse = _forward(kernels, sinks, operands)
    return (out, lse), (sinks, operands, out, lse)


def _attention_with_sinks_bwd(kernels, residuals, cotangents):
    sinks, operands, out, lse = residuals
    dout, dlse = cotangents
    grads = kernels.bwd(operands, out, lse, dout, dlse)
    return sinks_grad(out, lse, dout, dlse, sinks), grads


attention_with_sinks.defvjp(_attention_with_sinks_fwd, _attention_with_sinks_bwd)
