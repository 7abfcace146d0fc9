"""Sharding and vmap for the opaque kernel calls.

An FFI call is opaque to XLA's partitioner, which would all-gather its inputs. `batch_head_partitioned`
wraps a per-device call in `custom_partitioning`, so operands sharded over batch and/or heads (and a paged
cache over its pages, with the batch) stay where they are: each device runs the call on its own shards.
Sequence, token and head-dim axes, and the offsets of packed sequences, are whole on every device: the
kernels need them whole (sequence-sharded attention is `jax_flash.parallel`).

custom_partitioning has no vmap rule, so each partitioned call is wrapped in a custom_vmap: `fold_vmap`
folds the vmapped axis into the batch (BSHD operands) and `concat_vmap` concatenates the elements' packed
tokens into one packed call, shifting their offsets; both make one call of a vmapped one. `map_vmap` runs
the call once per element.

Operands are described by kinds (_FACTORS): one factor name per axis. A factor shared by two operands has
one size and one sharding.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

_FACTORS = {
    # Dense BSHD: b batch, s / t query / key positions, h / k query / kv heads, d / e head dims of q, k / v.
    "q": "b s h d", "out": "b s h e", "k": "b t k d", "v": "b t k e", "lse": "b h s",
    # Segment ids of the rows of q and of k / v.
    "q_ids": "b s", "kv_ids": "b t",
    # Packed THD: s / t query / key tokens; m the N + 1 offsets, n the N sequences.
    "packed_q": "s h d", "packed_out": "s h e", "packed_k": "t k d", "packed_v": "t k e", "packed_lse": "h s",
    "cu_q": "m", "cu_k": "m", "used_q": "n", "used_k": "n",
    # Paged caches: p pages of g slots; x pages per sequence. The page table of packed queries has a row per
    # sequence (n), never split: packed queries have no batch axis to split with it.
    "k_cache": "p g k d", "v_cache": "p g k e", "page_table": "b x", "cache_seqlens": "b",
    "packed_page_table": "n x", "packed_cache_seqlens": "n",
}
# Factors a device may hold a part of; every other factor is whole on each device.
_SPLIT = ("b", "h", "k", "p")


def _normalized(axes) -> tuple:
    return () if axes is None else axes if isinstance(axes, tuple) else (axes,)


def _axes_size(mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in _normalized(axes))


def _factor_axes(kinds, shapes, factor):
    """(mesh axes, size) of `factor` in the first operand that shards it, else (None, size of the first
    operand that has it)."""
    size = None
    for kind, shape in zip(kinds, shapes):
        factors = _FACTORS[kind].split()
        if factor not in factors:
            continue
        axis = factors.index(factor)
        size = shape.shape[axis] if size is None else size
        spec = tuple(shape.sharding.spec) if isinstance(shape.sharding, NamedSharding) else ()
        axes = spec[axis] if axis < len(spec) else None
        if axes is not None:
            return axes, shape.shape[axis]
    return None, size


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The mesh axes that split the batch, the heads and the cache pages (None: whole on every device)."""
    batch: object = None
    heads: object = None
    pages: object = None

    def spec(self, kind: str) -> P:
        axes = {"b": self.batch, "h": self.heads, "k": self.heads, "p": self.pages}
        return P(*(axes.get(f) for f in _FACTORS[kind].split()))


def _layout(mesh, kinds, shapes) -> _Layout:
    """Keeps the operands' batch and head sharding where the kernels can run on the shards."""
    batch, _ = _factor_axes(kinds, shapes, "b")
    # Query heads first, else kv heads: a cache sharded over kv heads slices q to match, not the reverse.
    heads_q, num_q = _factor_axes(kinds, shapes, "h")
    heads_k, num_k = _factor_axes(kinds, shapes, "k")
    heads = heads_q if heads_q is not None else heads_k
    n = _axes_size(mesh, heads)
    # Query head h reads kv head h // (Hq // Hk): an even split of both head axes keeps each group on one
    # device. Otherwise the heads are whole (correct, just not split).
    if heads is not None and (num_q % n or num_k % n or set(_normalized(heads)) & set(_normalized(batch))):
        heads = None
    pages, num_pages = _factor_axes(kinds, shapes, "p")
    if pages is not None and (_normalized(pages) != _normalized(batch) or num_pages % _axes_size(mesh, pages)):
        raise ValueError(
            f"paged_attention: the caches' page axis is sharded over mesh axes {_normalized(pages)} and the "
            f"batch over {_normalized(batch)} ({num_pages} pages). Every sequence may read any page, so each "
            f"device would need the whole cache: replicate the page axis (shard the caches over kv heads), or "
            f"shard it over exactly the batch's mesh axes, each device's sequences using pages of its own "
            f"block of the pool")
    return _Layout(batch, heads, pages)


def _localized_page_table(page_table, pages_axes, local_pages: int):
    """Global page indices -> indices into this device's block of the pool; pages of other blocks, like
    indices outside [0, P), become -1 (a page of zeros)."""
    local = page_table - jax.lax.axis_index(pages_axes) * local_pages
    return jnp.where((local >= 0) & (local < local_pages), local, -1)


def batch_head_partitioned(call, arg_kinds, out_kinds):
    """custom_partitioning of call(*arrays, static) -> tuple of arrays; each device runs call on its shards.

    call's last positional argument is a static (hashable) configuration; arrays are of the given kinds.
    When the cache's pages are split with the batch, the page table reaching call indexes the device's own
    block of pages.
    """

    def shardings(mesh, kinds, layout):
        return tuple(NamedSharding(mesh, layout.spec(kind)) for kind in kinds)

    def infer(static, mesh, arg_shapes, result_shape):
        return shardings(mesh, out_kinds, _layout(mesh, arg_kinds, arg_shapes))

    def partition(static, mesh, arg_shapes, result_shape):
        layout = _layout(mesh, arg_kinds, arg_shapes)

        def lower(*arrays):
            if layout.pages is not None:
                arrays = list(arrays)
                table, cache = arg_kinds.index("page_table"), arg_kinds.index("k_cache")
                arrays[table] = _localized_page_table(arrays[table], layout.pages, arrays[cache].shape[0])
            return call(*arrays, static)

        return mesh, lower, shardings(mesh, out_kinds, layout), shardings(mesh, arg_kinds, layout)

    rule = (", ".join(_FACTORS[k] for k in arg_kinds) + " -> " + ", ".join(_FACTORS[k] for k in out_kinds))
    # Shardy wants the factors that stay whole in order of first appearance.
    factors = dict.fromkeys(" ".join(_FACTORS[k] for k in arg_kinds).split())
    whole = tuple(f for f in factors if f not in _SPLIT)
    wrapped = custom_partitioning(call, static_argnums=(len(arg_kinds),))
    wrapped.def_partition(partition=partition, infer_sharding_from_operands=infer,
                          sharding_rule=rule, need_replication_factors=whole)
    return wrapped


def _vmapped(call, vmap_rule):
    """call(*arrays, static) under a custom_vmap (one per static value) whose rule is
    vmap_rule(batched_call, axis_size, in_batched, *arrays), batched arrays on axis 0; it returns the
    outputs batched on axis 0."""

    @functools.cache
    def for_static(static):
        @custom_vmap
        def batched_call(*arrays):
            return call(*arrays, static)

        @batched_call.def_vmap
        def rule(axis_size, in_batched, *arrays):
            outs = vmap_rule(batched_call, axis_size, in_batched, *arrays)
            return outs, tuple(True for _ in outs)

        return batched_call

    def wrapped(*arrays_and_static):
        *arrays, static = arrays_and_static
        return for_static(static)(*arrays)

    return wrapped


def _broadcast(axis_size, in_batched, arrays):
    return [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, batched in zip(arrays, in_batched)]


def fold_vmap(call):
    """custom_vmap of call(*arrays, static): vmapped axes fold into the batch axis of every operand."""

    def fold(batched_call, axis_size, in_batched, *arrays):
        arrays = _broadcast(axis_size, in_batched, arrays)
        outs = batched_call(*(x.reshape((-1, *x.shape[2:])) for x in arrays))
        return tuple(o.reshape((axis_size, -1, *o.shape[1:])) for o in outs)

    return _vmapped(call, fold)


def map_vmap(call):
    """custom_vmap of call(*arrays, static): one call per element of the vmapped axis, in sequence; unbatched
    operands (a shared cache) pass to every call as they are."""

    def each(batched_call, axis_size, in_batched, *arrays):
        def one(batched_arrays):
            parts = iter(batched_arrays)
            return batched_call(*(next(parts) if batched else x for x, batched in zip(arrays, in_batched)))

        return jax.lax.map(one, [x for x, batched in zip(arrays, in_batched) if batched])

    return _vmapped(call, each)


# Axis of the packed tokens in each token-carrying kind, and which token count ("q" or "k") it has.
_TOKEN_AXES = {"packed_q": (0, "q"), "packed_out": (0, "q"), "packed_lse": (1, "q"), "packed_k": (0, "k"),
               "packed_v": (0, "k")}


def _join_tokens(x, axis: int):
    """(V, ..., T, ...) -> (..., V * T, ...): the elements' tokens one after another."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape((*x.shape[:axis], -1, *x.shape[axis + 2:]))


def _split_tokens(x, axis: int, axis_size: int):
    """The inverse of _join_tokens."""
    x = x.reshape((*x.shape[:axis], axis_size, -1, *x.shape[axis + 1:]))
    return jnp.moveaxis(x, axis, 0)


def _join_offsets(cu_seqlens, seqused, total: int):
    """(V, N + 1) offsets and (V, N) used lengths of V packs of `total` tokens -> (V * N + 1,) and (V * N,)
    over the packs one after another.

    Each pack's offsets are clamped to [0, total] (as the kernels clamp them) and its used lengths to its
    sequences' spans, before the shift by the pack's start: the last sequence of a pack then ends where
    it ended alone, and the rows up to the next pack's first sequence stay outside every sequence.
    """
    axis_size = cu_seqlens.shape[0]
    cu = jnp.clip(cu_seqlens, 0, total)
    spans = jnp.maximum(cu[:, 1:] - cu[:, :-1], 0)
    used = jnp.clip(seqused, 0, spans)
    starts = cu[:, :-1] + (jnp.arange(axis_size, dtype=cu.dtype) * total)[:, None]
    end = jnp.full((1,), axis_size * total, cu.dtype)
    return jnp.concatenate([starts.reshape(-1), end]), used.reshape(-1)


def concat_vmap(call, arg_kinds, out_kinds):
    """custom_vmap of a packed call(*arrays, static): the vmapped elements' tokens are concatenated into
    one packed call over all their sequences, and the results split back.

    arg_kinds must include "packed_q", "packed_k", "cu_q", "cu_k", "used_q" and "used_k"; token-carrying
    kinds are those of _TOKEN_AXES.
    """

    def concat(batched_call, axis_size, in_batched, *arrays):
        arrays = _broadcast(axis_size, in_batched, arrays)
        totals = {"q": arrays[arg_kinds.index("packed_q")].shape[1],
                  "k": arrays[arg_kinds.index("packed_k")].shape[1]}
        joined = [_join_tokens(x, _TOKEN_AXES[kind][0]) if kind in _TOKEN_AXES else x
                  for x, kind in zip(arrays, arg_kinds)]
        for side in ("q", "k"):
            cu, used = arg_kinds.index(f"cu_{side}"), arg_kinds.index(f"used_{side}")
            joined[cu], joined[used] = _join_offsets(arrays[cu], arrays[used], totals[side])
        outs = batched_call(*joined)
        return tuple(_split_tokens(o, _TOKEN_AXES[kind][0], axis_size) for o, kind in zip(outs, out_kinds))

    return _vmapped(call, concat)
