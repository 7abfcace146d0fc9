"""Documents packed along each row, marked by segment ids: conversion to the packed (varlen) form, and
attention per document on the packed kernels.

The CUDA path keeps the BSHD layout at its boundary: each device (under sharded jit, batch and/or heads
split) converts its own rows' ids to offsets and runs the packed kernels on its rows, and a vmapped call
folds into the batch, so it stays one kernel call (ops/_partition.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_flash import _ffi, reference
from jax_flash.ops import _sinks
from jax_flash.ops._config import check_dense, check_flags, shape_of
from jax_flash.ops._implementation import choose_implementation
from jax_flash.ops._partition import batch_head_partitioned, fold_vmap


def _check_segment_ids(name, segment_ids, max_segments) -> None:
    if len(shape_of(segment_ids)) != 2:
        raise ValueError(f"{name} must have shape (batch, seq), got {shape_of(segment_ids)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise TypeError(f"{name} must be integers, got {segment_ids.dtype}")
    if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
        raise ValueError(f"max_segments must be a static Python int >= 1, got {max_segments!r}")


def segment_ids_to_varlen(segment_ids, max_segments: int):
    """Converts (B, S) int32 segment ids (0 = padding) to cu_seqlens / seqused over the B*S flattened rows.

    Document r of row b, the r-th run of equal nonzero ids from the left, becomes sequence
    b * max_segments + r: it starts at its first token, and its seqused is its length. Padding between and
    after documents lies outside every sequence's used rows. Slots a row does not fill are empty.

    max_segments is a static bound on the documents of one row. Documents beyond it in a row are
    treated as padding (their output is 0), so choose it >= the most documents any row holds.

    Returns:
      cu_seqlens (B * max_segments + 1,) int32 and seqused (B * max_segments,) int32, computed on device.
    """
    _check_segment_ids("segment_ids", segment_ids, max_segments)
    batch, seq = segment_ids.shape
    ids = segment_ids.astype(jnp.int32)
    previous = jnp.pad(ids[:, :-1], ((0, 0), (1, 0)))
    starts = (ids != 0) & (ids != previous)
    run = jnp.cumsum(starts, axis=1) - 1  # document index of each token; -1 before the first
    counted = (ids != 0) & (run >= 0) & (run < max_segments)
    slot = jnp.where(counted, run, max_segments)  # an extra slot that collects what is not counted
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], ids.shape)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32)[None, :], ids.shape)
    first = jnp.full((batch, max_segments + 1), seq, jnp.int32).at[rows, slot].min(
        jnp.where(starts, positions, seq))[:, :max_segments]
    lengths = jnp.zeros((batch, max_segments + 1), jnp.int32).at[rows, slot].add(1)[:, :max_segments]
    offsets = (jnp.arange(batch, dtype=jnp.int32) * seq)[:, None]
    cu_seqlens = jnp.concatenate([(offsets + first).reshape(-1), jnp.full((1,), batch * seq, jnp.int32)])
    return cu_seqlens, lengths.reshape(-1)


def segmented_attention(q, k, v, segment_ids, max_segments, *, causal, window, softcap, scale, return_lse,
                        deterministic, implementation, sinks=None, _variant=None):
    """flash_attention over documents packed along each row: (B, S, H, D) in, per-document attention.

    segment_ids: (B, S) for self-attention (Sq == Sk), or a pair (q_segment_ids (B, Sq), kv_segment_ids
    (B, Sk)); the r-th document of a row in q attends to the r-th document of the same row in kv.
    sinks: None or (Hq,) attention sinks, as flash_attention's.
    _variant: the kernel variant pin of flash_attention.
    """
    config = check_dense(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale, variant=_variant)
    check_flags(return_lse=return_lse, deterministic=deterministic)
    q_ids, kv_ids = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
    (b, sq, _, _), sk = q.shape, k.shape[1]
    for name, ids, s in (("q segment_ids", q_ids, sq), ("kv segment_ids", kv_ids, sk)):
        _check_segment_ids(name, ids, max_segments)
        if shape_of(ids) != (b, s):
            raise ValueError(f"{name} must have shape {(b, s)} to match q {q.shape} / k {k.shape}, "
                             f"got {shape_of(ids)}")
    impl = choose_implementation(implementation, q.dtype, q.shape[-1], v.shape[-1])
    if impl == "xla":
        cu_q, used_q = segment_ids_to_varlen(q_ids, max_segments)
        cu_k, used_k = segment_ids_to_varlen(kv_ids, max_segments)
        out, lse = reference.attention_varlen(_rows(q), _rows(k), _rows(v), cu_q, cu_k, seqused_q=used_q,
                                              seqused_k=used_k, window=config.window, softcap=config.softcap,
                                              scale=config.scale, return_lse=True, sinks=sinks)
        out, lse = out.reshape((*q.shape[:3], v.shape[-1])), _lse_by_row(lse, b)
    elif sinks is None:
        out, lse = _cuda_segments(q, k, v, q_ids, kv_ids, (config, max_segments, deterministic))
    else:
        out, lse = _sinks.attention_with_sinks(_sink_kernels((config, max_segments, deterministic)), sinks,
                                               (q, k, v, q_ids, kv_ids))
    return (out, lse) if return_lse else out


def _rows(x):
    """(B, S, ...) -> (B * S, ...): the rows of the batch one after another, as the packed kernels see them."""
    return x.reshape((-1, *x.shape[2:]))


def _lse_by_row(lse, batch: int):
    """Packed (Hq, B * S) -> (B, Hq, S)."""
    return lse.reshape((lse.shape[0], batch, -1)).transpose(1, 0, 2)


def _lse_packed(lse):
    """(B, Hq, S) -> packed (Hq, B * S)."""
    return lse.transpose(1, 0, 2).reshape((lse.shape[1], -1))


def _offsets(q_ids, kv_ids, max_segments):
    return (*segment_ids_to_varlen(q_ids, max_segments), *segment_ids_to_varlen(kv_ids, max_segments))


def _fwd_call(q, k, v, q_ids, kv_ids, static):
    config, max_segments = static
    cu_q, used_q, cu_k, used_k = _offsets(q_ids, kv_ids, max_segments)
    out, lse = _ffi.attn_varlen_fwd(_rows(q), _rows(k), _rows(v), cu_q, cu_k, used_q, used_k, config,
                                    q.shape[1], k.shape[1])
    return out.reshape((*q.shape[:3], v.shape[-1])), _lse_by_row(lse, q.shape[0])


def _bwd_call(q, k, v, out, lse, dout, dlse, q_ids, kv_ids, static):
    config, max_segments, deterministic = static
    cu_q, used_q, cu_k, used_k = _offsets(q_ids, kv_ids, max_segments)
    dq, dk, dv = _ffi.attn_varlen_bwd(_rows(q), _rows(k), _rows(v), _rows(out), _lse_packed(lse), _rows(dout),
                                      _lse_packed(dlse), cu_q, cu_k, used_q, used_k, config, deterministic,
                                      q.shape[1], k.shape[1])
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


_ARGS = ("q", "k", "v", "q_ids", "kv_ids")
_BWD_ARGS = ("q", "k", "v", "out", "lse", "out", "lse", "q_ids", "kv_ids")
_fwd = fold_vmap(batch_head_partitioned(_fwd_call, _ARGS, ("out", "lse")))
_bwd = fold_vmap(batch_head_partitioned(_bwd_call, _BWD_ARGS, ("q", "k", "v")))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _cuda_segments(q, k, v, q_ids, kv_ids, static):
    return _fwd(q, k, v, q_ids, kv_ids, static[:2])


def _cuda_segments_fwd(q, k, v, q_ids, kv_ids, static):
    out, lse = _fwd(q, k, v, q_ids, kv_ids, static[:2])
    return (out, lse), (q, k, v, out, lse, q_ids, kv_ids)


def _cuda_segments_bwd(static, residuals, cotangents):
    q, k, v, out, lse, q_ids, kv_ids = residuals
    dout, dlse = cotangents
    dq, dk, dv = _bwd(q, k, v, out, lse, dout.astype(out.dtype), dlse.astype(jnp.float32), q_ids, kv_ids, static)
    # The segment ids are integers: no cotangent.
    return dq, dk, dv, None, None


_cuda_segments.defvjp(_cuda_segments_fwd, _cuda_segments_bwd)


def _sink_kernels(static):
    """The kernels for _sinks.attention_with_sinks: forward without the sinks, backward from out' and lse'."""
    def fwd(q, k, v, q_ids, kv_ids):
        return _fwd(q, k, v, q_ids, kv_ids, static[:2])

    def bwd(operands, out, lse, dout, dlse):
        q, k, v, q_ids, kv_ids = operands
        grads = _bwd(q, k, v, out, lse, dout.astype(out.dtype), dlse.astype(jnp.float32), q_ids, kv_ids, static)
        return (*grads, None, None)  # the segment ids are integers: no cotangent

    return _sinks.Kernels(fwd, bwd)
