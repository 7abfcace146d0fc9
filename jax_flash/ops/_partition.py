"""Sharding and vmap for the opaque kernel calls.

An FFI call is opaque to XLA's partitioner, which would all-gather its inputs. `batch_head_partitioned`
wraps a per-device attention call in `custom_partitioning` so inputs sharded over batch and/or heads stay
where they are (sequence and head-dim axes are gathered: the kernels need them whole). `fold_vmap` wraps
a rank-4 call with `custom_vmap` so a vmapped axis folds into the batch instead of reaching the call.

Operands are described by kinds: "q" (B, Sq, Hq, D) and "out" (B, Sq, Hq, Dv) with query heads,
"k" (B, Sk, Hk, D) and "v" (B, Sk, Hk, Dv) with kv heads, "lse" (B, Hq, Sq).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

_RULE_FACTORS = {"q": "b s h d", "out": "b s h e", "k": "b t k d", "v": "b t k e", "lse": "b h s"}


def _axes_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes)


def _specs(mesh, q_sharding, heads_q: int, heads_k: int):
    """Per-kind PartitionSpecs: keep q's batch and head sharding where the head split is valid."""
    spec = tuple(q_sharding.spec) + (None,) * 4 if isinstance(q_sharding, NamedSharding) else (None,) * 4
    batch_axes, head_axes = spec[0], spec[2]
    n = _axes_size(mesh, head_axes)
    # Query head h reads kv head h // (Hq // Hk): an even split of both head axes keeps the groups
    # local. Otherwise heads are gathered (correct, just not sharded).
    if head_axes is not None and (heads_k % n or heads_q % n):
        head_axes = None
    bshd = P(batch_axes, None, head_axes, None)
    return {"q": bshd, "out": bshd, "k": bshd, "v": bshd, "lse": P(batch_axes, head_axes, None)}


def batch_head_partitioned(call, arg_kinds, out_kinds):
    """custom_partitioning of call(*arrays, static) -> tuple of arrays, split over batch and heads.

    call's last positional argument is a static (hashable) configuration; arrays are rank 4 (rank 3
    for "lse"). The first argument must be of kind "q", and a "k" argument must be present.
    """
    kv_index = arg_kinds.index("k")

    def specs_for(mesh, arg_shapes):
        heads_q = arg_shapes[0].shape[2]
        heads_k = arg_shapes[kv_index].shape[2]
        return _specs(mesh, arg_shapes[0].sharding, heads_q, heads_k)

    def infer(static, mesh, arg_shapes, result_shape):
        specs = specs_for(mesh, arg_shapes)
        return tuple(NamedSharding(mesh, specs[kind]) for kind in out_kinds)

    def partition(static, mesh, arg_shapes, result_shape):
        specs = specs_for(mesh, arg_shapes)
        arg_shardings = tuple(NamedSharding(mesh, specs[kind]) for kind in arg_kinds)
        out_shardings = tuple(NamedSharding(mesh, specs[kind]) for kind in out_kinds)

        def lower(*arrays):
            return call(*arrays, static)

        return mesh, lower, out_shardings, arg_shardings

    rule = (", ".join(_RULE_FACTORS[k] for k in arg_kinds) + " -> "
            + ", ".join(_RULE_FACTORS[k] for k in out_kinds))
    # Sequence and head-dim factors stay whole; Shardy wants them in order of first appearance.
    factors = dict.fromkeys(" ".join(_RULE_FACTORS[k] for k in arg_kinds).split())
    whole = tuple(f for f in factors if f in ("s", "t", "d", "e"))
    wrapped = custom_partitioning(call, static_argnums=(len(arg_kinds),))
    wrapped.def_partition(partition=partition, infer_sharding_from_operands=infer,
                          sharding_rule=rule, need_replication_factors=whole)
    return wrapped


def fold_vmap(call):
    """custom_vmap of call(*arrays, static): vmapped axes fold into the batch axis of every operand."""

    @functools.cache
    def for_static(static):
        @custom_vmap
        def batched_call(*arrays):
            return call(*arrays, static)

        @batched_call.def_vmap
        def rule(axis_size, in_batched, *arrays):
            arrays = [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
                      for x, batched in zip(arrays, in_batched)]
            outs = batched_call(*(x.reshape((-1, *x.shape[2:])) for x in arrays))
            outs = tuple(o.reshape((axis_size, -1, *o.shape[1:])) for o in outs)
            return outs, tuple(True for _ in outs)

        return batched_call

    def folded(*arrays_and_static):
        *arrays, static = arrays_and_static
        return for_static(static)(*arrays)

    return folded
