"""One attention block of a ring step, forward (returning LSE) and backward (from the global LSE).

A block is a set of local query rows against a set of visiting key rows, with the mask given by an
AttentionConfig (window bottom-right aligned inside the block; causal is window_right = 0). The ring
merges the blocks' (out, lse) into the global result, then runs each block's backward with the *global*
out and lse of its query rows: P = exp(s - lse) is then the globally normalised probability, and
delta = rowsum(dout * out) the global one, so the blocks' gradients simply add up.

Two implementations: "cuda" calls the kernels (jax_flash._ffi), "xla" is pure JAX in float32 and accepts
any float dtype (the CPU path and the test oracle's stand-in). Dense blocks are BSHD, packed blocks THD
with cu_seqlens / seqused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_flash import _ffi, reference
from jax_flash.ops._implementation import choose_implementation

_HIGHEST = jax.lax.Precision.HIGHEST


def choose(implementation, dtype, head_dim: int, head_dim_v: int, packed: bool) -> str:
    """"cuda" or "xla", as jax_flash.ops chooses (dense and packed blocks run on the same kernels)."""
    del packed
    return choose_implementation(implementation, dtype, head_dim, head_dim_v)


def block_fwd(q, k, v, config, implementation):
    """Dense block forward.

    q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv) -> out (B, Sq, Hq, Dv) (q.dtype for cuda,
    float32 for xla), lse (B, Hq, Sq) float32; rows that see no key: out 0, lse -inf.
    """
    if implementation == "cuda":
        return tuple(_ffi.attn_fwd(q, k, v, config))
    return reference.attention(*_f32(q, k, v), window=config.window, softcap=config.softcap,
                               scale=config.scale, return_lse=True)


def block_bwd(q, k, v, out, lse, dout, dlse, config, implementation, deterministic):
    """Dense block backward from the global out (B, Sq, Hq, Dv) and lse (B, Hq, Sq) of the query rows.

    dlse (B, Hq, Sq) is the cotangent of the global lse. Returns dq, dk, dv shaped like q, k, v (q.dtype
    for cuda, float32 for xla); dk/dv summed over the query heads of each kv head.
    """
    if implementation == "cuda":
        return tuple(_ffi.attn_bwd(q, k, v, out, lse, dout.astype(out.dtype), dlse, config,
                                   deterministic))
    mask = reference.visible_mask(q.shape[1], k.shape[1], window=config.window)
    return _bwd_from_lse(q, k, v, out, lse, dout, dlse, mask, config)


def varlen_block_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q: int, max_k: int, implementation):
    """Packed block forward: q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv); cu_* (N + 1,), used_* (N,)
    int32. -> out (Tq, Hq, Dv), lse (Hq, Tq) float32; rows outside every sequence's used rows get 0 / -inf.
    Masks are bottom-right aligned with the used lengths, as in flash_attention_varlen."""
    if implementation == "cuda":
        return tuple(_ffi.attn_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k))
    return reference.attention_varlen(*_f32(q, k, v), cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                      window=config.window, softcap=config.softcap, scale=config.scale,
                                      return_lse=True)


def varlen_block_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config, max_q: int,
                     max_k: int, implementation, deterministic):
    """Packed block backward from the global out (Tq, Hq, Dv) and lse (Hq, Tq): dq, dk, dv."""
    if implementation == "cuda":
        return tuple(_ffi.attn_varlen_bwd(q, k, v, out, lse, dout.astype(out.dtype), dlse, cu_q, cu_k,
                                          used_q, used_k, config, deterministic, max_q, max_k))
    mask = reference.varlen_mask(cu_q, cu_k, q.shape[0], k.shape[0], seqused_q=used_q, seqused_k=used_k,
                                 window=config.window)
    grads = _bwd_from_lse(q[None], k[None], v[None], out[None], lse[None], dout[None], dlse[None], mask,
                          config)
    return tuple(g[0] for g in grads)


def _f32(*xs):
    return tuple(x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in xs)


def _bwd_from_lse(q, k, v, out, lse, dout, dlse, mask, config):
    """Attention backward in float32 given the (global) lse, for BSHD blocks and a (Sq, Sk) mask.

    P = exp(s - lse) where visible, dV = P^T dO, dP = dO V^T, dS = P (dP - delta + dlse) with
    delta = rowsum(dO * O), through the softcap (ds/ds_raw = 1 - tanh^2), dQ = scale dS K, dK = scale dS^T Q.
    Rows with lse = -inf (no visible key) have P = 0: exp is taken of -inf, never of inf - inf.
    """
    q, k, v, out, dout = _f32(q, k, v, out, dout)
    hq, hk = q.shape[2], k.shape[2]
    group = hq // hk
    k_rep, v_rep = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)

    s = jnp.einsum("bqhd,bkhd->bhqk", q, k_rep, precision=_HIGHEST) * config.scale
    if config.softcap:
        tanh = jnp.tanh(s / config.softcap)
        s = config.softcap * tanh
    visible = mask & jnp.isfinite(lse)[..., None]
    p = jnp.exp(jnp.where(visible, s - jnp.where(visible, lse[..., None], 0.0), -jnp.inf))

    dv = jnp.einsum("bhqk,bqhe->bkhe", p, dout, precision=_HIGHEST)
    dp = jnp.einsum("bqhe,bkhe->bhqk", dout, v_rep, precision=_HIGHEST)
    delta = jnp.einsum("bqhe,bqhe->bhq", dout, out, precision=_HIGHEST) - dlse
    ds = p * (dp - delta[..., None])
    if config.softcap:
        ds = ds * (1.0 - tanh * tanh)
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k_rep, precision=_HIGHEST) * config.scale
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q, precision=_HIGHEST) * config.scale

    def sum_groups(x):  # query head h reads kv head h // group
        return x.reshape(*x.shape[:2], hk, group, x.shape[-1]).sum(axis=3)

    return dq, sum_groups(dk), sum_groups(dv)
