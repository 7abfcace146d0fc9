"""Ring attention: exact attention over a sequence split across a mesh axis, K/V passed round the ring.

Forward, for P ranks: P steps (fewer when a window leaves the last ones empty). At step s every rank holds
the K/V shard of rank r - s; it sends it on to r + 1 (one collective-permute of K and V concatenated) and,
while that transfer is in flight, runs the step's attention calls on it (_schedule.py decides which) and
merges their (out, lse) into float32 accumulators. The transfer is issued before the step's compute, which
does not depend on it, so XLA's scheduler can overlap the two; an optimization barrier closes each step
(where the backend keeps barriers). Runs of identical steps become one fori_loop, so compile time and live
memory do not grow with P: one visiting block and one in flight.

Backward (custom_vjp; residuals: the local q, k, v, out, lse only): K/V go round again, and with each
block travels its dK/dV accumulator (float32). One message per step carries both the block onward and the
previous block's accumulator, issued before the step's compute; a rank adds its own block gradients to the
accumulator it receives. A last permute returns every dK/dV to its owner. All transfers of a ring form one
chain, so every rank issues them in the same order (the CPU runtime, for one, mixes up concurrent ones).
Each block's backward uses the global out and lse of its queries, so the blocks' gradients just add.
The blocks are jax_flash.ops' attention with LSE (ops/_with_lse.py): the kernels through flash_attention's
wrappers, or the reference's backward from the LSE.

Inside a shard_map with check_vma every value of the ring varies over the mesh axes q, k, v vary over and over
axis_name (_sequence_shards), so the loops' carries keep one type from step to step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jax_flash import _vma
from jax_flash.ops import _sinks
from jax_flash.ops._implementation import choose_implementation
from jax_flash.parallel import _args, _schedule
from jax_flash.parallel._dense_tasks import DenseTasks
from jax_flash.parallel._merge import empty_partial
from jax_flash.parallel._packed_tasks import PackedTasks
from jax_flash.parallel.layouts import check_layout

# Tuning knobs for measurements (jax_flash.parallel.benchmark): an optimization barrier closing each step,
# and the K/V transfers themselves (off: every step computes on the local block, a compute-only baseline
# with the same calls and shapes, whose result is of course wrong).
STEP_BARRIER = True
COMMUNICATE = True


@dataclasses.dataclass(frozen=True)
class _Ring:
    axis_name: Any
    axis_size: int
    layout: str
    steps: tuple
    scale: float
    softcap: float | None
    implementation: str
    deterministic: bool
    max_seqlen: int | None  # packed: static bound on local spans; None for dense
    barrier: bool
    communicate: bool


def ring_attention(q, k, v, *, axis_name, causal=False, layout="zigzag", window=None, softcap=None,
                   scale=None, return_lse=False, deterministic=False, implementation=None, sinks=None):
    """Attention over a sequence sharded along `axis_name`; call it inside shard_map.

    Args:
      q: (B, n, Hq, D), this rank's n query rows of a sequence of P * n tokens, in `layout` (layouts.py).
      k, v: (B, n, Hk, D), (B, n, Hk, Dv): the same rows' keys and values (self-attention); Hq % Hk == 0.
      axis_name: the shard_map mesh axis the sequence is split over (P = its size).
      causal, window, softcap, scale: as jax_flash.flash_attention, over the whole sequence. Windows need
        layout "contiguous" or "striped".
      layout: "zigzag" (default; balanced causal work, n must be even), "contiguous" or "striped".
      return_lse: also return lse (B, Hq, n) float32.
      deterministic: bitwise-repeatable gradients (the kernels' flag; the ring's order is fixed).
      implementation: "cuda", "xla" (pure JAX, any float dtype) or None (cuda where it can run).
      sinks: None or (Hq,) float attention sinks, as flash_attention's, the same on every rank (replicated):
        added once to the merged result of the ring's blocks.

    Returns:
      out (B, n, Hq, Dv) in q.dtype for this rank's rows [, lse]. Differentiable (custom_vjp), in sinks too.
    """
    _args.check_arrays(q, k, v, packed=False)
    attrs = _args.check_attributes(q, causal=causal, layout=layout, window=window, softcap=softcap,
                                   scale=scale, return_lse=return_lse, deterministic=deterministic)
    size = _args.axis_size(axis_name)
    n = q.shape[1]
    if layout == "zigzag" and n % 2:
        raise ValueError(f"layout 'zigzag' needs an even number of local rows (2 chunks per rank), got "
                         f"q {q.shape}: the sequence length must be a multiple of 2 * {size}")
    impl = choose_implementation(implementation, q.dtype, q.shape[-1], v.shape[-1])
    ring = _make_ring(axis_name, size, layout, attrs, n, impl, deterministic, None)
    q, k, v = _sequence_shards(q, k, v, axis_name)
    out, lse = _ring(q, k, v, None, None, _ring_sinks(sinks, q), ring)
    return (out, lse) if return_lse else out


def ring_attention_varlen(q, k, v, cu_seqlens, *, axis_name, seqused=None, max_seqlen=None, causal=False,
                          layout="zigzag", window=None, softcap=None, scale=None, return_lse=False,
                          deterministic=False, implementation=None, sinks=None):
    """Ring attention over packed sequences (THD), each split across the ranks of `axis_name`.

    Args:
      q: (T, Hq, D), this rank's rows in layout order (varlen_layouts.py); k (T, Hk, D), v (T, Hk, Dv).
      cu_seqlens: (N + 1,) int32, the *global* offsets (every rank passes the same): sequence i spans
        global rows [cu_seqlens[i], cu_seqlens[i + 1]), a multiple of P rows (2P for zigzag); locally it
        spans rows [cu_seqlens[i] / P, cu_seqlens[i + 1] / P). See padded_cu_seqlens / pad_packed.
      seqused: (N,) int32 global used lengths (the rest of each span is padding), or None (all used).
      max_seqlen: static bound on the global spans, or None (P * T): bounds the kernels' per-sequence work.
      causal, window, softcap, scale, deterministic, implementation, sinks: as ring_attention; a window
        needs layout "striped" and causal=True.

    Returns:
      out (T, Hq, Dv) [, lse (Hq, T)]; padding rows get 0 and -inf, and zero gradients.
    """
    _args.check_arrays(q, k, v, packed=True)
    _args.check_packed_metadata(cu_seqlens, seqused, max_seqlen)
    attrs = _args.check_attributes(q, causal=causal, layout=layout, window=window, softcap=softcap,
                                   scale=scale, return_lse=return_lse, deterministic=deterministic)
    size = _args.axis_size(axis_name)
    total = q.shape[0]
    if layout == "zigzag" and total % 2:
        raise ValueError(f"layout 'zigzag' needs an even number of local rows, got q {q.shape}")
    local_max = total if max_seqlen is None else min(total, -(-max_seqlen // size))
    impl = choose_implementation(implementation, q.dtype, q.shape[-1], v.shape[-1])
    ring = _make_ring(axis_name, size, layout, attrs, None, impl, deterministic, local_max)
    q, k, v = _sequence_shards(q, k, v, axis_name)
    out, lse = _ring(q, k, v, cu_seqlens, seqused, _ring_sinks(sinks, q), ring)
    return (out, lse) if return_lse else out


def ring_schedule(axis_size: int, local_len: int, *, causal=False, layout="zigzag", window=None):
    """The static schedule a dense ring runs: a tuple of steps, each a tuple of _schedule.Task.
    Feed it to _schedule.rank_work to count each rank's attention work."""
    check_layout(layout)
    left, right = _args.window_sides(window, causal)
    return _schedule.plan(layout, axis_size, left, right, local_len)


def _sequence_shards(q, k, v, axis_name):
    """q, k, v typed as what they are, shards of a sequence split over axis_name: varying over it (they
    may already be) as well as over the axes they vary over. Inside the ring every value then varies over
    those axes (see _varying), the type its loops' carries keep (shard_map's check_vma)."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    return _vma.vary((q, k, v), _vma.varying_axes(q, k, v) | frozenset(names))


def _ring_sinks(sinks, q):
    """Checked sinks typed to vary like the shards q (after _sequence_shards), so that their cotangent, a
    sum over this rank's rows, is summed over the ranks by the transpose of that cast (check_vma)."""
    _sinks.check_sinks(sinks, q.shape[-2])
    return None if sinks is None else _varying(sinks, q)


def _varying(values, like):
    """values (zeros, cotangents) typed to vary over the manual axes `like` varies over."""
    return _vma.vary(values, _vma.varying_axes(like))


def _make_ring(axis_name, size, layout, attrs, local_len, impl, deterministic, max_seqlen):
    steps = _schedule.plan(layout, size, attrs.left, attrs.right, local_len)
    return _Ring(axis_name, size, layout, steps, attrs.scale, attrs.softcap, impl, deterministic, max_seqlen,
                 STEP_BARRIER, COMMUNICATE)


def _tasks(ring: _Ring, q, cu_seqlens, seqused, rank):
    if cu_seqlens is None:
        return DenseTasks(q.shape[1], ring.scale, ring.softcap, ring.implementation, ring.deterministic)
    return PackedTasks(cu_seqlens, seqused, rank, ring.axis_size, ring.layout, q.shape[0], ring.max_seqlen,
                       ring.scale, ring.softcap, ring.implementation, ring.deterministic)


def _shift(ring: _Ring, x, offset: int):
    """x from rank r goes to rank r + offset (mod P)."""
    if not ring.communicate or offset % ring.axis_size == 0:
        return x
    perm = [(i, (i + offset) % ring.axis_size) for i in range(ring.axis_size)]
    return jax.lax.ppermute(x, ring.axis_name, perm)


def _close_step(ring: _Ring, values):
    return jax.lax.optimization_barrier(values) if ring.barrier else values


def _lse_shape(q):
    """(B, Hq, n) dense, (Hq, T) packed."""
    return (*q.shape[:-3], q.shape[-2], q.shape[-3])


def _run_steps(ring: _Ring, body, carry):
    """Runs body(step, tasks, carry, send) over the schedule. A run of identical steps (the last step
    excepted) becomes one fori_loop, so compile time and live memory do not grow with P; other steps are
    unrolled. send: whether the step passes its block on (every step but the last)."""
    steps, last = ring.steps, len(ring.steps) - 1
    start = 0
    while start <= last:
        stop = start + 1
        while stop < last and steps[stop] == steps[start]:
            stop += 1
        tasks = steps[start]
        if stop - start > 1:
            carry = jax.lax.fori_loop(start, stop, lambda i, c, t=tasks: body(i, t, c, True), carry)
        else:
            carry = body(start, tasks, carry, start < last)
        start = stop
    return carry


def _forward(q, k, v, cu_seqlens, seqused, sinks, ring: _Ring):
    rank = jax.lax.axis_index(ring.axis_name)
    tasks = _tasks(ring, q, cu_seqlens, seqused, rank)
    d = k.shape[-1]

    def body(step, step_tasks, carry, send):
        kv, acc = carry
        if send:
            kv_next = _shift(ring, kv, 1)  # in flight during this step's compute
        no_wrap = rank >= step
        for task in step_tasks:
            acc = tasks.forward(task, step, no_wrap, q, kv[..., :d], kv[..., d:], acc)
        if send:
            acc, kv = _close_step(ring, (acc, kv_next))
        return kv, acc

    kv = jnp.concatenate([k, v], axis=-1)  # one transfer per step
    acc = _varying(empty_partial((*q.shape[:-1], v.shape[-1]), _lse_shape(q)), q)
    _, (out, lse) = _run_steps(ring, body, (kv, acc))
    if sinks is not None:  # once, on the merged float32 result
        out, lse = _sinks.add_sinks(out, lse, sinks)
    return out.astype(q.dtype), lse


def _backward(ring: _Ring, residuals, cotangents):
    q, k, v, out, lse, cu_seqlens, seqused, sinks = residuals
    dout, dlse = _varying(cotangents, q)
    rank = jax.lax.axis_index(ring.axis_name)
    tasks = _tasks(ring, q, cu_seqlens, seqused, rank)
    d = k.shape[-1]

    def body(step, step_tasks, carry, send):
        kv, dkv_prev, dq = carry  # dkv_prev: dK/dV accumulated for the block held at the previous step
        # One message per step: this block onward (not after the last step) and the previous block's
        # dK/dV to the rank that now holds that block. Step 0 sends zeros for the latter, which keeps
        # the loop body uniform. Its compute below does not wait for it.
        payload = (kv, dkv_prev) if send else (dkv_prev,)
        message = _shift(ring, _pack(payload), 1)
        no_wrap = rank >= step
        dk = jnp.zeros(k.shape, jnp.float32)
        dv = jnp.zeros(v.shape, jnp.float32)
        for task in step_tasks:
            dq, dk, dv = tasks.backward(task, step, no_wrap, q, kv[..., :d], kv[..., d:], out, lse, dout, dlse,
                                        (dq, dk, dv))
        received = _unpack(message, payload)
        dkv = jnp.concatenate([dk, dv], axis=-1) + received[-1]  # what the ranks before added to this block
        kv = received[0] if send else kv
        return _close_step(ring, (kv, dkv, dq)) if send else (kv, dkv, dq)

    kv = jnp.concatenate([k, v], axis=-1)
    carry = (kv, *_varying((jnp.zeros(kv.shape, jnp.float32), jnp.zeros(q.shape, jnp.float32)), q))
    _, dkv, dq = _run_steps(ring, body, carry)
    dkv = _shift(ring, dkv, -(len(ring.steps) - 1))  # the last block held is rank r - last's: send it home
    dk, dv = dkv[..., :d], dkv[..., d:]
    # out and lse include the sinks: the blocks' backward above is then the one with the sinks.
    dsinks = None if sinks is None else _sinks.sinks_grad(out, lse, dout, dlse, sinks)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, dsinks


def _pack(arrays):
    """Arrays sharing their leading axes (e.g. (B, n, Hk)) as one uint8 buffer, to send them in one
    transfer whatever their dtypes (K/V in the input dtype, dK/dV in float32)."""
    return jnp.concatenate([_as_bytes(x) for x in arrays], axis=-1)


def _as_bytes(x):
    b = jax.lax.bitcast_convert_type(x, jnp.uint8)
    return b.reshape(*x.shape[:-1], -1) if b.ndim > x.ndim else b


def _unpack(buffer, like):
    """Inverse of _pack: arrays shaped and typed like `like`."""
    out, start = [], 0
    for x in like:
        size = x.shape[-1] * jnp.dtype(x.dtype).itemsize
        b = jax.lax.slice_in_dim(buffer, start, start + size, axis=-1)
        if jnp.dtype(x.dtype).itemsize > 1:
            b = b.reshape(*x.shape, jnp.dtype(x.dtype).itemsize)
        out.append(jax.lax.bitcast_convert_type(b, x.dtype))
        start += size
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _ring(q, k, v, cu_seqlens, seqused, sinks, ring):
    return _forward(q, k, v, cu_seqlens, seqused, sinks, ring)


def _ring_fwd(q, k, v, cu_seqlens, seqused, sinks, ring):
    out, lse = _forward(q, k, v, cu_seqlens, seqused, sinks, ring)
    return (out, lse), (q, k, v, out, lse, cu_seqlens, seqused, sinks)


_ring.defvjp(_ring_fwd, _backward)
