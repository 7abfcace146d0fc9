"""Running a schedule Task on packed local blocks (T_local, H, D): per-sequence offsets and used counts.

A part of every local sequence is described by its start rows (N,) and used rows (N,), computed on the
device from the global cu_seqlens / seqused for the rank that owns the rows (the visiting keys belong to
src = rank - step). A call passes cu = starts + [end] and seqused = used: rows beyond the used count,
the other half of a zigzag span included, are padding to the kernel.

The kernels align masks bottom-right with the *used* lengths, so a band's alignment is set through
them: for a band with a right edge hi (causal), the call passes seqused_k = seqused_q + hi. That drops no
visible key: every key left of that edge sits at a position before some used query, hence is used itself
(padding is the tail of each sequence and causal attention never looks ahead). Full bands pass the true
used counts, where alignment does not matter.
"""

from __future__ import annotations

import jax.numpy as jnp

from jax_flash.ops import _with_lse
from jax_flash.ops._config import AttentionConfig
from jax_flash.parallel._dense_tasks import guarded
from jax_flash.parallel._merge import merge
from jax_flash.parallel._schedule import ALL, FIRST
from jax_flash.parallel.varlen_layouts import local_seqused, local_spans


class PackedTasks:
    """Tasks on local packed rows; cu_seqlens / seqused are the global (N + 1,) / (N,) int32 arrays."""

    def __init__(self, cu_seqlens, seqused, rank, axis_size: int, layout: str, total: int, max_seqlen: int,
                 scale: float, softcap, implementation: str, deterministic: bool):
        self.cu, self.seqused, self.rank = cu_seqlens, seqused, rank
        self.axis_size, self.layout, self.total, self.max_seqlen = axis_size, layout, total, max_seqlen
        self.scale, self.softcap = scale, softcap
        self.implementation, self.deterministic = implementation, deterministic
        self.local_cu, self.spans = local_spans(cu_seqlens, axis_size)
        self.q_used = local_seqused(cu_seqlens, seqused, rank, axis_size, layout)

    def forward(self, task, step, no_wrap, q, k, v, acc):
        """Merges the task's (out, lse) into acc = (out (T, Hq, Dv) float32, lse (Hq, T))."""
        (cu_q, cu_k, used_q, used_k, config), (q_rows, _) = self._call(task, step, no_wrap)
        out, lse = _with_lse.attention_varlen_fwd_lse(q, k, v, cu_q, cu_k, used_q, used_k, config,
                                                      self.max_seqlen, self.max_seqlen, self.implementation)
        # Rows outside the part must not contribute whatever a kernel leaves there.
        out = jnp.where(q_rows[:, None, None], out.astype(jnp.float32), 0.0)
        lse = jnp.where(q_rows[None, :], lse, -jnp.inf)
        return merge(acc, guarded(task.guard, no_wrap, (out, lse), (0.0, -jnp.inf)))

    def backward(self, task, step, no_wrap, q, k, v, out, lse, dout, dlse, grads):
        """Adds the task's gradients to grads = (dq (T, Hq, D), dk (T, Hk, D), dv (T, Hk, Dv)) float32."""
        (cu_q, cu_k, used_q, used_k, config), (q_rows, k_rows) = self._call(task, step, no_wrap)
        dq, dk, dv = _with_lse.attention_varlen_bwd_from_lse(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q,
                                                              used_k, config, self.max_seqlen, self.max_seqlen,
                                                              self.implementation, self.deterministic)
        dq = jnp.where(q_rows[:, None, None], dq.astype(jnp.float32), 0.0)
        dk, dv = (jnp.where(k_rows[:, None, None], x.astype(jnp.float32), 0.0) for x in (dk, dv))
        block = guarded(task.guard, no_wrap, (dq, dk, dv), (0.0, 0.0, 0.0))
        return tuple(acc + x for acc, x in zip(grads, block))

    def _call(self, task, step, no_wrap):
        """(cu_q, cu_k, seqused_q, seqused_k, config) of the call, and the query / key rows it covers."""
        q_start, used_q = self._part(task.q_part, self.q_used, no_wrap)
        k_start, used_k = self._part(task.k_part, self._visiting_used(step), no_wrap)
        lo, hi = task.band
        if hi is None:
            assert lo is None, "packed bands are full or have a right edge (checked in the schedule)"
            window = (-1, -1)
        else:
            # At most used_k by the argument in the module docstring; the clip only guards the buffer.
            used_k = jnp.clip(used_q + hi, 0, used_k)
            window = (-1 if lo is None else hi - lo, 0)
        end = self.local_cu[-1:]
        config = AttentionConfig(self.scale, self.softcap, *window)
        call = (jnp.concatenate([q_start, end]), jnp.concatenate([k_start, end]), used_q, used_k, config)
        return call, (_covered(q_start, used_q, self.total), _covered(k_start, used_k, self.total))

    def _visiting_used(self, step):
        """Used rows of the visiting block's sequences: they belong to rank - step (step may be traced)."""
        src = (self.rank - step) % self.axis_size
        return local_seqused(self.cu, self.seqused, src, self.axis_size, self.layout)

    def _part(self, part, used, no_wrap):
        """(starts (N,), used rows (N,)) of a part of every local sequence."""
        def one(p):
            starts = self.local_cu[:-1]
            if p == ALL:
                return starts, used[0]
            if p == FIRST:
                return starts, used[1]
            return starts + self.spans // 2, used[2]

        if isinstance(part, str):
            return one(part)
        (s0, u0), (s1, u1) = one(part[0]), one(part[1])
        return jnp.where(no_wrap, s0, s1), jnp.where(no_wrap, u0, u1)


def _covered(starts, used, total: int):
    """(total,) bool: rows inside [starts[i], starts[i] + used[i]) for some i (the ranges are disjoint)."""
    marks = jnp.zeros((total + 1,), jnp.int32).at[starts].add(1).at[starts + used].add(-1)
    return jnp.cumsum(marks)[:total] > 0
