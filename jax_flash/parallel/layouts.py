"""Sequence layouts for context parallelism: which tokens of a sequence each rank of the mesh axis holds.

A sequence of S = P * n tokens is spread over P ranks, n tokens each, in one of three layouts:

  "contiguous"  rank r holds positions [r n, (r + 1) n).
  "zigzag"      the sequence in 2P chunks of c = n / 2; rank r holds chunk r then chunk 2P - 1 - r, so every
                rank has as much causal work as any other.
  "striped"     position t lives on rank t % P, at local row t // P.

In every layout a rank's local rows are in increasing position order, so a padded tail of a sequence (rows
at positions >= its used length) is a suffix of each rank's rows too.

Global arrays handed to `jit` with the sequence axis sharded over P devices must be in *layout order*: rank
0's n rows, then rank 1's, and so on. `to_layout` / `from_layout` convert a naturally ordered sequence axis
(and position ids, e.g. for rotary embeddings: `layout_positions`) into that order and back. Packed (THD)
sequences have the same three layouts applied to every sequence separately: see `varlen_layouts.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("contiguous", "zigzag", "striped")


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def chunk_multiple(axis_size: int, layout: str) -> int:
    """Sequence lengths must be a multiple of this for the layout: 2P for zigzag, P otherwise."""
    return 2 * axis_size if layout == "zigzag" else axis_size


def position(rank, row, n, axis_size: int, layout: str, where=np.where):
    """Position inside its sequence of local row `row` (of n) on `rank`. Broadcasts; with where=jnp.where
    every argument but axis_size and layout may be traced."""
    if layout == "contiguous":
        return rank * n + row
    if layout == "striped":
        return row * axis_size + rank
    c = n // 2
    return where(row < c, rank * c + row, (2 * axis_size - 1 - rank) * c + (row - c))


def layout_permutation(seq_len: int, axis_size: int, layout: str) -> np.ndarray:
    """(seq_len,) int: entry t is the natural position of the token at layout-order index t."""
    check_layout(layout)
    _check_length(seq_len, axis_size, layout, "seq_len")
    n = seq_len // axis_size
    rank, row = np.divmod(np.arange(seq_len), n)
    return position(rank, row, n, axis_size, layout).astype(np.int32)


def layout_positions(seq_len: int, axis_size: int, layout: str) -> jax.Array:
    """(seq_len,) int32 positions of the tokens in layout order (shard it like the sequence, feed RoPE)."""
    return jnp.asarray(layout_permutation(seq_len, axis_size, layout))


def local_positions(local_len: int, *, axis_name, layout: str) -> jax.Array:
    """Inside shard_map: (local_len,) int32 positions of this rank's tokens within the whole sequence."""
    check_layout(layout)
    axis_size = jax.lax.axis_size(axis_name)
    _check_length(local_len * axis_size, axis_size, layout, "local_len * axis_size")
    rank = jax.lax.axis_index(axis_name)
    rows = jnp.arange(local_len, dtype=jnp.int32)
    return position(rank, rows, local_len, axis_size, layout, jnp.where).astype(jnp.int32)


def to_layout(x, axis_size: int, layout: str, axis: int = 1):
    """Reorders the naturally ordered sequence axis `axis` of x (length S) into layout order."""
    perm = layout_permutation(x.shape[axis], axis_size, layout)
    return jnp.take(x, perm, axis=axis)


def from_layout(x, axis_size: int, layout: str, axis: int = 1):
    """Inverse of to_layout: the sequence axis back in natural order."""
    perm = layout_permutation(x.shape[axis], axis_size, layout)
    return jnp.take(x, np.argsort(perm), axis=axis)


def _check_length(seq_len, axis_size, layout, name):
    if isinstance(axis_size, bool) or not isinstance(axis_size, int) or axis_size < 1:
        raise ValueError(f"axis_size must be a positive int, got {axis_size!r}")
    multiple = chunk_multiple(axis_size, layout)
    if seq_len % multiple:
        raise ValueError(f"{name} ({seq_len}) must be a multiple of {multiple} for layout {layout!r} "
                         f"over {axis_size} ranks")
