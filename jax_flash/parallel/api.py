"""context_parallel_attention: the shard_map around ring / Ulysses attention, for callers that use jit."""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from jax_flash.parallel._shard_map import shard_map
from jax_flash.parallel.layouts import check_layout
from jax_flash.parallel.ring import ring_attention, ring_attention_varlen
from jax_flash.parallel.ulysses import ulysses_attention, ulysses_attention_varlen

STRATEGIES = ("ring", "ulysses")


def context_parallel_attention(q, k, v, *, mesh, axis, strategy="ring", layout="zigzag", causal=False,
                               window=None, softcap=None, scale=None, return_lse=False, deterministic=False,
                               implementation=None, cu_seqlens=None, seqused=None, max_seqlen=None,
                               batch_axis=None, head_axis=None, sinks=None):
    """Attention on global arrays whose sequence axis is sharded over the mesh axis `axis`.

    The arrays must already be in *layout order* (see layouts.to_layout / varlen_layouts.varlen_to_layout,
    and layout_positions / varlen_layout_positions for position ids): split into P equal contiguous
    shards, shard r must hold rank r's rows of the layout. The result is in the same order and sharding.

    Args:
      q, k, v: dense (B, S, H, D) sharded as P(batch_axis, axis, head_axis), or packed (T, H, D) sharded
        as P(axis, head_axis) with cu_seqlens given.
      mesh: the jax.sharding.Mesh; axis: the name of its sequence axis (P = its size).
      strategy: "ring" (ring_attention: K/V passed round; any head count) or "ulysses" (all-to-all over
        heads: H divisible by P).
      layout: "zigzag", "contiguous" or "striped" (ring: zigzag balances causal work; ulysses: any).
      causal, window, softcap, scale, return_lse, deterministic, implementation: as flash_attention.
      cu_seqlens, seqused, max_seqlen: packed sequences, as ring_attention_varlen (global, replicated).
      batch_axis, head_axis: mesh axes the batch / heads are also sharded over, or None.
      sinks: None or (Hq,) float attention sinks, as flash_attention's; split over head_axis with the heads.

    Returns:
      out shaped and sharded like q (Dv last) [, lse (B, H, S) / (H, T)].
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    check_layout(layout)
    kw = dict(axis_name=axis, causal=causal, layout=layout, window=window, softcap=softcap, scale=scale,
              return_lse=return_lse, deterministic=deterministic, implementation=implementation)
    if cu_seqlens is None:
        attend = ring_attention if strategy == "ring" else ulysses_attention
        spec, lse_spec = P(batch_axis, axis, head_axis), P(batch_axis, head_axis, axis)
        def fn(q, k, v, sinks):
            return attend(q, k, v, sinks=sinks, **kw)

        args, in_specs = (q, k, v, sinks), (spec, spec, spec, P(head_axis))
    else:
        attend = ring_attention_varlen if strategy == "ring" else ulysses_attention_varlen
        spec, lse_spec = P(axis, head_axis), P(head_axis, axis)

        def fn(q, k, v, cu_seqlens, seqused, sinks):
            return attend(q, k, v, cu_seqlens, seqused=seqused, max_seqlen=max_seqlen, sinks=sinks, **kw)

        args, in_specs = (q, k, v, cu_seqlens, seqused, sinks), (spec, spec, spec, P(), P(), P(head_axis))
    out_specs = (spec, lse_spec) if return_lse else spec
    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(*args)
