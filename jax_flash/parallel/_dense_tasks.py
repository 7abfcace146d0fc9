"""Running a schedule Task on dense local blocks (B, n, H, D): slices in, results merged in place.

A part's rows start at a static offset, or, for a pair of parts, at one picked by no_wrap on the device;
either way the call's inputs are one slice and its results touch only those rows of the accumulators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_flash.ops import _with_lse
from jax_flash.ops._config import AttentionConfig
from jax_flash.parallel._merge import merge
from jax_flash.parallel._schedule import dense_call, part_rows


class DenseTasks:
    """Tasks on n local query rows and n visiting key rows per sequence of the batch."""

    def __init__(self, n: int, scale: float, softcap, implementation: str, deterministic: bool):
        self.n, self.scale, self.softcap = n, scale, softcap
        self.implementation, self.deterministic = implementation, deterministic

    def forward(self, task, step, no_wrap, q, k, v, acc):
        """Merges the task's (out, lse) into acc = (out (B, n, Hq, Dv) float32, lse (B, Hq, n))."""
        del step  # every step has the same geometry
        q_len, k_len, config = self._call(task)
        q0, k0 = self._start(task.q_part, no_wrap), self._start(task.k_part, no_wrap)
        kt, vt = (_rows(x, k0, k_len) for x in (k, v))
        out, lse = _with_lse.attention_fwd_lse(_rows(q, q0, q_len), kt, vt, config, self.implementation)
        out, lse = guarded(task.guard, no_wrap, (out, lse), (0.0, -jnp.inf))
        acc_out, acc_lse = acc
        out, lse = merge((_rows(acc_out, q0, q_len), _rows(acc_lse, q0, q_len, axis=2)), (out, lse))
        return _set_rows(acc_out, out, q0), _set_rows(acc_lse, lse, q0, axis=2)

    def backward(self, task, step, no_wrap, q, k, v, out, lse, dout, dlse, grads):
        """Adds the task's gradients to grads = (dq, dk, dv) float32, shaped like q, k, v."""
        del step
        q_len, k_len, config = self._call(task)
        q0, k0 = self._start(task.q_part, no_wrap), self._start(task.k_part, no_wrap)
        qt, out_t, dout_t = (_rows(x, q0, q_len) for x in (q, out, dout))
        lse_t, dlse_t = (_rows(x, q0, q_len, axis=2) for x in (lse, dlse))
        kt, vt = (_rows(x, k0, k_len) for x in (k, v))
        block = _with_lse.attention_bwd_from_lse(qt, kt, vt, out_t, lse_t, dout_t, dlse_t, config,
                                                 self.implementation, self.deterministic)
        block = guarded(task.guard, no_wrap, block, (0.0, 0.0, 0.0))
        dq, dk, dv = grads
        return tuple(_set_rows(acc, _rows(acc, start, x.shape[1]) + x.astype(jnp.float32), start)
                     for acc, x, start in ((dq, block[0], q0), (dk, block[1], k0), (dv, block[2], k0)))

    def _call(self, task):
        start, stop = part_rows(task.q_part if isinstance(task.q_part, str) else task.q_part[0], self.n)
        q_len, k_len, (left, right) = dense_call(task.band, stop - start)
        return q_len, k_len, AttentionConfig(self.scale, self.softcap, left, right)

    def _start(self, part, no_wrap):
        """First row of the part: a Python int, or a traced one for a pair of parts."""
        if isinstance(part, str):
            return part_rows(part, self.n)[0]
        return jnp.where(no_wrap, part_rows(part[0], self.n)[0], part_rows(part[1], self.n)[0])


def _rows(x, start, length, axis=1):
    return jax.lax.dynamic_slice_in_dim(x, start, length, axis=axis)


def _set_rows(x, rows, start, axis=1):
    return jax.lax.dynamic_update_slice_in_dim(x, rows.astype(x.dtype), start, axis=axis)


def guarded(guard, no_wrap, values, fills):
    """Drops a guarded task's result (to `fills`) on the ranks where its guard does not hold."""
    if guard is None:
        return values
    keep = no_wrap if guard else jnp.logical_not(no_wrap)
    return tuple(jnp.where(keep, x, fill) for x, fill in zip(values, fills))
