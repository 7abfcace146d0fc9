"""Context parallelism: exact attention over a sequence split across a mesh axis, on shard_map.

  ring_attention(q, k, v, *, axis_name, ...)            K/V passed round a ring (inside shard_map)
  ring_attention_varlen(q, k, v, cu_seqlens, ...)       the same for packed (THD) sequences
  ulysses_attention(q, k, v, *, axis_name, ...)         all-to-all over heads (inside shard_map)
  ulysses_attention_varlen(q, k, v, cu_seqlens, ...)    the same for packed sequences
  context_parallel_attention(q, k, v, *, mesh, axis, strategy="ring"|"ulysses", ...)
                                                        the shard_map around them, for jit callers
  ring_schedule(P, n, ...)                              the ring's static per-step calls (for work counts)

Layouts ("zigzag", "contiguous", "striped") say which tokens each rank holds; arrays must be in layout
order: to_layout / from_layout (dense), padded_cu_seqlens / pad_packed / varlen_to_layout /
varlen_from_layout (packed), and layout_positions / local_positions / varlen_layout_positions for
position ids (RoPE). For example, with a mesh axis "seq" of P devices:

    q, k, v = (to_layout(x, P, "zigzag") for x in (q, k, v))          # (B, S, H, D), natural -> layout order
    out = jax.jit(lambda q, k, v: context_parallel_attention(
        q, k, v, mesh=mesh, axis="seq", layout="zigzag", causal=True))(q, k, v)
    out = from_layout(out, P, "zigzag")

Inside a model already under shard_map, call ring_attention(q, k, v, axis_name="seq", causal=True) on the
local shards instead (examples/train_cp.py): every function here works in the user's own jax.shard_map, with
its default checks (check_vma=True) or without them.
"""

from jax_flash.parallel.api import context_parallel_attention
from jax_flash.parallel.layouts import (LAYOUTS, chunk_multiple, from_layout, layout_positions, local_positions,
                                        to_layout)
from jax_flash.parallel.ring import ring_attention, ring_attention_varlen, ring_schedule
from jax_flash.parallel.ulysses import ulysses_attention, ulysses_attention_varlen
from jax_flash.parallel.varlen_layouts import (pad_packed, padded_cu_seqlens, unpad_packed, varlen_from_layout,
                                               varlen_layout_positions, varlen_to_layout)

__all__ = ["LAYOUTS", "chunk_multiple", "context_parallel_attention", "from_layout", "layout_positions",
           "local_positions", "pad_packed", "padded_cu_seqlens", "ring_attention", "ring_attention_varlen",
           "ring_schedule", "to_layout", "ulysses_attention", "ulysses_attention_varlen", "unpad_packed",
           "varlen_from_layout", "varlen_layout_positions", "varlen_to_layout"]
