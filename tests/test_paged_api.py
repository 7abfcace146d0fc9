"""paged_attention / paged_kv_update as users call them: argument errors that name the argument, the
implementation choice, choose_num_splits, jit/vmap/grad on the reference path, and in-place cache updates
under donation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference
from jax_flash.ops import SplitPlan, choose_num_splits, choose_split_plan


def _args(b=2, sq=3, hq=4, hk=2, d=16, dv=16, pages=10, page_size=8, max_pages=4, dtype=jnp.float16):
    rng = np.random.default_rng(0)
    return dict(q=jnp.asarray(rng.standard_normal((b, sq, hq, d)), dtype),
                k_cache=jnp.asarray(rng.standard_normal((pages, page_size, hk, d)), dtype),
                v_cache=jnp.asarray(rng.standard_normal((pages, page_size, hk, dv)), dtype),
                page_table=np.arange(b * max_pages, dtype=np.int32).reshape(b, max_pages) % pages,
                cache_seqlens=np.array([5, 20], np.int32)[:b])


def _packed(**kw):
    args = _args(**kw)
    args["q"] = args["q"].reshape(-1, *args["q"].shape[2:])
    return dict(args, cu_seqlens_q=np.array([0, 2, 6], np.int32), max_seqlen_q=4)


F16, I64 = np.float16, np.int64


@pytest.mark.parametrize("change, error, match", [
    (dict(q=np.zeros((6, 4, 16), F16)), ValueError, r"q must have rank 4 \(batch"),
    (dict(k_cache=np.zeros((10, 8, 32), F16)), ValueError, "k_cache must have rank 4"),
    (dict(v_cache=np.zeros((9, 8, 2, 16), F16)), ValueError, "k_cache and v_cache must agree"),
    (dict(k_cache=np.zeros((10, 12, 2, 16), F16), v_cache=np.zeros((10, 12, 2, 16), F16)), ValueError,
     r"page_size \(axis 1 of k_cache\) must be a multiple of 8 .* got 12"),
    (dict(k_cache=np.zeros((10, 512, 2, 16), F16), v_cache=np.zeros((10, 512, 2, 16), F16)), ValueError,
     "page_size .* got 512"),
    (dict(q=np.zeros((2, 3, 4, 16), np.float32)), TypeError, "q must be bfloat16 or float16"),
    (dict(k_cache=np.zeros((10, 8, 2, 16), jnp.bfloat16)), TypeError, "one dtype: q is float16, k_cache is"),
    (dict(q=np.zeros((2, 3, 4, 32), F16)), ValueError, "same head dim"),
    (dict(q=np.zeros((2, 3, 3, 16), F16)), ValueError, r"query heads \(3\) must be a multiple of kv heads \(2\)"),
    (dict(v_cache=np.zeros((10, 8, 2, 12), F16)), ValueError, "Dv of v must be a multiple of 8"),
    (dict(page_table=np.zeros((2, 4), I64)), TypeError, "page_table must be int32, got int64"),
    (dict(page_table=np.zeros((8,), np.int32)), ValueError, r"page_table must have shape \(B, max_pages\) = \(2,"),
    (dict(page_table=np.zeros((3, 4), np.int32)), ValueError, r"page_table must have shape .* got \(3, 4\)"),
    (dict(cache_seqlens=np.zeros((3,), np.int32)), ValueError, r"cache_seqlens must have shape \(2,\)"),
    (dict(cache_seqlens=np.zeros((2,), np.float32)), TypeError, "cache_seqlens must be int32"),
    (dict(cu_seqlens_q=np.array([0, 1, 2], np.int32)), ValueError, "cu_seqlens_q and max_seqlen_q go together"),
    (dict(max_seqlen_q=4), ValueError, "cu_seqlens_q and max_seqlen_q go together"),
    (dict(num_splits=0), ValueError, r"num_splits must be in \[1, 256\], got 0"),
    (dict(num_splits=257), ValueError, "num_splits"),
    (dict(num_splits=2.0), TypeError, "num_splits must be a static Python int"),
    (dict(num_splits=True), TypeError, "num_splits"),
    (dict(num_splits=jnp.int32(2)), TypeError, "num_splits"),
    (dict(window=(-2, 0)), ValueError, r"window\[0\]"),
    (dict(softcap=0.0), ValueError, "softcap"),
    (dict(scale=-1.0), ValueError, "scale"),
    (dict(causal=None), TypeError, "causal must be a bool"),
    (dict(return_lse=1), TypeError, "return_lse must be a bool"),
    (dict(implementation="triton"), ValueError, "implementation must be"),
    (dict(implementation="cuda"), ValueError, "implementation='cuda' cannot run: no GPU in this test"),
])
def test_bad_dense_arguments(change, error, match, monkeypatch):
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: "no GPU in this test")
    with pytest.raises(error, match=match):
        jax_flash.paged_attention(**dict(_args(), **change))


@pytest.mark.parametrize("change, error, match", [
    (dict(q=np.zeros((2, 3, 4, 16), F16)), ValueError, r"q must have rank 3 \(total_tokens"),
    (dict(cu_seqlens_q=np.array([0, 6], np.int32)), ValueError, r"cu_seqlens_q must have shape \(3,\)"),
    (dict(cu_seqlens_q=np.array([0, 2, 6], I64)), TypeError, "cu_seqlens_q must be int32"),
    (dict(max_seqlen_q=-1), ValueError, "max_seqlen_q must be in"),
    (dict(max_seqlen_q=4.0), TypeError, "max_seqlen_q must be a static Python int"),
    (dict(max_seqlen_q=2**31), ValueError, "max_seqlen_q"),
    (dict(max_seqlen_q=None), ValueError, "go together"),
    (dict(page_table=np.zeros((0, 4), np.int32), cache_seqlens=np.zeros((0,), np.int32),
          cu_seqlens_q=np.array([0], np.int32)), ValueError, "page_table must have at least one row"),
    (dict(cache_seqlens=np.zeros((3,), np.int32)), ValueError, r"cache_seqlens must have shape \(2,\)"),
])
def test_bad_packed_arguments(change, error, match):
    with pytest.raises(error, match=match):
        jax_flash.paged_attention(**dict(_packed(), **change))


def _update_args(packed=False):
    a = _args()
    new = np.ones((6, 2, 16), F16) if packed else np.ones((2, 3, 2, 16), F16)
    extra = dict(cu_seqlens_new=np.array([0, 2, 6], np.int32)) if packed else {}
    return dict(k_cache=a["k_cache"], v_cache=a["v_cache"], k_new=new, v_new=new, page_table=a["page_table"],
                cache_seqlens=a["cache_seqlens"], **extra)


@pytest.mark.parametrize("packed, change, error, match", [
    (False, dict(k_new=np.ones((6, 2, 16), F16)), ValueError, r"k_new must have rank 4 \(batch"),
    (True, dict(v_new=np.ones((2, 3, 2, 16), F16)), ValueError, r"v_new must have rank 3 \(total_tokens"),
    (False, dict(k_new=np.ones((2, 3, 1, 16), F16)), ValueError, r"k_new must end in \(heads, head_dim\)"),
    (False, dict(v_new=np.ones((2, 3, 2, 8), F16)), ValueError, "v_new must end in"),
    (False, dict(v_new=np.ones((2, 3, 2, 16), np.float32)), TypeError, "v_new must have v_cache's dtype float16"),
    (False, dict(v_new=np.ones((2, 4, 2, 16), F16)), ValueError, "k_new and v_new must agree"),
    (False, dict(v_cache=np.zeros((10, 8, 2, 16), np.float32)), TypeError, "k_cache and v_cache must share"),
    (False, dict(k_cache=np.zeros((10, 4, 2, 16), F16), v_cache=np.zeros((10, 4, 2, 16), F16)), ValueError,
     "page_size"),
    (False, dict(k_new=np.ones((3, 3, 2, 16), F16), v_new=np.ones((3, 3, 2, 16), F16)), ValueError,
     r"page_table must have shape \(B, max_pages\) = \(3,"),
    (False, dict(cache_seqlens=np.zeros((2,), I64)), TypeError, "cache_seqlens must be int32"),
    (True, dict(cu_seqlens_new=np.array([0, 6], np.int32)), ValueError, r"cu_seqlens_new must have shape \(3,\)"),
    (True, dict(cu_seqlens_new=np.array([0, 2, 6], I64)), TypeError, "cu_seqlens_new must be int32"),
])
def test_bad_update_arguments(packed, change, error, match):
    with pytest.raises(error, match=match):
        jax_flash.paged_kv_update(**dict(_update_args(packed), **change))


def test_errors_raise_at_trace_time():
    a = _args()
    fn = jax.jit(lambda q, k, v, t, s: jax_flash.paged_attention(q, k, v, t, s, num_splits=0))
    with pytest.raises(ValueError, match="num_splits"):
        fn.lower(a["q"], a["k_cache"], a["v_cache"], a["page_table"], a["cache_seqlens"])


@pytest.mark.parametrize("args", [_args, _packed])
def test_without_kernels_none_runs_the_reference(args, monkeypatch):
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: "no GPU in this test")
    a = args()
    out, lse = jax_flash.paged_attention(**a, return_lse=True, num_splits=3)  # num_splits: ignored here
    a.pop("max_seqlen_q", None)
    want, want_lse = reference.paged_attention(**a, return_lse=True)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(lse, want_lse)
    assert out.dtype == jnp.float16 and lse.dtype == jnp.float32


def test_explicit_xla_never_asks_for_the_kernels(monkeypatch):
    def fail():
        raise AssertionError("implementation='xla' must not look for the kernels")
    monkeypatch.setattr(_ffi, "unavailable_reason", fail)
    jax_flash.paged_attention(**_args(), implementation="xla")


H = SplitPlan  # halving parts below; SplitPlan(n) is n equal parts


@pytest.mark.parametrize("kw, want", [
    # The examples: 32k tokens of cache, GQA 4 (32 query heads on 8 kv heads), decode. B=32: 256
    # CTAs, a wave: halving parts down to 512 keys, 1 + log2(32768 / 512) = 7. B=1: 8 CTAs, 33 equal parts.
    (dict(batch=32, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=2048, page_size=16), H(7, True)),
    (dict(batch=1, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=2048, page_size=16), H(33)),
    (dict(batch=128, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=2048, page_size=16), H(7, True)),
    # Halving needs 7/8 of a wave (231 CTAs) and 32k keys (an 8k or 16k cache keeps the waves below); it
    # stops at 8 parts.
    (dict(batch=33, seqlen_q=1, num_heads_q=7, num_heads_k=7, max_pages=256, page_size=128), H(7, True)),
    (dict(batch=32, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=4095, page_size=8), H(3)),
    (dict(batch=32, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=64, page_size=128), H(1)),
    (dict(batch=128, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=64, page_size=128), H(1)),
    (dict(batch=32, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=1024, page_size=128), H(8, True)),
    # Fewer CTAs: decode waves, 64 CTAs x 16 = 1024 (128k keys: 8192 per split); 224 CTAs x 4 (32k keys).
    (dict(batch=8, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=1024, page_size=128), H(16)),
    (dict(batch=32, seqlen_q=1, num_heads_q=7, num_heads_k=7, max_pages=256, page_size=128), H(4)),
    # Multi-token decode (Sq * G = 16 rows) like Sq = 1.
    (dict(batch=32, seqlen_q=4, num_heads_q=32, num_heads_k=8, max_pages=256, page_size=128), H(7, True)),
    # Not decode (Sq * G = 20 rows): one wave only.
    (dict(batch=32, seqlen_q=5, num_heads_q=32, num_heads_k=8, max_pages=256, page_size=128), H(1)),
    # One CTA in all: capped at 64 splits.
    (dict(batch=1, seqlen_q=1, num_heads_q=1, num_heads_k=1, max_pages=1024, page_size=64), H(64)),
    # Short cache: each split keeps at least 4 key blocks (8 blocks -> 2 splits; 3 blocks -> 1).
    (dict(batch=1, seqlen_q=1, num_heads_q=8, num_heads_k=8, max_pages=32, page_size=16), H(2)),
    (dict(batch=1, seqlen_q=1, num_heads_q=8, num_heads_k=8, max_pages=12, page_size=16), H(1)),
    # Query tiles of prefill: B * ceil(Sq * G / 64) * Hk = 2 * 8 * 8 = 128 CTAs -> 2 splits; 2048 CTAs -> 1.
    (dict(batch=2, seqlen_q=128, num_heads_q=32, num_heads_k=8, max_pages=512, page_size=64), H(2)),
    (dict(batch=8, seqlen_q=512, num_heads_q=32, num_heads_k=8, max_pages=512, page_size=64), H(1)),
    # Packed: ceil(Tq * G / 64) + B tiles = ceil(4 * 4 / 64) + 4 = 5 -> 40 CTAs -> 264 // 40 = 6; packed
    # queries never halve.
    (dict(batch=4, seqlen_q=4, num_heads_q=32, num_heads_k=8, max_pages=256, page_size=64, packed=True), H(6)),
    (dict(batch=4, seqlen_q=0, num_heads_q=32, num_heads_k=8, max_pages=256, page_size=64, packed=True), H(8)),
    (dict(batch=64, seqlen_q=64, num_heads_q=8, num_heads_k=8, max_pages=256, page_size=64, packed=True), H(1)),
    # No work at all (empty q): one split.
    (dict(batch=4, seqlen_q=0, num_heads_q=32, num_heads_k=8, max_pages=256, page_size=64), H(1)),
    (dict(batch=4, seqlen_q=1, num_heads_q=32, num_heads_k=8, max_pages=0, page_size=64), H(1)),
])
def test_choose_split_plan(kw, want):
    assert choose_split_plan(**kw) == want
    assert choose_num_splits(**kw) == want.num_splits
    assert jax_flash.ops.paged.choose_split_plan is choose_split_plan


def _layered(layers=3, packed=False):
    """Per-layer q and caches (a leading layer axis) sharing one page table, as in a model's decode step."""
    rng = np.random.default_rng(1)
    base = _packed() if packed else _args()
    stack = lambda x: jnp.asarray(rng.standard_normal((layers, *x.shape)), x.dtype)  # noqa: E731
    return {k: (stack(v) if k in ("q", "k_cache", "v_cache") else v) for k, v in base.items()}


@pytest.mark.parametrize("packed", [False, True])
def test_reference_path_under_jit_and_vmap(packed):
    a = _layered(packed=packed)
    static = {k: a.pop(k) for k in ("max_seqlen_q",) if k in a}

    def attend(q, k_cache, v_cache, page_table, cache_seqlens, cu=None):
        return jax_flash.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q=cu,
                                         return_lse=True, implementation="xla", **static)

    cu = a.pop("cu_seqlens_q", None)
    batched = jax.jit(jax.vmap(attend, in_axes=(0, 0, 0, None, None, None)))
    out, lse = batched(a["q"], a["k_cache"], a["v_cache"], a["page_table"], a["cache_seqlens"], cu)
    for layer in range(a["q"].shape[0]):
        want, want_lse = attend(a["q"][layer], a["k_cache"][layer], a["v_cache"][layer], a["page_table"],
                                a["cache_seqlens"], cu)
        np.testing.assert_allclose(np.asarray(out[layer], np.float32), np.asarray(want, np.float32), atol=2e-3)
        np.testing.assert_allclose(lse[layer], want_lse, rtol=1e-5, atol=1e-5)
    # New page tables and lengths, same shapes: the same executable.
    batched(a["q"], a["k_cache"], a["v_cache"], a["page_table"][:, ::-1].copy(), a["cache_seqlens"] + 3, cu)
    assert batched._cache_size() == 1


def test_reference_path_gradients_touch_only_visible_keys():
    a = _args(dtype=jnp.bfloat16)
    table = np.array([[3, 7, 12, -1], [1, 0, 2, 5]], np.int32)  # 12, -1: zero pages; page 5 unused (length 20)
    grads = jax.grad(lambda q, k, v: jnp.sum(jax_flash.paged_attention(
        q, k, v, table, a["cache_seqlens"], implementation="xla").astype(jnp.float32) ** 2),
        argnums=(0, 1, 2))(a["q"], a["k_cache"], a["v_cache"])
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
    dk = np.abs(np.asarray(grads[1], np.float32)).sum(axis=(2, 3))  # (pages, slots)
    # Sequence 0 has 5 keys (page 3, slots 0-4); sequence 1 has 20 (pages 1, 0 and slots 0-3 of page 2).
    visible = np.zeros_like(dk, bool)
    visible[3, :5] = visible[1] = visible[0] = True
    visible[2, :4] = True
    assert np.all(dk[~visible] == 0) and np.all(dk[visible] > 0)


@pytest.mark.parametrize("packed", [False, True])
def test_update_under_vmap(packed):
    a = _update_args(packed)
    a["cache_seqlens"] = np.array([3, 27], np.int32)
    layers = 2
    stack = lambda x: jnp.stack([x, x + 1])  # noqa: E731
    k_cache, v_cache, k_new = (stack(jnp.asarray(a[n])) for n in ("k_cache", "v_cache", "k_new"))
    extra = {"cu_seqlens_new": a["cu_seqlens_new"]} if packed else {}
    fn = jax.vmap(lambda kc, vc, kn: jax_flash.paged_kv_update(kc, vc, kn, kn, a["page_table"], a["cache_seqlens"],
                                                                 **extra))
    ks, vs = fn(k_cache, v_cache, k_new)
    for layer in range(layers):
        want_k, want_v = jax_flash.paged_kv_update(k_cache[layer], v_cache[layer], k_new[layer], k_new[layer],
                                                   a["page_table"], a["cache_seqlens"], **extra)
        np.testing.assert_array_equal(ks[layer], want_k)
        np.testing.assert_array_equal(vs[layer], want_v)


# ---------------------------------------------------------------------------------------------------------
# Donation: the update runs in place.
#
# XLA:CPU computes a bfloat16 scatter in float32 (a temporary float32 copy of the cache), so these tests use
# float16 and float32 caches, which it scatters natively; bfloat16 still aliases its outputs to the inputs.


def _big_update_args(dtype, packed=False, pages=256, page_size=16, hk=4, d=64, batch=8):
    k_cache = jnp.zeros((pages, page_size, hk, d), dtype)
    v_cache = jnp.zeros((pages, page_size, hk, d // 2), dtype)
    table = jnp.arange(batch * 32, dtype=jnp.int32).reshape(batch, 32) % pages
    seqlens = jnp.full((batch,), 5, jnp.int32)
    if packed:
        new_k, new_v = jnp.ones((3 * batch, hk, d), dtype), jnp.ones((3 * batch, hk, d // 2), dtype)
        return (k_cache, v_cache, new_k, new_v, table, seqlens), dict(
            cu_seqlens_new=jnp.arange(0, 3 * batch + 1, 3, dtype=jnp.int32))
    return (k_cache, v_cache, jnp.ones((batch, 1, hk, d), dtype), jnp.ones((batch, 1, hk, d // 2), dtype), table,
            seqlens), {}


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_donated_update_aliases_the_caches_without_a_copy(dtype, packed):
    args, kw = _big_update_args(dtype, packed)
    cache_bytes = args[0].nbytes + args[1].nbytes

    def update(*args):
        return jax_flash.paged_kv_update(*args, **kw)

    donated = jax.jit(update, donate_argnums=(0, 1)).lower(*args).compile().memory_analysis()
    assert donated.alias_size_in_bytes == cache_bytes
    if dtype != jnp.bfloat16:
        # Temporaries are index arithmetic and the new tokens, far below one cache.
        assert donated.temp_size_in_bytes < args[1].nbytes // 16
    # Without donation the outputs are new buffers: nothing aliases.
    kept = jax.jit(update).lower(*args).compile().memory_analysis()
    assert kept.alias_size_in_bytes == 0


def test_fifty_donated_steps_reuse_the_same_buffers():
    args, _ = _big_update_args(jnp.float16, pages=64, batch=2)  # distinct pages: 2 sequences x 32
    k_cache, v_cache, k_new, v_new, table, seqlens = args
    update = jax.jit(jax_flash.paged_kv_update, donate_argnums=(0, 1))
    pointers = set()
    for step in range(50):
        k_cache, v_cache = update(k_cache, v_cache, k_new * step, v_new, table, seqlens + step)
        pointers.add((k_cache.unsafe_buffer_pointer(), v_cache.unsafe_buffer_pointer()))
    assert len(pointers) == 1
    # Step s wrote s at position 5 + s of every sequence: sequence 0 owns pages 0, 1, ... (16 slots each).
    written = np.asarray(k_cache[:, :, 0, 0], np.float32).reshape(-1)[5:55]
    np.testing.assert_array_equal(written, np.arange(50))

    # The same 50 steps inside one jitted loop: one pair of cache buffers, aliased to the inputs.
    def loop(k_cache, v_cache):
        def step(i, caches):
            return jax_flash.paged_kv_update(*caches, k_new, v_new, table, seqlens + i)
        return jax.lax.fori_loop(0, 50, step, (k_cache, v_cache))

    stats = jax.jit(loop, donate_argnums=(0, 1)).lower(k_cache, v_cache).compile().memory_analysis()
    assert stats.alias_size_in_bytes == k_cache.nbytes + v_cache.nbytes
    assert stats.temp_size_in_bytes < v_cache.nbytes // 16
