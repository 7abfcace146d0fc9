"""Documents packed along each row, marked by segment ids: conversion to the packed (varlen) form."""

from __future__ import annotations

import jax.numpy as jnp

from jax_flash.ops._config import shape_of
from jax_flash.ops.varlen import flash_attention_varlen


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
    if len(shape_of(segment_ids)) != 2:
        raise ValueError(f"segment_ids must have shape (batch, seq), got {shape_of(segment_ids)}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise TypeError(f"segment_ids must be integers, got {segment_ids.dtype}")
    if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
        raise ValueError(f"max_segments must be a static Python int >= 1, got {max_segments!r}")
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
    cu_seqlens = jnp.concatenate([(offsets + first).reshape(-1), jnp.array([batch * seq], jnp.int32)])
    return cu_seqlens, lengths.reshape(-1)


def segmented_attention(q, k, v, segment_ids, max_segments, **kwargs):
    """flash_attention over documents packed along each row: (B, S, H, D) in, per-document attention.

    segment_ids: (B, S) for self-attention (Sq == Sk), or a pair (q_segment_ids (B, Sq), kv_segment_ids
    (B, Sk)); the r-th document of a row in q attends to the r-th document of the same row in kv.
    """
    q_ids, kv_ids = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
    (b, sq, hq, _), sk = q.shape, k.shape[1]
    for name, ids, s in (("q segment_ids", q_ids, sq), ("kv segment_ids", kv_ids, sk)):
        if shape_of(ids) != (b, s):
            raise ValueError(f"{name} must have shape {(b, s)} to match q {q.shape} / k {k.shape}, "
                             f"got {shape_of(ids)}")
    return_lse = kwargs.pop("return_lse", False)
    cu_q, used_q = segment_ids_to_varlen(q_ids, max_segments)
    cu_k, used_k = segment_ids_to_varlen(kv_ids, max_segments)
    flat = lambda x: x.reshape((-1, *x.shape[2:]))  # noqa: E731
    out, lse = flash_attention_varlen(flat(q), flat(k), flat(v), cu_q, cu_k, sq, sk, seqused_q=used_q,
                                      seqused_k=used_k, return_lse=True, **kwargs)
    out = out.reshape((b, sq, hq, out.shape[-1]))
    lse = lse.reshape((hq, b, sq)).transpose(1, 0, 2)
    return (out, lse) if return_lse else out
