"""Pure-JAX attention: the semantic definition of every op, the CPU/TPU fallback and the test oracle.

Independent of the CUDA kernels on purpose: it materialises the full score matrix in float32 (HIGHEST
precision), which is slow and memory hungry but leaves no room for doubt. See DESIGN.md "Semantics".

Layout is BSHD: q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["attention", "attention_bwd_from_lse", "attention_varlen", "attention_varlen_bwd_from_lse",
           "attention_with_lse", "gather_pages", "naive_attention", "naive_attention_varlen",
           "naive_paged_attention", "paged_attention", "varlen_mask", "visible_mask"]


def _window_bounds(causal, window):
    """Normalises (causal, window) to (left, right); None means unbounded on that side."""
    if window is None:
        left, right = None, None
    else:
        try:
            left, right = window
        except (TypeError, ValueError):
            raise ValueError(f"window must be None or a pair (left, right), got {window!r}") from None
        left = None if left is None or left == -1 else int(left)
        right = None if right is None or right == -1 else int(right)
        for name, side in (("left", left), ("right", right)):
            if side is not None and side < 0:
                raise ValueError(f"window {name} must be >= 0, or -1/None for unbounded, got {window!r}")
    if causal:
        right = 0  # right >= 0 always here, so min(right, 0) == 0
    return left, right


def _is_visible(q_idx, k_idx, sq, sk, left, right):
    """Bottom-right aligned visibility of key k_idx to query q_idx; broadcasts, works on traced values."""
    pos = q_idx + (sk - sq)  # the query's position on the key axis
    ok = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_idx), jnp.shape(k_idx)), dtype=bool)
    if left is not None:
        ok = ok & (k_idx >= pos - left)
    if right is not None:
        ok = ok & (k_idx <= pos + right)
    return ok


def visible_mask(sq, sk, causal=False, window=None):
    """Boolean (sq, sk) mask: True where query i may attend to key j.

    Query i sits at key position p = i + sk - sq (bottom-right alignment); window=(left, right) keeps keys
    in [p - left, p + right] (None or -1 = unbounded side); causal=True sets right = 0.
    """
    left, right = _window_bounds(causal, window)
    q_idx = jnp.arange(sq)[:, None]
    k_idx = jnp.arange(sk)[None, :]
    return _is_visible(q_idx, k_idx, sq, sk, left, right)


def _check_inputs(q, k, v):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise ValueError(f"{name} must have rank 4 (batch, seqlen, heads, head_dim), got shape {jnp.shape(x)}")
    (b, _, hq, d), (bk, sk, hk, dk), (bv, skv, hv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv):
        raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}, v {v.shape}")
    if d != dk:
        raise ValueError(f"q and k head dims differ: q {q.shape}, k {k.shape}")
    if (sk, hk) != (skv, hv):
        raise ValueError(f"k and v must agree on (seqlen, heads): k {k.shape}, v {v.shape}")
    if hk == 0 or hq % hk != 0:
        raise ValueError(f"q heads ({hq}) must be a multiple of k/v heads ({hk})")


def _attend(q, k, v, *, causal, window, softcap, scale, compute_dtype, precision, mask=None, sinks=None):
    """Masked softmax attention in compute_dtype. Returns out (B, Sq, Hq, Dv) and lse (B, Hq, Sq).

    Rows with no visible key come out as out = 0, lse = -inf, with zero (finite) gradients: the row max
    and the normaliser are replaced by safe values before they are used, so no inf - inf or 0/0 is formed.
    sinks (Hq,): one more score per query head, a raw logit in the normaliser with no value; a row with no
    visible key then gets out 0 and lse = sinks[h].
    """
    _check_inputs(q, k, v)
    _, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if softcap is not None and softcap < 0:
        raise ValueError(f"softcap must be None, 0 (off) or positive, got {softcap}")

    q, k, v = (x.astype(compute_dtype) for x in (q, k, v))
    group = hq // hk
    k = jnp.repeat(k, group, axis=2)  # query head h reads kv head h // group
    v = jnp.repeat(v, group, axis=2)

    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision) * scale
    if softcap:  # None or 0 means no capping, as in FlashAttention
        s = softcap * jnp.tanh(s / softcap)
    if mask is None:
        mask = visible_mask(sq, sk, causal, window)  # (Sq, Sk), broadcast over (B, H)
    s = jnp.where(mask, s, -jnp.inf)

    row_max = jnp.max(s, axis=-1, keepdims=True, initial=-jnp.inf)  # initial: Sk may be 0
    if sinks is not None:
        sink = sinks.astype(compute_dtype)[:, None, None]  # (Hq, 1, 1), broadcast over (B, Hq, Sq, 1)
        row_max = jnp.maximum(row_max, sink)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0))
    p = jnp.exp(s - row_max)  # exactly 0 where masked
    denom = jnp.sum(p, axis=-1, keepdims=True)
    if sinks is not None:
        denom = denom + jnp.exp(sink - row_max)
    empty = denom == 0
    denom = jnp.where(empty, 1, denom)

    out = jnp.einsum("bhqk,bkhd->bqhd", p / denom, v, precision=precision)
    lse = jnp.where(empty, -jnp.inf, row_max + jnp.log(denom))[..., 0]
    return out, lse


def attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None, return_lse=False, sinks=None):
    """Reference attention in float32 at HIGHEST matmul precision.

    Args:
      q: (B, Sq, Hq, D); k: (B, Sk, Hk, D); v: (B, Sk, Hk, Dv), with Hq % Hk == 0.
      causal: mask keys after the query's (bottom-right aligned) position.
      window: None or (left, right); -1 or None on a side means unbounded.
      softcap: None (or 0) for none, else c > 0: scores become c * tanh(s / c).
      scale: score scale, default 1 / sqrt(D).
      return_lse: also return the log-sum-exp of the scores.
      sinks: None or (Hq,) float: attention sinks, an extra score column per query head, a raw logit (not
        scaled, not capped) in the softmax normaliser with no value; included in lse.

    Returns:
      out (B, Sq, Hq, Dv) in q.dtype, and with return_lse the lse (B, Hq, Sq) in float32 (float64 when the
      inputs are float64, so tests may run the oracle in double precision on CPU). Rows with no visible
      key give out 0 and lse -inf (with sinks: lse = sinks[h]).
    """
    compute_dtype = jnp.promote_types(jnp.float32, q.dtype)
    out, lse = _attend(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
                       compute_dtype=compute_dtype, precision=jax.lax.Precision.HIGHEST, sinks=sinks)
    out = out.astype(q.dtype)
    return (out, lse) if return_lse else out


def attention_with_lse(q, k, v, *, causal=False, window=None, softcap=None, scale=None, sinks=None):
    """attention(..., return_lse=True): (out (B, Sq, Hq, Dv) in q.dtype, lse (B, Hq, Sq) float32)."""
    return attention(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale, return_lse=True,
                     sinks=sinks)


def naive_attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None, return_lse=False,
                    sinks=None):
    """The same math as attention() but carried out in the input dtype at default precision.

    This is the "naive" term of the test oracle (DESIGN.md): it measures how far plain low-precision XLA
    attention drifts from the fp32 reference, which sets the error budget for the kernels. Shapes and
    masking as in attention(); lse is returned as float32.
    """
    out, lse = _attend(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
                       compute_dtype=q.dtype, precision=None, sinks=sinks)
    out = out.astype(q.dtype)
    return (out, lse.astype(jnp.float32)) if return_lse else out


def _token_positions(cu_seqlens, seqused, total):
    """For each of `total` packed rows: (sequence id, index inside the sequence, is it a used row).

    Offsets are clamped to [0, total], as the kernels clamp them on the device."""
    cu_seqlens = jnp.clip(cu_seqlens, 0, total)
    rows = jnp.arange(total)
    seq = jnp.clip(jnp.searchsorted(cu_seqlens, rows, side="right") - 1, 0, cu_seqlens.shape[0] - 2)
    index = rows - cu_seqlens[seq]
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    used = lengths if seqused is None else jnp.minimum(seqused, lengths)
    valid = (rows < cu_seqlens[-1]) & (index >= 0) & (index < used[seq])  # index < 0: rows before cu[0]
    return seq, index, valid, used


def varlen_mask(cu_seqlens_q, cu_seqlens_k, total_q, total_k, *, seqused_q=None, seqused_k=None,
                causal=False, window=None):
    """Boolean (Tq, Tk): True where packed query row t may attend to packed key row u.

    Both rows must be used rows of the same sequence i (rows [cu[i], cu[i] + seqused[i]); seqused
    defaults to the sequence's span and is clipped to it), and inside the bottom-right aligned window
    computed with that sequence's used lengths.
    """
    left, right = _window_bounds(causal, window)
    seq_q, i, valid_q, used_q = _token_positions(cu_seqlens_q, seqused_q, total_q)
    seq_k, j, valid_k, used_k = _token_positions(cu_seqlens_k, seqused_k, total_k)
    same = seq_q[:, None] == seq_k[None, :]
    sq, sk = used_q[seq_q][:, None], used_k[seq_q][:, None]
    visible = _is_visible(i[:, None], j[None, :], sq, sk, left, right)
    return same & valid_q[:, None] & valid_k[None, :] & visible


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, seqused_q=None, seqused_k=None, causal=False,
                     window=None, softcap=None, scale=None, return_lse=False, sinks=None):
    """Reference attention over packed sequences (THD), float32 math.

    Args:
      q: (Tq, Hq, D); k: (Tk, Hk, D); v: (Tk, Hk, Dv).
      cu_seqlens_q, cu_seqlens_k: (N + 1,) int32, non-decreasing offsets of each sequence's rows.
      seqused_q, seqused_k: optional (N,) int32, rows of sequence i actually used, counted from
        cu_seqlens[i]; the rest up to cu_seqlens[i + 1] is padding.
      Other arguments as in attention() (sinks included), applied per sequence.

    Returns:
      out (Tq, Hq, Dv) in q.dtype [, lse (Hq, Tq)]. Padding rows, rows after cu_seqlens_q[-1] and rows with
      no visible key give out 0 and lse -inf (with sinks: lse = sinks[h]).
    """
    mask = varlen_mask(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], seqused_q=seqused_q,
                       seqused_k=seqused_k, causal=causal, window=window)
    compute_dtype = jnp.promote_types(jnp.float32, q.dtype)
    out, lse = _attend(q[None], k[None], v[None], causal=False, window=None, softcap=softcap, scale=scale,
                       compute_dtype=compute_dtype, precision=jax.lax.Precision.HIGHEST, mask=mask, sinks=sinks)
    out = out[0].astype(q.dtype)
    return (out, lse[0]) if return_lse else out


def naive_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, seqused_q=None, seqused_k=None,
                           causal=False, window=None, softcap=None, scale=None, return_lse=False, sinks=None):
    """attention_varlen carried out in the input dtype at default precision: the "naive" term of the test
    oracle for packed sequences, as naive_attention is for dense. Same arguments, mask and padding rules
    as attention_varlen; lse is returned as float32."""
    mask = varlen_mask(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], seqused_q=seqused_q,
                       seqused_k=seqused_k, causal=causal, window=window)
    out, lse = _attend(q[None], k[None], v[None], causal=False, window=None, softcap=softcap, scale=scale,
                       compute_dtype=q.dtype, precision=None, mask=mask, sinks=sinks)
    out = out[0].astype(q.dtype)
    return (out, lse[0].astype(jnp.float32)) if return_lse else out


def _bwd_from_lse(q, k, v, out, lse, dout, dlse, mask, *, softcap, scale):
    """Attention gradients (dq, dk, dv) from the out and lse of the query rows, BSHD, float32 math.

    The one definition of the backward from the LSE (see attention_bwd_from_lse). mask (Sq, Sk) or
    broadcastable to (B, Hq, Sq, Sk). Rows whose lse is -inf (no visible key) get P = 0: exp is taken of
    -inf, never of inf - inf, so their gradients are 0, never NaN.
    """
    _check_inputs(q, k, v)
    compute_dtype = jnp.promote_types(jnp.float32, q.dtype)
    q, k, v, out, dout = (x.astype(compute_dtype) for x in (q, k, v, out, dout))
    lse, dlse = lse.astype(compute_dtype), dlse.astype(compute_dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    hq, hk = q.shape[2], k.shape[2]
    group = hq // hk
    k_rep, v_rep = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)  # query head h reads h // group
    highest = jax.lax.Precision.HIGHEST

    s = jnp.einsum("bqhd,bkhd->bhqk", q, k_rep, precision=highest) * scale
    if softcap:
        tanh = jnp.tanh(s / softcap)
        s = softcap * tanh
    visible = mask & jnp.isfinite(lse)[..., None]
    p = jnp.exp(jnp.where(visible, s - jnp.where(visible, lse[..., None], 0.0), -jnp.inf))

    dv = jnp.einsum("bhqk,bqhe->bkhe", p, dout, precision=highest)
    dp = jnp.einsum("bqhe,bkhe->bhqk", dout, v_rep, precision=highest)
    delta = jnp.einsum("bqhe,bqhe->bhq", dout, out, precision=highest) - dlse
    ds = p * (dp - delta[..., None])
    if softcap:
        ds = ds * (1.0 - tanh * tanh)
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k_rep, precision=highest) * scale
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q, precision=highest) * scale

    def sum_groups(x):  # (B, Sk, Hq, E) -> (B, Sk, Hk, E): each kv head gathers its query heads
        return x.reshape(*x.shape[:2], hk, group, x.shape[-1]).sum(axis=3)

    return dq, sum_groups(dk), sum_groups(dv)


def attention_bwd_from_lse(q, k, v, out, lse, dout, dlse, *, causal=False, window=None, softcap=None,
                           scale=None):
    """Gradients of attention given the out and lse of the query rows, in float32 (float64 for float64).

    With s the (scaled, capped) scores: P = exp(s - lse) where visible, dV = P^T dO, dP = dO V^T,
    dS = P (dP - delta) with delta = rowsum(dO * out) - dlse, through the softcap (ds/ds_raw = 1 - tanh^2),
    dQ = scale dS K, dK = scale dS^T Q. dlse is the cotangent of lse.

    out and lse need not come from these keys alone: given the out and lse of the query rows over a
    larger key set (a ring's merged result), P is the globally normalised probability and the gradients
    of blocks over disjoint key sets add up to the whole one's (jax_flash.parallel). Given this call's own
    out and lse it equals the VJP of attention(..., return_lse=True).

    Args:
      q, k, v: as attention(); out (B, Sq, Hq, Dv), lse (B, Hq, Sq), dout like out, dlse like lse.
      causal, window, softcap, scale: as attention().

    Returns:
      dq, dk, dv shaped like q, k, v; dk / dv summed over the query heads of each kv head.
    """
    mask = visible_mask(q.shape[1], k.shape[1], causal, window)
    return _bwd_from_lse(q, k, v, out, lse, dout, dlse, mask, softcap=softcap, scale=scale)


def attention_varlen_bwd_from_lse(q, k, v, out, lse, dout, dlse, cu_seqlens_q, cu_seqlens_k, *,
                                  seqused_q=None, seqused_k=None, causal=False, window=None, softcap=None,
                                  scale=None):
    """attention_bwd_from_lse for packed sequences (THD): out (Tq, Hq, Dv), lse (Hq, Tq); metadata and
    masks as attention_varlen. Padding rows and key rows outside every sequence get zero gradients."""
    mask = varlen_mask(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], seqused_q=seqused_q,
                       seqused_k=seqused_k, causal=causal, window=window)
    grads = _bwd_from_lse(q[None], k[None], v[None], out[None], lse[None], dout[None], dlse[None], mask,
                          softcap=softcap, scale=scale)
    return tuple(g[0] for g in grads)


def gather_pages(cache, page_table, lengths=None):
    """A paged cache read as contiguous sequences: (P, page_size, H, D) and (B, max_pages) page indices ->
    (B, max_pages * page_size, H, D), key j of sequence b being cache[page_table[b, j // page_size],
    j % page_size]. A page index outside [0, P) reads as a page of zeros (never out of bounds). With
    lengths (B,), keys j >= lengths[b] read as zeros too: slots a serving loop never wrote may hold anything,
    NaN included, and a masked key times a NaN value would still be NaN."""
    num_pages, page_size = cache.shape[:2]
    batch, max_pages = page_table.shape
    valid = (page_table >= 0) & (page_table < num_pages)
    # Index P is out of range for every P (even 0) and is not a negative index JAX would wrap around.
    pages = jnp.asarray(cache).at[jnp.where(valid, page_table, num_pages)].get(mode="fill", fill_value=0)
    pages = pages.reshape(batch, max_pages * page_size, *cache.shape[2:])
    if lengths is None:
        return pages
    written = jnp.arange(max_pages * page_size)[None, :] < jnp.asarray(lengths).reshape(batch, 1)
    return jnp.where(written[:, :, None, None], pages, 0)


def _paged_key_lengths(cache_seqlens, capacity):
    return jnp.clip(cache_seqlens, 0, capacity)


def _paged(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, *, causal, window, softcap, scale,
           compute_dtype, precision, sinks):
    """out (like q, last dim Dv) in compute_dtype and lse: the definition behind paged_attention."""
    left, right = _window_bounds(causal, window)
    capacity = page_table.shape[1] * k_cache.shape[1]
    seqlen_k = _paged_key_lengths(cache_seqlens, capacity)
    keys = jnp.arange(capacity)
    attend = lambda q, k, v, mask: _attend(q, k, v, causal=False, window=None, softcap=softcap,  # noqa: E731
                                           scale=scale, compute_dtype=compute_dtype, precision=precision,
                                           mask=mask, sinks=sinks)
    if cu_seqlens_q is None:
        # Every sequence has Sq queries: one batched call with a per-sequence mask (B, 1, Sq, capacity).
        sq = q.shape[1]
        sk = seqlen_k[:, None, None]
        mask = (keys < sk) & _is_visible(jnp.arange(sq)[:, None], keys[None, :], sq, sk, left, right)
        return attend(q, gather_pages(k_cache, page_table, seqlen_k), gather_pages(v_cache, page_table, seqlen_k),
                      mask[:, None])

    # Packed: one sequence at a time, all Tq rows against that sequence's keys with the rows of other
    # sequences masked, so memory stays at one (Hq, Tq, capacity) score matrix.
    total = q.shape[0]
    seq, index, valid, used = _token_positions(cu_seqlens_q, None, total)

    def one_sequence(carry, xs):
        out, lse = carry
        b, table_row, sk = xs
        rows = valid & (seq == b)
        mask = (rows[:, None] & (keys[None, :] < sk)
                & _is_visible(index[:, None], keys[None, :], used[b], sk, left, right))
        out_b, lse_b = attend(q[None], gather_pages(k_cache, table_row[None], sk[None]),
                              gather_pages(v_cache, table_row[None], sk[None]), mask)
        out = jnp.where(rows[:, None, None], out_b[0], out)
        lse = jnp.where(rows[None, :], lse_b[0], lse)
        return (out, lse), None

    hq, dv = q.shape[1], v_cache.shape[-1]
    init_lse = jnp.full((hq, total), -jnp.inf, compute_dtype)
    if sinks is not None:  # rows outside every sequence see no key: their lse is the sink
        init_lse = jnp.broadcast_to(sinks.astype(compute_dtype)[:, None], (hq, total))
    init = (jnp.zeros((total, hq, dv), compute_dtype), init_lse)
    batch = page_table.shape[0]
    (out, lse), _ = jax.lax.scan(one_sequence, init, (jnp.arange(batch), page_table, seqlen_k))
    return out[None], lse[None]


def paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, *, cu_seqlens_q=None, causal=True,
                    window=None, softcap=None, scale=None, return_lse=False, sinks=None):
    """Reference attention of new queries over a paged KV cache, float32 math at HIGHEST precision.

    Args:
      q: (B, Sq, Hq, D), every sequence having Sq queries; or packed (Tq, Hq, D) with cu_seqlens_q.
      k_cache: (P, page_size, Hk, D); v_cache: (P, page_size, Hk, Dv); Hq % Hk == 0.
      page_table: (B, max_pages) integer page indices of each sequence.
      cache_seqlens: (B,) valid tokens in each sequence's cache, the new queries' own keys included.
        seqlen_k(b) = clip(cache_seqlens[b], 0, max_pages * page_size).
      cu_seqlens_q: optional (B + 1,) int32: sequence b's queries are the packed rows [cu[b], cu[b + 1]),
        offsets clamped to [0, Tq]; rows outside every sequence get out 0 and lse -inf.
      causal: mask keys after each query's position (default True: new tokens attend to the cache).
      window, softcap, scale: as in attention().
      return_lse: also return lse, (B, Hq, Sq) for dense q or (Hq, Tq) for packed q.
      sinks: None or (Hq,) float attention sinks, as in attention().

    Key j < seqlen_k(b) of sequence b is k_cache[page_table[b, j // page_size], j % page_size] (v
    likewise); a page index outside [0, P) reads as a page of zeros, whose keys stay visible (score 0).
    Masks are bottom-right aligned per sequence: query i of a sequence with sq queries sits at key
    position i + seqlen_k(b) - sq. A query that sees no key gets out 0 and lse -inf (with sinks: sinks[h]).

    Returns:
      out (B, Sq, Hq, Dv) or (Tq, Hq, Dv) in q.dtype [, lse in float32 (float64 for float64 inputs)].
    """
    compute_dtype = jnp.promote_types(jnp.float32, q.dtype)
    out, lse = _paged(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, causal=causal,
                      window=window, softcap=softcap, scale=scale, compute_dtype=compute_dtype,
                      precision=jax.lax.Precision.HIGHEST, sinks=sinks)
    if cu_seqlens_q is not None:
        out, lse = out[0], lse[0]
    out = out.astype(q.dtype)
    return (out, lse) if return_lse else out


def naive_paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, *, cu_seqlens_q=None, causal=True,
                          window=None, softcap=None, scale=None, return_lse=False, sinks=None):
    """paged_attention carried out in the input dtype at default precision: the "naive" term of the test
    oracle for the paged cache. Same arguments and semantics; lse is returned as float32."""
    out, lse = _paged(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, causal=causal,
                      window=window, softcap=softcap, scale=scale, compute_dtype=q.dtype, precision=None,
                      sinks=sinks)
    if cu_seqlens_q is not None:
        out, lse = out[0], lse[0]
    out = out.astype(q.dtype)
    return (out, lse.astype(jnp.float32)) if return_lse else out
