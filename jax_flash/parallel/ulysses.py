"""All-to-all (Ulysses) context parallelism: trade the sequence split for a head split around attention.

Each rank holds n rows of every head. One all-to-all gives it all P * n rows of H / P heads; attention
runs on whole sequences (jax_flash.flash_attention / flash_attention_varlen, so any mask they support);
a second all-to-all returns the output to the sequence split. The all-to-alls are linear, so autodiff
of lax.all_to_all gives the backward. The gathered rows arrive in layout order and are put back into
natural order before attention (a static permutation for dense input, a device gather for packed).

Heads: Hq must be a multiple of P. Kv heads are split the same way when Hk is a multiple of P; when P is
a multiple of Hk each kv head is repeated P / Hk times first (rank p's query heads all read one kv head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jax_flash
from jax_flash import reference
from jax_flash.ops import _sinks
from jax_flash.ops._config import SUPPORTED_DTYPES
from jax_flash.parallel import _args
from jax_flash.parallel.layouts import from_layout, to_layout
from jax_flash.parallel.varlen_layouts import varlen_from_layout, varlen_to_layout


def ulysses_attention(q, k, v, *, axis_name, causal=False, layout="contiguous", window=None, softcap=None,
                      scale=None, return_lse=False, deterministic=False, implementation=None, sinks=None):
    """Attention over a sequence sharded along `axis_name` by two all-to-alls; call it inside shard_map.

    Args:
      q: (B, n, Hq, D), this rank's n rows of a sequence of P * n tokens in `layout` (layouts.py);
        k (B, n, Hk, D), v (B, n, Hk, Dv). Hq must be a multiple of P; Hk a multiple or a divisor of P.
      causal, window, softcap, scale, deterministic, implementation: as jax_flash.flash_attention over the
        whole sequence (float32 / float64 inputs run the reference; "cuda" needs fp16 / bf16).
      layout: "contiguous" (default; no reordering), "zigzag" or "striped".
      return_lse: also return lse (B, Hq, n) float32.
      sinks: None or (Hq,) float attention sinks as flash_attention's, the same on every rank (replicated);
        each rank applies its own heads' sinks.

    Returns:
      out (B, n, Hq, Dv) [, lse]. Differentiable, in sinks too.
    """
    _args.check_arrays(q, k, v, packed=False)
    attrs = _args.check_attributes(q, causal=causal, layout=layout, window=window, softcap=softcap,
                                   scale=scale, return_lse=return_lse, deterministic=deterministic)
    size = _args.axis_size(axis_name)
    _sinks.check_sinks(sinks, q.shape[-2])
    k, v = _split_heads(q, k, v, size)
    if layout == "zigzag" and q.shape[1] % 2:
        raise ValueError(f"layout 'zigzag' needs an even number of local rows, got q {q.shape}")

    def gather(x):  # (B, n, H, D) -> whole sequence, natural order, H / P heads
        x = jax.lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True)
        return from_layout(x, size, layout, axis=1)

    qg, kg, vg = gather(q), gather(k), gather(v)
    kw = dict(window=attrs.window, softcap=attrs.softcap, scale=attrs.scale,
              sinks=_local_heads(sinks, qg.shape[-2], axis_name))
    if _kernel_dtype(q, implementation):
        out, lse = jax_flash.flash_attention(qg, kg, vg, return_lse=True, deterministic=deterministic,
                                             implementation=implementation, **kw)
    else:
        out, lse = reference.attention(qg, kg, vg, return_lse=True, **kw)
    out = jax.lax.all_to_all(to_layout(out, size, layout, axis=1), axis_name, split_axis=1, concat_axis=2,
                             tiled=True)
    if not return_lse:
        return out
    lse = jax.lax.all_to_all(to_layout(lse, size, layout, axis=2), axis_name, split_axis=2, concat_axis=1,
                             tiled=True)
    return out, lse


def ulysses_attention_varlen(q, k, v, cu_seqlens, *, axis_name, seqused=None, max_seqlen=None, causal=False,
                             layout="contiguous", window=None, softcap=None, scale=None, return_lse=False,
                             deterministic=False, implementation=None, sinks=None):
    """Ulysses attention over packed sequences (THD) split across `axis_name`.

    Args:
      q: (T, Hq, D) this rank's rows in layout order (varlen_layouts.py); k (T, Hk, D), v (T, Hk, Dv).
      cu_seqlens: (N + 1,) int32 global offsets, every span a multiple of P (2P for zigzag); seqused (N,)
        int32 global used lengths or None; max_seqlen: static bound on the spans (default: all P * T rows).
      Other arguments as ulysses_attention; masks apply per sequence as in flash_attention_varlen.

    Returns:
      out (T, Hq, Dv) [, lse (Hq, T)]; padding rows get 0 / -inf and zero gradients.
    """
    _args.check_arrays(q, k, v, packed=True)
    _args.check_packed_metadata(cu_seqlens, seqused, max_seqlen)
    attrs = _args.check_attributes(q, causal=causal, layout=layout, window=window, softcap=softcap,
                                   scale=scale, return_lse=return_lse, deterministic=deterministic)
    size = _args.axis_size(axis_name)
    _sinks.check_sinks(sinks, q.shape[-2])
    k, v = _split_heads(q, k, v, size)
    total = q.shape[0] * size
    max_seqlen = total if max_seqlen is None else max_seqlen

    def gather(x):  # (T, H, D) -> all rows, natural order, H / P heads
        x = jax.lax.all_to_all(x, axis_name, split_axis=1, concat_axis=0, tiled=True)
        return varlen_from_layout(x, cu_seqlens, size, layout)

    qg, kg, vg = gather(q), gather(k), gather(v)
    kw = dict(seqused_q=seqused, seqused_k=seqused, window=attrs.window, softcap=attrs.softcap,
              scale=attrs.scale, sinks=_local_heads(sinks, qg.shape[-2], axis_name))
    if _kernel_dtype(q, implementation):
        out, lse = jax_flash.flash_attention_varlen(qg, kg, vg, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                                    return_lse=True, deterministic=deterministic,
                                                    implementation=implementation, **kw)
    else:
        out, lse = reference.attention_varlen(qg, kg, vg, cu_seqlens, cu_seqlens, return_lse=True, **kw)
    out = varlen_to_layout(out, cu_seqlens, size, layout)
    out = jax.lax.all_to_all(out, axis_name, split_axis=0, concat_axis=1, tiled=True)
    if not return_lse:
        return out
    lse = varlen_to_layout(lse.T, cu_seqlens, size, layout)
    return out, jax.lax.all_to_all(lse, axis_name, split_axis=0, concat_axis=1, tiled=True).T


def _local_heads(sinks, heads: int, axis_name):
    """The sinks of this rank's heads after the all-to-all: rank p holds heads [p * heads, (p + 1) * heads)."""
    if sinks is None:
        return None
    return jax.lax.dynamic_slice_in_dim(sinks, jax.lax.axis_index(axis_name) * heads, heads)


def _split_heads(q, k, v, size):
    """k, v ready for the head split: repeated so that P divides their heads when P is a multiple of Hk."""
    hq, hk = q.shape[-2], k.shape[-2]
    if hq % size:
        raise ValueError(f"ulysses attention splits heads over the {size} ranks: query heads ({hq}) must be a "
                         f"multiple of {size}")
    if hk % size == 0:
        return k, v
    if size % hk:
        raise ValueError(f"ulysses attention: kv heads ({hk}) must be a multiple or a divisor of the axis "
                         f"size {size}")
    return jnp.repeat(k, size // hk, axis=-2), jnp.repeat(v, size // hk, axis=-2)


def _kernel_dtype(q, implementation) -> bool:
    """True when the ops take q's dtype (fp16 / bf16); other floats run the reference, never "cuda"."""
    if jnp.dtype(q.dtype) in SUPPORTED_DTYPES:
        return True
    if implementation == "cuda":
        raise TypeError(f"implementation='cuda' needs float16 or bfloat16 inputs, got {q.dtype}")
    return False
