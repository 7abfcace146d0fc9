"""The paged-cache reference against an independent construction: each sequence's keys gathered with numpy
into contiguous rows, then dense (reference.attention) or packed (reference.attention_varlen) attention.
Also paged_kv_update against a numpy model of the cache, and update + attention against dense attention
over the whole sequence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import reference

NUM_PAGES = 40


def _table(rng, batch, max_pages, num_pages, *, shared=True, out_of_range=True):
    """A shuffled page table; with `shared`, sequence 1 reuses two of sequence 0's pages; with
    `out_of_range`, a few entries point outside [0, num_pages) (zero pages)."""
    table = rng.permutation(num_pages)[:batch * max_pages].reshape(batch, max_pages).astype(np.int32)
    if shared and batch > 1 and max_pages > 1:
        table[1, :2] = table[0, [1, 0]]
    if out_of_range:
        table[0, -1] = num_pages + 7
        table[-1, 0] = -1
    return table


def _cache(rng, page_size, hk, d, dv, num_pages=NUM_PAGES, dtype=np.float32):
    return (rng.standard_normal((num_pages, page_size, hk, d)).astype(dtype),
            rng.standard_normal((num_pages, page_size, hk, dv)).astype(dtype))


def _keys_of(cache, table_row, length):
    """Sequence keys (length, H, D) gathered token by token, zeros for out-of-range pages."""
    num_pages, page_size = cache.shape[:2]
    rows = []
    for j in range(length):
        page = table_row[j // page_size]
        rows.append(cache[page, j % page_size] if 0 <= page < num_pages else np.zeros(cache.shape[2:], cache.dtype))
    return np.stack(rows) if rows else np.zeros((0, *cache.shape[2:]), cache.dtype)


def _lengths(cache_seqlens, capacity):
    return [int(np.clip(n, 0, capacity)) for n in cache_seqlens]


# Per batch entry: short, empty (0), negative (clamped to 0), exactly full, beyond capacity (clamped).
SEQLENS = {8: [1, 0, 37, -3, 48, 1000], 16: [1, 0, 75, -3, 96, 1000], 64: [1, 0, 130, -3, 384, 1000]}
MAX_PAGES = {8: 6, 16: 6, 64: 6}
ATTRIBUTES = [dict(causal=True), dict(causal=False), dict(causal=True, window=(5, None)),
              dict(causal=False, window=(3, 2), softcap=2.0), dict(causal=True, softcap=1.5, scale=0.3)]
HEADS = [(6, 2, 16, 16), (4, 1, 16, 8)]  # GQA 3 with D == Dv, MQA with D != Dv


@pytest.mark.parametrize("page_size", [8, 16, 64])
@pytest.mark.parametrize("sq", [1, 16])
@pytest.mark.parametrize("attrs", ATTRIBUTES)
@pytest.mark.parametrize("hq, hk, d, dv", HEADS)
def test_dense_queries_match_contiguous_attention(page_size, sq, attrs, hq, hk, d, dv):
    rng = np.random.default_rng(page_size * 100 + sq)
    seqlens = np.array(SEQLENS[page_size], np.int32)
    batch, max_pages = len(seqlens), MAX_PAGES[page_size]
    table = _table(rng, batch, max_pages, NUM_PAGES)
    k_cache, v_cache = _cache(rng, page_size, hk, d, dv)
    q = rng.standard_normal((batch, sq, hq, d)).astype(np.float32)
    out, lse = reference.paged_attention(q, k_cache, v_cache, table, seqlens, return_lse=True, **attrs)
    assert out.shape == (batch, sq, hq, dv) and lse.shape == (batch, hq, sq) and lse.dtype == jnp.float32
    for b, n in enumerate(_lengths(seqlens, max_pages * page_size)):
        keys, values = _keys_of(k_cache, table[b], n), _keys_of(v_cache, table[b], n)
        want, want_lse = reference.attention(q[b:b + 1], keys[None], values[None], return_lse=True, **attrs)
        np.testing.assert_allclose(out[b], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lse[b], want_lse[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("page_size", [8, 16, 64])
@pytest.mark.parametrize("attrs", ATTRIBUTES)
@pytest.mark.parametrize("hq, hk, d, dv", HEADS)
def test_packed_queries_match_varlen_attention(page_size, attrs, hq, hk, d, dv):
    """Chunked prefill: sequences with different query counts (one empty, one with more queries than keys),
    a row before cu_seqlens_q[0] and padding rows after cu_seqlens_q[-1]."""
    rng = np.random.default_rng(page_size)
    seqlens = np.array(SEQLENS[page_size], np.int32)
    batch, max_pages = len(seqlens), MAX_PAGES[page_size]
    capacity = max_pages * page_size
    table = _table(rng, batch, max_pages, NUM_PAGES)
    k_cache, v_cache = _cache(rng, page_size, hk, d, dv)
    counts = [1, 0, 9, 2, 12, 5]  # queries per sequence; sequence 3 has 0 keys, sequence 1 has 0 queries
    cu_q = np.concatenate([[1], 1 + np.cumsum(counts)]).astype(np.int32)
    total_q = int(cu_q[-1]) + 4
    q = rng.standard_normal((total_q, hq, d)).astype(np.float32)
    out, lse = reference.paged_attention(q, k_cache, v_cache, table, seqlens, cu_seqlens_q=cu_q, return_lse=True,
                                         **attrs)
    assert out.shape == (total_q, hq, dv) and lse.shape == (hq, total_q)

    # The same sequences with their keys packed contiguously.
    lengths = _lengths(seqlens, capacity)
    keys = np.concatenate([_keys_of(k_cache, table[b], n) for b, n in enumerate(lengths)])
    values = np.concatenate([_keys_of(v_cache, table[b], n) for b, n in enumerate(lengths)])
    cu_k = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    want, want_lse = reference.attention_varlen(q, keys, values, cu_q, cu_k, return_lse=True, **attrs)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    outside = np.r_[0, cu_q[-1]:total_q]
    assert np.all(np.asarray(out)[outside] == 0) and np.all(np.isneginf(np.asarray(lse)[:, outside]))


def test_packed_offsets_are_clamped_to_the_rows():
    """cu_seqlens_q beyond Tq (and negative) clamp to [0, Tq] as in attention_varlen."""
    rng = np.random.default_rng(3)
    table = _table(rng, 3, 4, NUM_PAGES, out_of_range=False)
    k_cache, v_cache = _cache(rng, 8, 2, 16, 16)
    seqlens = np.array([20, 9, 30], np.int32)
    q = rng.standard_normal((10, 4, 16)).astype(np.float32)
    wild = np.array([-5, 4, 7, 50], np.int32)
    clamped = np.clip(wild, 0, 10)
    out = reference.paged_attention(q, k_cache, v_cache, table, seqlens, cu_seqlens_q=wild)
    want = reference.paged_attention(q, k_cache, v_cache, table, seqlens, cu_seqlens_q=clamped)
    np.testing.assert_array_equal(out, want)
    assert not np.any(np.asarray(out) == 0)  # clamped offsets cover every row


def test_zero_pages_are_visible_keys_with_score_zero():
    """Every page index out of range: n keys of score 0, so lse = log(n) and out = 0 (zero values)."""
    rng = np.random.default_rng(4)
    k_cache, v_cache = _cache(rng, 16, 2, 16, 16, num_pages=3)
    table = np.array([[3, -1, 2**31 - 1], [-(2**31), 5, 3]], np.int32)
    seqlens = np.array([40, 17], np.int32)
    q = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
    out, lse = reference.paged_attention(q, k_cache, v_cache, table, seqlens, return_lse=True)
    assert np.all(np.asarray(out) == 0)
    np.testing.assert_allclose(lse, np.log(seqlens)[:, None, None] * np.ones((2, 4, 1)), rtol=1e-6)


@pytest.mark.parametrize("packed", [False, True])
def test_slots_past_the_lengths_may_hold_nan(packed):
    """Slots a serving loop never wrote (past cache_seqlens) hold anything, NaN included: the answer is the
    same as with any finite values there."""
    rng = np.random.default_rng(8)
    table = _table(rng, 3, 4, NUM_PAGES, shared=False, out_of_range=False)
    k_cache, v_cache = _cache(rng, 8, 2, 16, 8)
    seqlens = np.array([5, 17, 32], np.int32)
    k_nan, v_nan = k_cache.copy(), v_cache.copy()
    for b, n in enumerate(seqlens):
        for j in range(n, table.shape[1] * 8):
            k_nan[table[b, j // 8], j % 8] = np.nan
            v_nan[table[b, j // 8], j % 8] = np.nan
    assert np.isnan(v_nan).any()
    if packed:
        q = rng.standard_normal((9, 4, 16)).astype(np.float32)
        kw = dict(cu_seqlens_q=np.array([0, 2, 2, 9], np.int32), return_lse=True)
    else:
        q = rng.standard_normal((3, 2, 4, 16)).astype(np.float32)
        kw = dict(return_lse=True)
    want = reference.paged_attention(q, k_cache, v_cache, table, seqlens, **kw)
    got = reference.paged_attention(q, k_nan, v_nan, table, seqlens, **kw)
    for w, g in zip(want, got):
        assert np.all(np.isfinite(np.asarray(g)) | np.isneginf(np.asarray(g)))
        np.testing.assert_array_equal(g, w)


def test_rows_without_keys_and_gradients_are_finite():
    rng = np.random.default_rng(5)
    table = _table(rng, 3, 4, NUM_PAGES, out_of_range=False)
    k_cache, v_cache = _cache(rng, 8, 1, 8, 8)
    seqlens = np.array([0, 3, 12], np.int32)
    q = rng.standard_normal((3, 5, 2, 8)).astype(np.float32)  # 5 queries, 3 keys: the first two see none

    def loss(q, k_cache, v_cache):
        out = reference.paged_attention(q, k_cache, v_cache, table, seqlens)
        return jnp.sum(out ** 2)

    out, lse = reference.paged_attention(q, k_cache, v_cache, table, seqlens, return_lse=True)
    out, lse = np.asarray(out), np.asarray(lse)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
    assert np.all(out[1, :2] == 0) and np.all(np.isneginf(lse[1, :, :2])) and np.all(np.isfinite(lse[1, :, 2:]))
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k_cache, v_cache)
    assert all(np.isfinite(g).all() for g in grads)
    assert np.all(np.asarray(grads[0])[0] == 0)


@pytest.mark.parametrize("packed", [False, True])
def test_naive_is_the_same_math_in_the_input_dtype(packed):
    rng = np.random.default_rng(6)
    table = _table(rng, 3, 4, NUM_PAGES)
    k_cache, v_cache = (jnp.asarray(x, jnp.bfloat16) for x in _cache(rng, 16, 2, 32, 16))
    seqlens = np.array([30, 64, 5], np.int32)
    shape, kw = ((13, 4, 32), dict(cu_seqlens_q=np.array([0, 4, 9, 11], np.int32))) if packed else ((3, 4, 4, 32), {})
    q = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    ref, ref_lse = reference.paged_attention(q, k_cache, v_cache, table, seqlens, return_lse=True, **kw)
    naive, naive_lse = reference.naive_paged_attention(q, k_cache, v_cache, table, seqlens, return_lse=True, **kw)
    assert naive.dtype == jnp.bfloat16 and naive_lse.dtype == jnp.float32 and naive.shape == ref.shape
    np.testing.assert_allclose(np.asarray(naive, np.float32), np.asarray(ref, np.float32), atol=0.05)
    np.testing.assert_array_equal(np.isneginf(naive_lse), np.isneginf(ref_lse))


# ---------------------------------------------------------------------------------------------------------
# paged_kv_update


def _update_model(cache, new, table, seqlens, cu_new=None):
    """The cache after the update, written one token at a time."""
    cache = np.array(cache)
    num_pages, page_size = cache.shape[:2]
    capacity = table.shape[1] * page_size
    for b in range(table.shape[0]):
        if cu_new is None:
            tokens = new[b]
        else:
            lo, hi = np.clip(cu_new[b:b + 2], 0, new.shape[0])
            tokens = new[lo:hi]
        for t, token in enumerate(tokens):
            p = int(np.clip(seqlens[b], 0, capacity)) + t
            if p >= capacity:
                continue
            page = table[b, p // page_size]
            if 0 <= page < num_pages:
                cache[page, p % page_size] = token
    return cache


@pytest.mark.parametrize("page_size", [8, 16])
def test_update_writes_each_token_at_its_position(page_size):
    rng = np.random.default_rng(7)
    # No shared pages (two writes to one slot have no defined winner); out-of-range pages drop writes.
    table = _table(rng, 4, 3, NUM_PAGES, shared=False)
    capacity = 3 * page_size
    # Mid-page, crossing a page boundary, near capacity (some writes dropped), beyond capacity, negative.
    seqlens = np.array([page_size - 2, 3, capacity - 2, -4], np.int32)
    k_cache, v_cache = _cache(rng, page_size, 2, 16, 8)
    k_new = rng.standard_normal((4, 5, 2, 16)).astype(np.float32)
    v_new = rng.standard_normal((4, 5, 2, 8)).astype(np.float32)
    k_out, v_out = jax_flash.paged_kv_update(k_cache, v_cache, k_new, v_new, table, seqlens)
    np.testing.assert_array_equal(k_out, _update_model(k_cache, k_new, table, seqlens))
    np.testing.assert_array_equal(v_out, _update_model(v_cache, v_new, table, seqlens))
    # Sequence 2 writes only 2 of its 5 tokens; sequence 3 starts at 0 but its first page is out of range.
    assert table[3, 0] == -1
    touched = np.any(np.asarray(k_out) != k_cache, axis=(1, 2, 3))
    assert touched.sum() == 4


def test_update_packed_drops_rows_outside_every_sequence():
    rng = np.random.default_rng(8)
    table = _table(rng, 3, 4, NUM_PAGES, shared=False, out_of_range=False)
    seqlens = np.array([5, 0, 30], np.int32)
    cu_new = np.array([2, 6, 6, 11], np.int32)  # rows 0-1 and 11-13 belong to no sequence; sequence 1 is empty
    k_cache, v_cache = _cache(rng, 8, 2, 16, 16)
    k_new = rng.standard_normal((14, 2, 16)).astype(np.float32)
    v_new = rng.standard_normal((14, 2, 16)).astype(np.float32)
    k_out, v_out = jax_flash.paged_kv_update(k_cache, v_cache, k_new, v_new, table, seqlens, cu_seqlens_new=cu_new)
    np.testing.assert_array_equal(k_out, _update_model(k_cache, k_new, table, seqlens, cu_new))
    np.testing.assert_array_equal(v_out, _update_model(v_cache, v_new, table, seqlens, cu_new))
    changed = np.asarray(k_out) != k_cache
    assert changed.any(axis=(2, 3)).sum() == 4 + 2  # sequence 0: 4 tokens; sequence 2: 2 of 5 (capacity 32)


@pytest.mark.parametrize("window", [None, (6, 0)])
def test_prefill_then_decode_equals_dense_attention(window):
    """Chunked prefill (packed, sequences of different lengths) then decode steps, each writing its
    tokens before attending, equals causal attention over each whole sequence."""
    rng = np.random.default_rng(9)
    page_size, max_pages, hq, hk, d = 8, 5, 4, 2, 16
    total_lengths = [13, 7, 21]  # prompt + decoded tokens
    prompts = [9, 7, 16]
    batch = len(total_lengths)
    table = _table(rng, batch, max_pages, NUM_PAGES, shared=False, out_of_range=False)
    k_cache, v_cache = _cache(rng, page_size, hk, d, d)  # stale random contents, never zeros
    qs = [rng.standard_normal((n, hq, d)).astype(np.float32) for n in total_lengths]
    ks = [rng.standard_normal((n, hk, d)).astype(np.float32) for n in total_lengths]
    vs = [rng.standard_normal((n, hk, d)).astype(np.float32) for n in total_lengths]
    attend = jax.jit(functools.partial(jax_flash.paged_attention, causal=True, window=window, implementation="xla"),
                     static_argnames="max_seqlen_q")
    update = jax.jit(jax_flash.paged_kv_update, donate_argnums=(0, 1))

    # Prefill in two chunks per sequence.
    seqlens = np.zeros(batch, np.int32)
    outs = [[] for _ in range(batch)]
    for chunk in range(2):
        spans = [(p * chunk // 2, p * (chunk + 1) // 2) for p in prompts]
        cu = np.concatenate([[0], np.cumsum([hi - lo for lo, hi in spans])]).astype(np.int32)
        pick = lambda xs: np.concatenate([x[lo:hi] for x, (lo, hi) in zip(xs, spans)])  # noqa: E731
        k_cache, v_cache = update(jnp.asarray(k_cache), jnp.asarray(v_cache), pick(ks), pick(vs), table, seqlens,
                                  cu_seqlens_new=cu)
        seqlens = seqlens + np.diff(cu).astype(np.int32)
        out = attend(jnp.asarray(pick(qs), jnp.float32).astype(jnp.bfloat16), k_cache.astype(jnp.bfloat16),
                     v_cache.astype(jnp.bfloat16), table, seqlens, cu_seqlens_q=cu, max_seqlen_q=8)
        for b in range(batch):
            outs[b].append(np.asarray(out[cu[b]:cu[b + 1]], np.float32))

    # Decode the rest one token per step (sequences that are done keep decoding: compare only real steps).
    for step in range(max(n - p for n, p in zip(total_lengths, prompts))):
        pos = [min(p + step, n - 1) for p, n in zip(prompts, total_lengths)]
        live = [p + step < n for p, n in zip(prompts, total_lengths)]
        new_k = np.stack([ks[b][pos[b]] for b in range(batch)])[:, None]
        new_v = np.stack([vs[b][pos[b]] for b in range(batch)])[:, None]
        new_q = np.stack([qs[b][pos[b]] for b in range(batch)])[:, None]
        written = np.where(live, seqlens, max_pages * page_size).astype(np.int32)  # finished: dropped writes
        k_cache, v_cache = update(k_cache, v_cache, new_k, new_v, table, written)
        seqlens = seqlens + np.array(live, np.int32)
        out = attend(jnp.asarray(new_q, jnp.bfloat16), k_cache.astype(jnp.bfloat16), v_cache.astype(jnp.bfloat16),
                     table, seqlens)
        for b in range(batch):
            if live[b]:
                outs[b].append(np.asarray(out[b], np.float32))

    for b in range(batch):
        bf = lambda x: jnp.asarray(x, jnp.bfloat16)[None]  # noqa: E731
        want = reference.attention(bf(qs[b]), bf(ks[b]), bf(vs[b]), causal=True, window=window)[0]
        np.testing.assert_allclose(np.concatenate(outs[b]), np.asarray(want, np.float32), atol=1e-2)
