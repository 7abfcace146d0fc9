"""shard_map across jax versions: jax.shard_map where it exists, else jax.experimental.shard_map."""

from __future__ import annotations

import jax


def shard_map(f, *, mesh, in_specs, out_specs, check_vma: bool = True):
    """f mapped over mesh with manual collectives inside. check_vma: shard_map's type checks of how values
    vary over the mesh axes, on by default as in jax.shard_map; the ring and Ulysses code type their values
    to pass them (jax_flash/_vma.py) and run the same with them off."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma)
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(f, mesh, in_specs, out_specs, check_rep=check_vma)
