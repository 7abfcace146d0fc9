"""Attention over a paged KV cache (decode and chunked prefill) and the cache update: argument checks,
implementation choice and the split-KV heuristic.

Forward only: serving needs no gradient. The "xla" path is the differentiable reference; differentiating
the "cuda" path fails in jax.ffi.ffi_call, which has no JVP rule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp

from jax_flash import _ffi, reference
from jax_flash.ops import _sinks
from jax_flash.ops._config import check_flags, check_paged, check_paged_update
from jax_flash.ops._implementation import choose_implementation
from jax_flash.ops._partition import batch_head_partitioned, map_vmap

# Two resident CTAs on each of the 132 SMs of an H100/H200: fewer CTAs than this leave the GPU part idle,
# so the key range is split until the grid reaches it.
_TARGET_CTAS = 2 * 132
_MAX_AUTO_SPLITS = 64
# Decode over long caches splits on, up to four waves of CTAs with at least 8192 keys per split. Paired
# runs on an H200 (2026-11-22; 4 processes per shape, cuDNN timed alternately in each) put it 0.5-1.5%
# ahead of one wave: B=32 x 32k keys 1.010 -> 1.015 of cuDNN at 4 splits, 32 x 64k 1.001 -> 1.017,
# 64 x 32k 1.011 -> 1.022 at 2, 8 x 128k 1.003 -> 1.015 at 16; shorter splits or more waves gained nothing
# more. benchmark_paged's own comparison at B=32 x 32k read 1.00x either way.
_DECODE_WAVES = 4
_DECODE_MIN_SPLIT_KEYS = 8192
# Decode with a wave of (sequence, kv head) CTAs or more (at least 7/8 of _TARGET_CTAS) over caches of 32k
# keys or more splits in halving parts instead: 1/2, 1/4, ..., the last two equal, down to 512 keys and at
# most 8 parts, every sequence's biggest part launched first. Why: equal parts end together, and the SMs
# stream at different rates (per-CTA timestamps on an H200, B=32 x 32k, one split: CTAs on the slowest SMs
# ended 55 us after those on the fastest, the two CTAs on one SM correlated at 0.96), so the GPU drained for
# the last ~50 us; with halving parts the small ones fill the SMs that finish early. Per-call time on the
# GPU timeline (CUPTI), H200, 2026-11-22, against cuDNN's: B=32 x 32k 1.006 (7 parts) where 4 equal ones
# read 1.000, 64 x 32k 1.019 (2 equal: 1.013), 32 x 128k 1.010 (4 equal: 1.003); but 8k caches lost (32 x 8k
# 0.964 with 5 parts against 1.003 unsplit, 128 x 8k 0.992 against 1.007), hence the 32k floor.
_HALVING_MIN_CTAS_EIGHTHS = 7
_HALVING_MIN_KEYS = 32768
_HALVING_MIN_LAST_KEYS = 512
_HALVING_MAX_SPLITS = 8


def paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, *, cu_seqlens_q=None, max_seqlen_q=None,
                    causal=True, window=None, softcap=None, scale=None, num_splits=None, return_lse=False,
                    implementation=None, sinks=None):
    """Attention of new queries over a paged KV cache (forward only).

    Args:
      q: (B, Sq, Hq, D), Sq queries for every sequence (Sq = 1 for decode); or packed (Tq, Hq, D) with
        cu_seqlens_q and max_seqlen_q (chunked prefill, sequences of different lengths). bfloat16 or float16.
      k_cache: (P, page_size, Hk, D); v_cache: (P, page_size, Hk, Dv); q's dtype; page_size a multiple of 8
        in [8, 256]; Hq a multiple of Hk (query head h reads kv head h // (Hq // Hk)).
      page_table: (B, max_pages) int32: key j of sequence b is k_cache[page_table[b, j // page_size],
        j % page_size] (v likewise). A page index outside [0, P) reads as a page of zeros (those keys
        stay visible, with score 0); it is never read out of bounds. Pages may be shared by sequences.
      cache_seqlens: (B,) int32: valid tokens in each sequence's cache, the new queries' own keys
        included (write them first with paged_kv_update). Clamped to [0, max_pages * page_size].
      cu_seqlens_q: (B + 1,) int32 device array: sequence b's queries are rows [cu[b], cu[b + 1]) of q,
        offsets clamped to [0, Tq]; rows outside every sequence get out 0 and lse -inf.
      max_seqlen_q: static Python int, required with cu_seqlens_q (an upper bound; the kernel schedules
        from Tq, so a wrong bound cannot make it skip rows; each value compiles its own executable).
      causal: mask keys after each query's position (default True). Masks are bottom-right aligned per
        sequence: query i of a sequence with sq queries sits at key position i + seqlen_k - sq.
      window, softcap, scale: as in flash_attention.
      num_splits: None (choose_split_plan) or a static int in [1, 256]: the kernel splits each query
        tile's key range into this many equal parts and combines them in fp32. The automatic choice may
        use halving parts for decode over long caches. Ignored by the reference.
      return_lse: also return the log-sum-exp, (B, Hq, Sq) or packed (Hq, Tq) float32.
      implementation: "cuda", "xla" (the reference) or None (cuda when available), as in flash_attention.
      sinks: None or (Hq,) float attention sinks, as in flash_attention: added once to the combined
        split-KV result (ops/_sinks.py).

    Returns:
      out (B, Sq, Hq, Dv) or (Tq, Hq, Dv) in q's dtype [, lse]. A query that sees no key gets out 0 and
      lse -inf (with sinks: sinks[h]).

    Under sharded jit the kernel runs on each device's shards, with no collective: q, page_table and
    cache_seqlens split over the batch (dense q), q and the caches over kv heads (an even split of both head
    axes). The caches' page axis is whole on every device (any sequence may read any page), or split over
    exactly the batch's mesh axes (data-parallel serving, a block of P / n pages per device): the page table
    keeps global indices and each sequence must use pages of its own device's block, a page of another
    block reading there as a page of zeros. Any other split of the pages raises ValueError at compile time
    (it would gather the whole cache). The automatic split plan is chosen from each device's shapes. Under
    vmap the kernel runs once per element; a cache not vmapped is passed to every call as it is.
    """
    config = check_paged(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, max_seqlen_q, num_splits,
                         causal=causal, window=window, softcap=softcap, scale=scale)
    check_flags(return_lse=return_lse)
    _sinks.check_sinks(sinks, q.shape[-2])
    impl = choose_implementation(implementation, q.dtype, q.shape[-1], v_cache.shape[-1])
    if impl == "xla":
        # config.window already holds the causal bound.
        out, lse = reference.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens,
                                             cu_seqlens_q=cu_seqlens_q, causal=False, window=config.window,
                                             softcap=config.softcap, scale=config.scale, return_lse=True,
                                             sinks=sinks)
    elif cu_seqlens_q is None:
        out, lse = _paged(q, k_cache, v_cache, page_table, cache_seqlens, (config, num_splits))
    else:
        out, lse = _paged_packed(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q,
                                 (config, num_splits, max_seqlen_q))
    if impl != "xla" and sinks is not None:
        out, lse = _sinks.add_sinks(out, lse, sinks)
    return (out, lse) if return_lse else out


def _call(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits, max_seqlen_q):
    """The kernel on one device's operands; the automatic split plan comes from this device's shapes."""
    packed = cu_seqlens_q is not None
    plan = SplitPlan(num_splits) if num_splits is not None else choose_split_plan(
        batch=page_table.shape[0], seqlen_q=q.shape[0] if packed else q.shape[1], num_heads_q=q.shape[-2],
        num_heads_k=k_cache.shape[2], max_pages=page_table.shape[1], page_size=k_cache.shape[1], packed=packed)
    return tuple(_ffi.paged_fwd(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config,
                                plan.num_splits, max_seqlen_q, split_halving=plan.halving))


def _dense_call(q, k_cache, v_cache, page_table, cache_seqlens, static):
    config, num_splits = static
    return _call(q, k_cache, v_cache, page_table, cache_seqlens, None, config, num_splits, None)


def _packed_call(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, static):
    config, num_splits, max_seqlen_q = static
    return _call(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits, max_seqlen_q)


# Under sharded jit: per device, split over batch (dense q only) and kv heads; the caches' pages whole or split
# with the batch (see paged_attention). Under vmap: one call per element, a shared cache passed as it is.
_paged = map_vmap(batch_head_partitioned(
    _dense_call, ("q", "k_cache", "v_cache", "page_table", "cache_seqlens"), ("out", "lse")))
_paged_packed = map_vmap(batch_head_partitioned(
    _packed_call, ("packed_q", "k_cache", "v_cache", "packed_page_table", "packed_cache_seqlens", "cu_q"),
    ("packed_out", "packed_lse")))


class SplitPlan(NamedTuple):
    """How the paged kernel splits each query tile's key range: num_splits parts, equal, or halving (1/2,
    1/4, ..., the last two equal; see _HALVING_MIN_CTAS_EIGHTHS)."""
    num_splits: int
    halving: bool = False


def choose_num_splits(*, batch: int, seqlen_q: int, num_heads_q: int, num_heads_k: int, max_pages: int,
                      page_size: int, packed: bool = False) -> int:
    """The number of parts of choose_split_plan."""
    return choose_split_plan(batch=batch, seqlen_q=seqlen_q, num_heads_q=num_heads_q, num_heads_k=num_heads_k,
                             max_pages=max_pages, page_size=page_size, packed=packed).num_splits


def choose_split_plan(*, batch: int, seqlen_q: int, num_heads_q: int, num_heads_k: int, max_pages: int,
                      page_size: int, packed: bool = False) -> SplitPlan:
    """Split-KV plan for the paged kernel, from static shapes only (the same shapes always launch the
    same grid).

    seqlen_q is Sq for dense q, or Tq (total packed rows) with packed=True. The query heads of one kv head
    are packed along rows, so a CTA covers block_m (query, head) rows of one kv head (the tile of the kernel
    table, _ffi.paged_tile); splitting the key range raises the CTA count towards two per SM without passing
    it, while keeping each split at least 4 key blocks long (the combine costs a pass over fp32 partials)
    and at most 64 splits. Decode over long caches (see _DECODE_WAVES) splits further, up to four such waves
    of CTAs, or, with a wave of CTAs already, into halving parts (see _HALVING_MIN_CTAS_EIGHTHS).
    """
    group = num_heads_q // num_heads_k
    block_m, block_n = _ffi.paged_tile()
    if packed:
        # Each sequence may start a partial tile: at most ceil(rows / block_m) + B tiles.
        m_tiles = math.ceil(seqlen_q * group / block_m) + batch
    else:
        m_tiles = batch * math.ceil(seqlen_q * group / block_m)
    ctas = m_tiles * num_heads_k
    n_blocks = math.ceil(max_pages * page_size / block_n)
    if ctas == 0:
        return SplitPlan(1)
    # Whole waves only: rounding up overshoots into a nearly empty second wave (H100, B=8 decode, 32k cache:
    # 64 CTAs x 5 splits = 320 for 264 slots took 0.600 ms, x 4 splits 0.379 ms).
    one_wave = min(_TARGET_CTAS // ctas, max(n_blocks // 4, 1), _MAX_AUTO_SPLITS)
    decode = _ffi.paged_is_decode(packed, seqlen_q, group)  # the split-key decode kernel
    if not decode:
        return SplitPlan(max(1, one_wave))
    capacity = max_pages * page_size
    if ctas * 8 >= _TARGET_CTAS * _HALVING_MIN_CTAS_EIGHTHS and capacity >= _HALVING_MIN_KEYS:
        # n parts leave 1 / 2^(n - 1) of the keys to each of the last two: at least 512 keys of a full cache.
        parts = (capacity // _HALVING_MIN_LAST_KEYS).bit_length()
        return SplitPlan(min(parts, _HALVING_MAX_SPLITS), halving=True)
    waves = min(_DECODE_WAVES * _TARGET_CTAS // ctas, capacity // _DECODE_MIN_SPLIT_KEYS, _MAX_AUTO_SPLITS)
    return SplitPlan(max(1, one_wave, waves))


def paged_kv_update(k_cache, v_cache, k_new, v_new, page_table, cache_seqlens, *, cu_seqlens_new=None):
    """Writes new tokens' keys and values into a paged cache; returns (k_cache, v_cache).

    Args:
      k_cache: (P, page_size, Hk, D); v_cache: (P, page_size, Hk, Dv), as in paged_attention.
      k_new: (B, S_new, Hk, D), v_new: (B, S_new, Hk, Dv); or packed (T_new, Hk, D) / (T_new, Hk, Dv) with
        cu_seqlens_new (B + 1,) int32 (sequence b's new tokens are rows [cu[b], cu[b + 1]), offsets clamped
        to [0, T_new]). The caches' dtype.
      page_table: (B, max_pages) int32; cache_seqlens: (B,) int32, tokens already in each cache (the
        lengths before this update).

    Token t of sequence b goes to position p = clip(cache_seqlens[b], 0, capacity) + t, capacity =
    max_pages * page_size: page page_table[b, p // page_size], slot p % page_size. A write is dropped when
    p >= capacity, when that page index is outside [0, P), or (packed) when the row lies outside every
    sequence. When two writes land on one slot (pages shared between sequences), which one wins is
    unspecified. The caller advances cache_seqlens (by S_new, or by each packed sequence's length).

    A pure-JAX scatter: jit it with the caches donated, e.g.
    jax.jit(paged_kv_update, donate_argnums=(0, 1)), and XLA updates them in place instead of copying the
    whole cache (on XLA:CPU a bfloat16 scatter still passes through a float32 temporary). Works under jit,
    vmap and grad.
    """
    check_paged_update(k_cache, v_cache, k_new, v_new, page_table, cache_seqlens, cu_seqlens_new)
    num_pages, page_size = k_cache.shape[:2]
    batch = page_table.shape[0]
    capacity = page_table.shape[1] * page_size
    start = jnp.clip(cache_seqlens, 0, capacity)
    if cu_seqlens_new is None:
        steps = k_new.shape[1]
        seq = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, steps))
        position = start[:, None] + jnp.arange(steps)[None, :]
        valid = jnp.ones(position.shape, bool)
    else:
        seq, index, valid, _ = reference._token_positions(cu_seqlens_new, None, k_new.shape[0])
        position = start[seq] + index
    # Positions at or past the capacity fall outside the page table and read -1: dropped below.
    page = jnp.asarray(page_table).at[seq, position // page_size].get(mode="fill", fill_value=-1)
    valid = valid & (page >= 0) & (page < num_pages)
    # A dropped write targets page P: out of range, so mode="drop" skips it.
    page = jnp.where(valid, page, num_pages)
    slot = position % page_size
    k_cache = jnp.asarray(k_cache).at[page, slot].set(k_new, mode="drop")
    v_cache = jnp.asarray(v_cache).at[page, slot].set(v_new, mode="drop")
    return k_cache, v_cache
