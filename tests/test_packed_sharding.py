"""Packed attention under sharded jit on 8 CPU host devices, through the partitioning code the kernels use:
segment-id attention split over batch and/or heads, varlen over heads, paged attention over batch and/or
heads (caches whole, or their pages split with the batch). The reference stands in for the FFI calls (the
"cuda" path runs with recording fakes), so the custom_partitioning rules run as they do on GPUs. Each case
checks the compiled program (no collective moves q, k, v or the caches), the shapes each device's call sees,
and the results against the unsharded run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_flash
from jax_flash import _ffi, reference
from jax_flash.ops import choose_num_splits

CALLS = []
COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def _varlen_reference(q, k, v, cu_q, cu_k, used_q, used_k, config):
    return reference.attention_varlen(q, k, v, cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                      window=config.window, softcap=config.softcap, scale=config.scale,
                                      return_lse=True)


def fake_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k):
    CALLS.append(("varlen_fwd", q.shape, k.shape, cu_q.shape))
    return _varlen_reference(q, k, v, cu_q, cu_k, used_q, used_k, config)


def fake_varlen_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config, deterministic, max_q,
                    max_k):
    CALLS.append(("varlen_bwd", q.shape, k.shape, cu_q.shape))
    _, vjp = jax.vjp(lambda q, k, v: _varlen_reference(q, k, v, cu_q, cu_k, used_q, used_k, config), q, k, v)
    return vjp((dout, dlse))


def fake_paged_fwd(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits,
                   max_seqlen_q=None, split_halving=False):
    CALLS.append(("paged_fwd", q.shape, k_cache.shape, page_table.shape, num_splits))
    return reference.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q=cu_seqlens_q,
                                     causal=False, window=config.window, softcap=config.softcap,
                                     scale=config.scale, return_lse=True)


@pytest.fixture(autouse=True)
def kernels_replaced_by_reference(monkeypatch):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_ffi, "supported", lambda dtype, d, dv: True)
    monkeypatch.setattr(_ffi, "attn_varlen_fwd", fake_varlen_fwd)
    monkeypatch.setattr(_ffi, "attn_varlen_bwd", fake_varlen_bwd)
    monkeypatch.setattr(_ffi, "paged_fwd", fake_paged_fwd)
    CALLS.clear()


MESH_SHAPE = (2, 4)  # ("data", "model")


def _mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(MESH_SHAPE), ("data", "model"))


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16)


def _put(mesh, x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))


def _assert_stays_local(compiled):
    hlo = compiled.as_text()
    moved = [c for c in COLLECTIVES if c in hlo]
    assert not moved, f"the compiled program moves data between devices: {moved}"


def _assert_close(got, want, tol=2e-2):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert g.shape == w.shape
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w))
        finite = np.isfinite(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=tol, atol=tol)


def _loss_and_grads(attend, dout, dlse):
    """out, lse and the gradients of a loss with both cotangents (the packed backward with the lse term)."""

    def loss(q, k, v):
        out, lse = attend(q, k, v)
        return (jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32))
                + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse) * dlse))

    def step(q, k, v):
        return attend(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    return step


# ---------------------------------------------------------------------------------------------------------
# Segment ids: documents packed along each row of a BSHD batch.

def _segment_ids(batch, seq, seed):
    """(batch, seq) ids: documents of random lengths, padding (0) between some and at the end of each row."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, seq), np.int32)
    for row in range(batch):
        position, doc = int(rng.integers(0, 3)), 1
        while position < seq - 2:
            length = int(rng.integers(1, seq // 3))
            ids[row, position:position + length] = doc
            position += length + int(rng.integers(0, 3))
            doc += 1
    return jnp.asarray(ids)


@pytest.mark.parametrize("spec", [P("data", None, "model", None), P("data", None, None, None),
                                  P(None, None, "model", None)], ids=["batch_heads", "batch", "heads"])
def test_segment_ids_stay_sharded(spec):
    mesh = _mesh()
    b, s, hq, hk, d = 4, 24, 8, 4, 16
    keys = jax.random.split(jax.random.key(0), 5)
    q, k, v, dout = (_normal(keys[0], (b, s, hq, d)), _normal(keys[1], (b, s, hk, d)),
                     _normal(keys[2], (b, s, hk, d)), _normal(keys[3], (b, s, hq, d)))
    dlse = jax.random.normal(keys[4], (b, hq, s), jnp.float32)
    ids = _segment_ids(b, s, seed=1)

    def attend(ids):
        return lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=True, window=(6, 0), segment_ids=ids,
                                                         max_segments=6, return_lse=True, implementation="cuda")

    def step(q, k, v, ids, dout, dlse):
        return _loss_and_grads(attend(ids), dout, dlse)(q, k, v)

    want = jax.jit(step)(q, k, v, ids, dout, dlse)
    CALLS.clear()
    ids_spec, lse_spec = P(spec[0], None), P(spec[0], spec[2], None)
    args = (_put(mesh, q, spec), _put(mesh, k, spec), _put(mesh, v, spec), _put(mesh, ids, ids_spec),
            _put(mesh, dout, spec), _put(mesh, dlse, lse_spec))
    compiled = jax.jit(step).lower(*args).compile()
    _assert_stays_local(compiled)
    # Each device's call sees its own rows and heads: B / 2 rows of S tokens, Hq / 4 and Hk / 4 heads.
    rows = b // MESH_SHAPE[0] if spec[0] else b
    heads = MESH_SHAPE[1] if spec[2] else 1
    local = {("varlen_fwd", (rows * s, hq // heads, d), (rows * s, hk // heads, d), (rows * 6 + 1,)),
             ("varlen_bwd", (rows * s, hq // heads, d), (rows * s, hk // heads, d), (rows * 6 + 1,))}
    assert local <= set(CALLS), CALLS
    got = compiled(*args)
    (out, lse), grads = got
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, spec), 4)
    assert grads[1].sharding.is_equivalent_to(NamedSharding(mesh, spec), 4)
    _assert_close(got, want, tol=1e-6)
    # And the stand-in path agrees with the reference path (one documents-only mask, not the dense one).
    ref = _loss_and_grads(lambda q, k, v: jax_flash.flash_attention(
        q, k, v, causal=True, window=(6, 0), segment_ids=ids, max_segments=6, return_lse=True,
        implementation="xla"), dout, dlse)(q, k, v)
    _assert_close(got, ref)


# ---------------------------------------------------------------------------------------------------------
# Varlen (THD): heads split, tokens and offsets whole.

def _varlen_inputs(hq=8, hk=4, d=16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    tq, tk = 40, 44
    q, k, v, dout = (_normal(keys[0], (tq, hq, d)), _normal(keys[1], (tk, hk, d)), _normal(keys[2], (tk, hk, d)),
                     _normal(keys[3], (tq, hq, d)))
    dlse = jax.random.normal(keys[4], (hq, tq), jnp.float32)
    # Rows before the first sequence, an empty sequence, padding inside spans and rows after the last.
    cu_q = jnp.array([2, 12, 12, 30, 36], jnp.int32)
    cu_k = jnp.array([0, 9, 20, 33, 40], jnp.int32)
    used_q = jnp.array([8, 0, 15, 6], jnp.int32)
    used_k = jnp.array([9, 4, 10, 7], jnp.int32)
    return q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k


@pytest.mark.parametrize("hq, hk, split", [(8, 4, True), (4, 4, True), (8, 2, False)],
                         ids=["gqa", "mha", "kv_heads_too_few"])
def test_varlen_heads_stay_sharded(hq, hk, split):
    mesh = _mesh()
    q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k = _varlen_inputs(hq, hk)

    def step(q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k):
        attend = lambda q, k, v: jax_flash.flash_attention_varlen(  # noqa: E731
            q, k, v, cu_q, cu_k, 16, 16, seqused_q=used_q, seqused_k=used_k, causal=True, softcap=4.0,
            return_lse=True, implementation="cuda")
        return _loss_and_grads(attend, dout, dlse)(q, k, v)

    args = (q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k)
    want = jax.jit(step)(*args)
    CALLS.clear()
    heads = P(None, "model", None)
    # 2 kv heads do not split 4 ways: k and v come whole, and the query heads are gathered to match.
    kv_heads = heads if split else P()
    sharded = (_put(mesh, q, heads), _put(mesh, k, kv_heads), _put(mesh, v, kv_heads), _put(mesh, dout, heads),
               _put(mesh, dlse, P("model", None)), *(_put(mesh, x, P()) for x in (cu_q, cu_k, used_q, used_k)))
    compiled = jax.jit(step).lower(*sharded).compile()
    got = compiled(*sharded)
    _assert_close(got, want, tol=1e-6)
    if not split:
        assert ("varlen_fwd", (40, hq, 16), (44, hk, 16), (5,)) in CALLS
        return
    _assert_stays_local(compiled)
    n = MESH_SHAPE[1]
    assert ("varlen_fwd", (40, hq // n, 16), (44, hk // n, 16), (5,)) in CALLS
    assert ("varlen_bwd", (40, hq // n, 16), (44, hk // n, 16), (5,)) in CALLS
    assert got[0][0].sharding.is_equivalent_to(NamedSharding(mesh, heads), 3)


# ---------------------------------------------------------------------------------------------------------
# Paged: batch split (q, page table, lengths), kv heads split with the caches, pages whole or split with the
# batch.

# 1024 pages of 8 slots per sequence: enough key blocks that the split plan depends on the batch and heads.
B, SQ, HQ, HK, D, PAGE, MAX_PAGES, NUM_PAGES = 4, 3, 8, 4, 16, 8, 1024, 16


def _paged_inputs(seed=0, pages_per_block=None):
    """Caches of NUM_PAGES pages; page tables drawn from the whole pool, or with pages_per_block, sequence b
    drawing from block b // (B / 2) of the pool (pages of its own data shard)."""
    rng = np.random.default_rng(seed)
    keys = jax.random.split(jax.random.key(seed), 3)
    q = _normal(keys[0], (B, SQ, HQ, D))
    k_cache, v_cache = _normal(keys[1], (NUM_PAGES, PAGE, HK, D)), _normal(keys[2], (NUM_PAGES, PAGE, HK, D))
    if pages_per_block is None:
        table = rng.integers(-1, NUM_PAGES + 2, (B, MAX_PAGES))  # out-of-range pages read as zeros
    else:
        block = np.arange(B)[:, None] // (B // MESH_SHAPE[0])
        table = block * pages_per_block + rng.integers(0, pages_per_block, (B, MAX_PAGES))
    cache_seqlens = rng.integers(SQ, MAX_PAGES * PAGE + 1, (B,))
    return q, k_cache, v_cache, jnp.asarray(table, jnp.int32), jnp.asarray(cache_seqlens, jnp.int32)


def _paged(q, k_cache, v_cache, page_table, cache_seqlens, **kw):
    return jax_flash.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, window=(9, 0), softcap=5.0,
                                     return_lse=True, implementation="cuda", **kw)


@pytest.mark.parametrize("batch, heads, pages", [("data", None, None), (None, "model", None),
                                                 ("data", "model", None), ("data", "model", "data"),
                                                 ("data", None, "data")],
                         ids=["batch", "heads", "batch_heads", "batch_heads_pool_blocks", "batch_pool_blocks"])
def test_paged_stays_sharded(batch, heads, pages):
    mesh = _mesh()
    args = _paged_inputs(pages_per_block=NUM_PAGES // MESH_SHAPE[0] if pages else None)
    want = jax.jit(_paged)(*args)
    CALLS.clear()
    q, k_cache, v_cache, page_table, cache_seqlens = args
    sharded = (_put(mesh, q, P(batch, None, heads, None)), _put(mesh, k_cache, P(pages, None, heads, None)),
               _put(mesh, v_cache, P(pages, None, heads, None)), _put(mesh, page_table, P(batch, None)),
               _put(mesh, cache_seqlens, P(batch)))
    compiled = jax.jit(_paged).lower(*sharded).compile()
    _assert_stays_local(compiled)
    rows = B // MESH_SHAPE[0] if batch else B
    kv_heads = HK // MESH_SHAPE[1] if heads else HK
    pool = NUM_PAGES // MESH_SHAPE[0] if pages else NUM_PAGES
    # The automatic split plan is chosen from each device's own shapes.
    splits = choose_num_splits(batch=rows, seqlen_q=SQ, num_heads_q=HQ * kv_heads // HK, num_heads_k=kv_heads,
                               max_pages=MAX_PAGES, page_size=PAGE)
    assert ("paged_fwd", (rows, SQ, HQ * kv_heads // HK, D), (pool, PAGE, kv_heads, D), (rows, MAX_PAGES),
            splits) in CALLS
    out, lse = compiled(*sharded)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(batch, None, heads, None)), 4)
    _assert_close((out, lse), want, tol=1e-6)


def test_paged_pool_blocks_read_other_blocks_as_zero_pages():
    """With the pages split with the batch, a page of another device's block reads as a page of zeros,
    like an index outside the pool: the documented price of breaking the one-block-per-device layout."""
    mesh = _mesh()
    q, k_cache, v_cache, page_table, cache_seqlens = _paged_inputs(pages_per_block=NUM_PAGES // 2)
    # Sequence 0 (first data shard) points at a page of the second block.
    foreign = page_table.at[0, 0].set(NUM_PAGES - 1)
    sharded = (_put(mesh, q, P("data")), _put(mesh, k_cache, P("data")), _put(mesh, v_cache, P("data")),
               _put(mesh, foreign, P("data")), _put(mesh, cache_seqlens, P("data")))
    got = jax.jit(_paged)(*sharded)
    want = jax.jit(_paged)(q, k_cache, v_cache, foreign.at[0, 0].set(-1), cache_seqlens)
    _assert_close(got, want, tol=1e-6)


def test_paged_pages_split_another_way_is_an_error():
    mesh = _mesh()
    q, k_cache, v_cache, page_table, cache_seqlens = _paged_inputs()
    sharded = (_put(mesh, q, P("data")), _put(mesh, k_cache, P("model")), _put(mesh, v_cache, P("model")),
               _put(mesh, page_table, P("data")), _put(mesh, cache_seqlens, P("data")))
    with pytest.raises(Exception, match="page axis is sharded over mesh axes"):
        jax.jit(_paged).lower(*sharded).compile()


def test_paged_packed_queries_split_over_heads():
    mesh = _mesh()
    q, k_cache, v_cache, page_table, cache_seqlens = _paged_inputs()
    packed_q = q.reshape((B * SQ, HQ, D))[:10]
    cu_q = jnp.array([0, 2, 2, 7, 9], jnp.int32)

    def attend(q, k_cache, v_cache, page_table, cache_seqlens, cu_q):
        return _paged(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q=cu_q, max_seqlen_q=5)

    args = (packed_q, k_cache, v_cache, page_table, cache_seqlens, cu_q)
    want = jax.jit(attend)(*args)
    CALLS.clear()
    sharded = (_put(mesh, packed_q, P(None, "model", None)), _put(mesh, k_cache, P(None, None, "model", None)),
               _put(mesh, v_cache, P(None, None, "model", None)), *(_put(mesh, x, P()) for x in args[3:]))
    compiled = jax.jit(attend).lower(*sharded).compile()
    _assert_stays_local(compiled)
    n = MESH_SHAPE[1]
    splits = choose_num_splits(batch=B, seqlen_q=10, num_heads_q=HQ // n, num_heads_k=HK // n, max_pages=MAX_PAGES,
                               page_size=PAGE, packed=True)
    assert ("paged_fwd", (10, HQ // n, D), (NUM_PAGES, PAGE, HK // n, D), (B, MAX_PAGES), splits) in CALLS
    _assert_close(compiled(*sharded), want, tol=1e-6)
