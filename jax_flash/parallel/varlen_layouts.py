"""Packed (THD) sequences under context parallelism: padding, layout order, and each rank's metadata.

Packed input is T rows holding N sequences: sequence i owns rows [cu_seqlens[i], cu_seqlens[i + 1]) and
uses the first seqused[i] of them (the rest is padding). For P ranks every sequence's span must be a
multiple of P (2P for zigzag), and so must the rows before cu_seqlens[0] and after cu_seqlens[-1]; then
each sequence is split over the ranks as the layout says (layouts.py), and rank r's local array is the
concatenation, in sequence order, of its part of every sequence: local sequence i owns local rows
[cu_seqlens[i] / P, cu_seqlens[i + 1] / P). Those spans are known only on the device, so everything here
is computed with jnp on device data; shapes depend only on T and N.

`padded_cu_seqlens` + `pad_packed` turn sequences of any length into that form; `varlen_to_layout` /
`varlen_from_layout` reorder a padded packed array into layout order (rank 0's T / P rows, then rank 1's,
...) and back.
"""

from __future__ import annotations

import jax.numpy as jnp

from jax_flash.parallel.layouts import check_layout, chunk_multiple, position


def padded_cu_seqlens(cu_seqlens, multiple: int):
    """Rounds every sequence's span up to a multiple of `multiple` (use chunk_multiple(P, layout)).

    Args:
      cu_seqlens: (N + 1,) int32 offsets of sequences packed without padding.
    Returns:
      padded cu_seqlens (N + 1,) int32 starting at 0, and seqused (N,) int32: the true lengths.
    """
    cu = jnp.asarray(cu_seqlens, jnp.int32)
    lengths = cu[1:] - cu[:-1]
    spans = (lengths + multiple - 1) // multiple * multiple
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(spans, dtype=jnp.int32)]), lengths


def pad_packed(x, cu_seqlens, padded_cu, total: int):
    """Moves each sequence's rows of x (T, ...) to its padded start: (total, ...), zeros elsewhere.

    total is static and must hold padded_cu[-1] (rows that do not fit are dropped)."""
    seq, index, inside = _sequence_of_rows(cu_seqlens, x.shape[0])
    target = jnp.where(inside, padded_cu[seq] + index, total)  # total = out of bounds: dropped
    return jnp.zeros((total, *x.shape[1:]), x.dtype).at[target].set(x, mode="drop")


def unpad_packed(y, cu_seqlens, padded_cu, total: int):
    """Inverse of pad_packed: (total, ...) rows at the unpadded offsets cu_seqlens, zeros outside."""
    seq, index, inside = _sequence_of_rows(cu_seqlens, total)
    rows = jnp.where(inside, padded_cu[seq] + index, 0)
    return jnp.where(_expand(inside, y.ndim), y[rows], 0)


def varlen_to_layout(x, cu_seqlens, axis_size: int, layout: str):
    """Reorders padded packed rows x (T, ...) into layout order (rank-major local arrays)."""
    return x[_natural_rows(cu_seqlens, x.shape[0], axis_size, layout)]


def varlen_from_layout(x, cu_seqlens, axis_size: int, layout: str):
    """Inverse of varlen_to_layout: layout-ordered rows (T, ...) back to natural order."""
    rows = _natural_rows(cu_seqlens, x.shape[0], axis_size, layout)
    return jnp.zeros_like(x).at[rows].set(x, unique_indices=True)


def varlen_layout_positions(cu_seqlens, total: int, axis_size: int, layout: str):
    """(total,) int32: position of each layout-ordered row inside its sequence (for RoPE)."""
    natural = _natural_rows(cu_seqlens, total, axis_size, layout)
    starts = _region_starts(cu_seqlens)
    region = jnp.searchsorted(starts, natural, side="right") - 1
    return (natural - starts[region]).astype(jnp.int32)


def local_spans(cu_seqlens, axis_size: int):
    """Each rank's local cu_seqlens (N + 1,) and spans (N,): every global offset divided by P."""
    local_cu = jnp.asarray(cu_seqlens, jnp.int32) // axis_size
    return local_cu, local_cu[1:] - local_cu[:-1]


def local_seqused(cu_seqlens, seqused, rank, axis_size: int, layout: str):
    """(N,) int32 rows of each local sequence that are used on `rank` (traced), a prefix of its span.

    With zigzag also returns the used rows of the first and the second half of each local span;
    otherwise those are None."""
    check_layout(layout)
    _, n = local_spans(cu_seqlens, axis_size)
    spans = n * axis_size
    used = spans if seqused is None else jnp.clip(jnp.asarray(seqused, jnp.int32), 0, spans)
    if layout == "contiguous":
        return jnp.clip(used - rank * n, 0, n), None, None
    if layout == "striped":
        # rows j with j * P + rank < used; the numerator is >= 0 since rank < P
        return jnp.clip((used - rank + axis_size - 1) // axis_size, 0, n), None, None
    c = n // 2
    first = jnp.clip(used - rank * c, 0, c)
    second = jnp.clip(used - (2 * axis_size - 1 - rank) * c, 0, c)
    return first + second, first, second


def _expand(mask, ndim):
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _sequence_of_rows(cu_seqlens, total: int):
    """For rows 0..total-1: (sequence, index inside it, whether the row is inside a sequence)."""
    cu = jnp.asarray(cu_seqlens, jnp.int32)
    rows = jnp.arange(total, dtype=jnp.int32)
    seq = jnp.clip(jnp.searchsorted(cu, rows, side="right") - 1, 0, cu.shape[0] - 2)
    index = rows - cu[seq]
    inside = (rows >= cu[0]) & (rows < cu[-1]) & (index < cu[seq + 1] - cu[seq])
    return seq, index, inside


def _region_starts(cu_seqlens):
    """Starts of the regions a layout splits: before cu[0], each sequence, after cu[-1] (N + 2,)."""
    cu = jnp.asarray(cu_seqlens, jnp.int32)
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), cu])


def _natural_rows(cu_seqlens, total: int, axis_size: int, layout: str):
    """(total,) int32: natural row of each layout-order row."""
    check_layout(layout)
    multiple = chunk_multiple(axis_size, layout)
    if total % multiple:
        raise ValueError(f"the packed row count ({total}) must be a multiple of {multiple} for layout "
                         f"{layout!r} over {axis_size} ranks")
    local_total = total // axis_size
    starts = _region_starts(cu_seqlens)
    bounds = jnp.concatenate([starts, jnp.array([total], jnp.int32)])
    local_bounds = bounds // axis_size
    rank, row = jnp.divmod(jnp.arange(total, dtype=jnp.int32), local_total)
    # The last region containing the row; empty regions share their start with the next one.
    region = jnp.searchsorted(local_bounds[:-1], row, side="right") - 1
    n = local_bounds[region + 1] - local_bounds[region]
    pos = position(rank, row - local_bounds[region], n, axis_size, layout, jnp.where)
    return (starts[region] + pos).astype(jnp.int32)
