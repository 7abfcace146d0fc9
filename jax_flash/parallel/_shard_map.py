"""shard_map across jax versions: jax.shard_map where it exists, else jax.experimental.shard_map."""

from __future__ import annotations

import jax


def shard_map(f, *, mesh, in_specs, out_specs):
    """f mapped over mesh with manual collectives inside. Replication checks are off: the ring's
    custom_vjp and the kernels' FFI calls carry no replication rules."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(f, mesh, in_specs, out_specs, check_rep=False)
