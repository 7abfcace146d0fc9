"""Attention blocks with their LSE, forward and backward: the pieces of code that merges partial results.

jax_flash.parallel splits attention into blocks (local queries against a visiting block of keys), merges the
blocks' (out, lse), and runs each block's backward with the *merged* out and lse of its query rows; then
P = exp(s - lse) is the globally normalised probability and the blocks' gradients add up (the backward from
the LSE: reference.attention_bwd_from_lse). These functions are those blocks, with no custom_vjp: the caller
owns the differentiation. Dense blocks are BSHD, packed blocks THD with cu_seqlens / seqused (never None).

"cuda" runs the kernels through the same wrappers as flash_attention / flash_attention_varlen, so their
sharding (custom_partitioning) and vmap rules apply; "xla" is the reference in float32 for any float dtype
(float64 stays float64), returning out and gradients in that compute dtype.
"""

from __future__ import annotations

import jax.numpy as jnp

from jax_flash import reference
from jax_flash.ops import dense, varlen


def attention_fwd_lse(q, k, v, config, implementation):
    """Dense block forward: q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv), config an AttentionConfig.

    Returns out (B, Sq, Hq, Dv) (q.dtype for "cuda", the compute dtype for "xla") and lse (B, Hq, Sq)
    float32; rows that see no key get out 0 and lse -inf.
    """
    if implementation == "cuda":
        return tuple(dense._fwd_sharded(q, k, v, config))
    return reference.attention(*_compute(q, k, v), window=config.window, softcap=config.softcap,
                               scale=config.scale, return_lse=True)


def attention_bwd_from_lse(q, k, v, out, lse, dout, dlse, config, implementation, deterministic: bool):
    """Dense block backward from the out (B, Sq, Hq, Dv) and lse (B, Hq, Sq) of the query rows over all keys.

    dout is the cotangent of out, dlse (B, Hq, Sq) that of lse. Returns dq, dk, dv shaped like q, k, v
    (q.dtype for "cuda", the compute dtype for "xla"); dk, dv summed over the query heads of each kv head.
    """
    if implementation == "cuda":
        return tuple(dense._bwd_sharded(q, k, v, out.astype(q.dtype), lse, dout.astype(q.dtype),
                                        dlse.astype(jnp.float32), (config, deterministic)))
    return reference.attention_bwd_from_lse(q, k, v, out, lse, dout, dlse, window=config.window,
                                            softcap=config.softcap, scale=config.scale)


def attention_varlen_fwd_lse(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q: int, max_k: int,
                             implementation):
    """Packed block forward: q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv); cu_* (N + 1,), used_* (N,) int32;
    max_* static bounds on the sequence lengths. Returns out (Tq, Hq, Dv), lse (Hq, Tq) float32; rows outside
    every sequence's used rows get 0 / -inf. Masks are bottom-right aligned with the used lengths."""
    if implementation == "cuda":
        return tuple(varlen._fwd(q, k, v, cu_q, cu_k, used_q, used_k, (config, max_q, max_k)))
    return reference.attention_varlen(*_compute(q, k, v), cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                      window=config.window, softcap=config.softcap, scale=config.scale,
                                      return_lse=True)


def attention_varlen_bwd_from_lse(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config,
                                  max_q: int, max_k: int, implementation, deterministic: bool):
    """Packed block backward from the out (Tq, Hq, Dv) and lse (Hq, Tq) of the query rows over all keys:
    dq, dk, dv; rows outside every sequence get zero gradients."""
    if implementation == "cuda":
        return tuple(varlen._bwd(q, k, v, out.astype(q.dtype), lse, dout.astype(q.dtype),
                                 dlse.astype(jnp.float32), cu_q, cu_k, used_q, used_k,
                                 (config, max_q, max_k, deterministic)))
    return reference.attention_varlen_bwd_from_lse(q, k, v, out, lse, dout, dlse, cu_q, cu_k, seqused_q=used_q,
                                                   seqused_k=used_k, window=config.window,
                                                   softcap=config.softcap, scale=config.scale)


def _compute(*xs):
    """The reference's compute dtype: float32, or wider."""
    return tuple(x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in xs)
