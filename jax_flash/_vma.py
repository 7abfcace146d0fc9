"""Varying manual axes: typing values inside the user's jax.shard_map when its checks are on (check_vma=True).

There a value's type says over which manual mesh axes it may differ from device to device. Loop carries must
keep one type from step to step, custom_vjp cotangents must have their primal's type, and an FFI call wants
operands of one type and returns the types it is given (jax.ffi.ffi_call declares results that vary over no
axis unless told). These helpers make the types agree. Outside shard_map, or with check_vma=False, every
value varies over no axis and casting to "varying" does nothing.
"""

from __future__ import annotations

import jax
from jax.sharding import ManualAxisType, NamedSharding, PartitionSpec, get_abstract_mesh


def varying_axes(*arrays) -> frozenset:
    """The manual axes any of the arrays varies over (None entries are skipped)."""
    axes = frozenset()
    for x in arrays:
        if x is not None:
            axes |= jax.typeof(x).mat.varying
    return axes


def vary(x, axes):
    """x (an array or a pytree of arrays) typed to vary over `axes` as well as its own axes: the identity on
    values; jax.lax.pcast(..., to="varying") on the axes a leaf does not vary over yet."""
    def one(leaf):
        missing = tuple(sorted((a for a in axes if a not in jax.typeof(leaf).mat.varying), key=str))
        return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf

    return jax.tree.map(one, x)


def ffi_call(target_name, result_types, *, vmap_method):
    """jax.ffi.ffi_call(target_name, result_types, vmap_method=...) whose results vary over every manual
    axis an operand varies over, the operands cast to that one type first (ffi_call requires it).

    A kernel's result on one device depends on that device's operands, so it varies wherever they do; typed
    invariant, a later transpose would sum it over the devices. result_types: a tuple of ShapeDtypeStruct."""
    def call(*operands, **attributes):
        axes = varying_axes(*operands)
        types = result_types
        if axes:
            operands = vary(operands, axes)
            # A manual axis type needs the mesh it names: shard_map's, whole on each device (P()).
            sharding = NamedSharding(get_abstract_mesh(), PartitionSpec())
            types = tuple(jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=sharding,
                                               manual_axis_type=ManualAxisType(varying=axes))
                          for t in result_types)
        return jax.ffi.ffi_call(target_name, types, vmap_method=vmap_method)(*operands, **attributes)

    return call
