"""The paged CUDA path's JAX plumbing on any machine: the kernels are "available", _ffi.paged_fwd is a
recording fake that answers with the reference, and the tests check what ops/paged.py hands it (dense or
packed layout, the chosen or given num_splits, max_seqlen_q, the normalised attributes)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference
from jax_flash.ops import choose_num_splits

CALLS = []

# Two sequences, 4 query heads on 2 kv heads, 256 pages of 64 slots in each page table (16k keys), of which
# only 20 pages exist: most table entries are zero pages.
B, HQ, HK, D, DV, PAGE, MAX_PAGES, NUM_PAGES = 2, 4, 2, 16, 8, 64, 256, 20


def fake_paged_fwd(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits,
                   max_seqlen_q=None, split_halving=False):
    CALLS.append(dict(q_shape=q.shape, cu_seqlens_q=cu_seqlens_q, config=config, num_splits=num_splits,
                      max_seqlen_q=max_seqlen_q, split_halving=split_halving))
    return reference.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q=cu_seqlens_q,
                                     causal=False, window=config.window, softcap=config.softcap,
                                     scale=config.scale, return_lse=True)


@pytest.fixture(autouse=True)
def kernels_replaced_by_reference(monkeypatch):
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_ffi, "supported", lambda dtype, d, dv: True)
    monkeypatch.setattr(_ffi, "paged_fwd", fake_paged_fwd)
    # The fake records at trace time: a trace cached by an earlier test with the same config would skip it.
    jax.clear_caches()
    CALLS.clear()


def _inputs(sq=40, packed_rows=None, seed=0):
    rng = np.random.default_rng(seed)
    q_shape = (packed_rows, HQ, D) if packed_rows is not None else (B, sq, HQ, D)
    q = jnp.asarray(rng.standard_normal(q_shape), jnp.bfloat16)
    k_cache = jnp.asarray(rng.standard_normal((NUM_PAGES, PAGE, HK, D)), jnp.bfloat16)
    v_cache = jnp.asarray(rng.standard_normal((NUM_PAGES, PAGE, HK, DV)), jnp.bfloat16)
    page_table = rng.integers(0, 2 * NUM_PAGES, (B, MAX_PAGES)).astype(np.int32)
    cache_seqlens = np.array([300, 1000], np.int32)
    return q, k_cache, v_cache, page_table, cache_seqlens


def test_dense_call_chooses_num_splits_from_shapes():
    args = _inputs(sq=40)
    out, lse = jax_flash.paged_attention(*args, return_lse=True)
    (call,) = CALLS
    # B * ceil(40 * 2 / 64) * HK = 8 CTAs; 256 key blocks: 264 // 8 = 33 splits.
    want = choose_num_splits(batch=B, seqlen_q=40, num_heads_q=HQ, num_heads_k=HK, max_pages=MAX_PAGES,
                             page_size=PAGE)
    assert call["num_splits"] == want == 33
    assert call["cu_seqlens_q"] is None and call["max_seqlen_q"] is None and call["q_shape"] == (B, 40, HQ, D)
    assert out.shape == (B, 40, HQ, DV) and lse.shape == (B, HQ, 40)
    want_out = reference.paged_attention(*args)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want_out, np.float32))


def test_packed_call_passes_offsets_and_the_static_bound():
    args = _inputs(packed_rows=80)
    cu = jnp.array([0, 30, 77], jnp.int32)
    out = jax_flash.paged_attention(*args, cu_seqlens_q=cu, max_seqlen_q=47)
    (call,) = CALLS
    # ceil(80 * 2 / 64) + B = 5 tiles, 10 CTAs: 264 // 10 = 26 splits.
    assert call["num_splits"] == 26 == choose_num_splits(batch=B, seqlen_q=80, num_heads_q=HQ, num_heads_k=HK,
                                                         max_pages=MAX_PAGES, page_size=PAGE, packed=True)
    # The call is traced inside its custom_partitioning wrapper: the offsets arrive as a tracer, and the
    # zero rows past cu[-1] below show they reached it.
    assert call["cu_seqlens_q"].shape == cu.shape and call["max_seqlen_q"] == 47
    assert out.shape == (80, HQ, DV)
    assert np.all(np.asarray(out, np.float32)[77:] == 0)


@pytest.mark.parametrize("num_splits", [1, 5, 256])
def test_given_num_splits_is_honoured(num_splits):
    jax_flash.paged_attention(*_inputs(sq=1), num_splits=num_splits)
    assert CALLS[-1]["num_splits"] == num_splits and not CALLS[-1]["split_halving"]


def test_decode_over_a_wave_of_ctas_gets_halving_splits(monkeypatch):
    # 120 sequences x 2 kv heads = 240 CTAs (7/8 of a wave or more). 512 pages of 32 slots = 16k keys: the
    # decode waves' equal parts (2); 1024 pages = 32k keys: 7 halving parts. Explicit counts stay equal.
    # (A zero-answering fake: the reference over such tables is beside the point here.)
    def record(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits, max_seqlen_q=None,
               split_halving=False):
        CALLS.append(dict(num_splits=num_splits, split_halving=split_halving))
        return jnp.zeros(q.shape[:-1] + v_cache.shape[-1:], q.dtype), jnp.zeros((q.shape[0], HQ, 1), jnp.float32)

    monkeypatch.setattr(_ffi, "paged_fwd", record)
    batch, page = 120, 32
    q = jnp.zeros((batch, 1, HQ, D), jnp.bfloat16)
    k_cache = jnp.zeros((NUM_PAGES, page, HK, D), jnp.bfloat16)
    v_cache = jnp.zeros((NUM_PAGES, page, HK, DV), jnp.bfloat16)
    lengths = jnp.full((batch,), 100, jnp.int32)
    for max_pages, want in [(512, (2, False)), (1024, (7, True))]:
        table = jnp.zeros((batch, max_pages), jnp.int32)
        jax_flash.paged_attention(q, k_cache, v_cache, table, lengths)
        assert (CALLS[-1]["num_splits"], CALLS[-1]["split_halving"]) == want
        jax_flash.paged_attention(q, k_cache, v_cache, table, lengths, num_splits=5)
        assert (CALLS[-1]["num_splits"], CALLS[-1]["split_halving"]) == (5, False)


@pytest.mark.parametrize("kw, window, softcap, scale", [
    (dict(), (-1, 0), None, 1 / math.sqrt(D)),  # causal by default
    (dict(causal=False), (-1, -1), None, 1 / math.sqrt(D)),
    (dict(causal=False, window=(4, 2)), (4, 2), None, 1 / math.sqrt(D)),
    (dict(window=(4, 2), softcap=30.0, scale=0.5), (4, 0), 30.0, 0.5),
    (dict(window=(None, 3)), (-1, 0), None, 1 / math.sqrt(D)),
])
def test_attributes_reach_the_kernel_normalised(kw, window, softcap, scale):
    jax_flash.paged_attention(*_inputs(sq=1), **kw)
    config = CALLS[-1]["config"]
    assert config.window == window and config.softcap == softcap and config.scale == pytest.approx(scale)


def test_support_is_asked_for_q_dtype_and_both_head_dims(monkeypatch):
    asked = []
    monkeypatch.setattr(_ffi, "supported", lambda dtype, d, dv: asked.append((jnp.dtype(dtype), d, dv)) or False)
    # No kernel for these head dims: None falls back to the reference; "cuda" is an error naming them.
    jax_flash.paged_attention(*_inputs(sq=1))
    assert not CALLS and asked == [(jnp.dtype(jnp.bfloat16), D, DV)]
    with pytest.raises(ValueError, match=f"D={D}, Dv={DV}"):
        jax_flash.paged_attention(*_inputs(sq=1), implementation="cuda")


def test_jit_traces_once_for_new_tables_and_lengths_and_once_per_num_splits():
    q, k_cache, v_cache, page_table, cache_seqlens = _inputs(sq=1)
    step = jax.jit(jax_flash.paged_attention, static_argnames=("num_splits",))
    step(q, k_cache, v_cache, page_table, cache_seqlens)
    step(q, k_cache, v_cache, page_table[::-1].copy(), cache_seqlens + 7)
    assert len(CALLS) == 1 and step._cache_size() == 1
    step(q, k_cache, v_cache, page_table, cache_seqlens, num_splits=3)
    assert len(CALLS) == 2 and CALLS[-1]["num_splits"] == 3 and step._cache_size() == 2


def test_xla_is_still_the_reference_when_asked():
    args = _inputs(sq=2)
    out = jax_flash.paged_attention(*args, implementation="xla")
    assert not CALLS
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(reference.paged_attention(*args), np.float32))

