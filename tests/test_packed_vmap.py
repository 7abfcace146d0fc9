"""vmap of packed attention makes one kernel call: the elements' packed tokens are concatenated into one call
(varlen: offsets shifted by each element's token offset, seqused concatenated) or folded into the batch
(segment ids), and the results split back; forward and backward. Paged attention runs once per element, a
shared cache passed as it is. The reference stands in for the FFI calls (the "cuda" path runs with recording
fakes); each case counts the calls in the traced program and compares with a Python loop over the elements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference

CALLS = []


def _varlen_reference(q, k, v, cu_q, cu_k, used_q, used_k, config):
    return reference.attention_varlen(q, k, v, cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                      window=config.window, softcap=config.softcap, scale=config.scale,
                                      return_lse=True)


def fake_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k):
    CALLS.append(("fwd", q.shape, k.shape, cu_q.shape, used_q.shape))
    return _varlen_reference(q, k, v, cu_q, cu_k, used_q, used_k, config)


def fake_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config, deterministic, max_q, max_k):
    CALLS.append(("bwd", q.shape, k.shape, cu_q.shape, used_q.shape))
    _, vjp = jax.vjp(lambda q, k, v: _varlen_reference(q, k, v, cu_q, cu_k, used_q, used_k, config), q, k, v)
    return vjp((dout, dlse))


def fake_paged_fwd(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits,
                   max_seqlen_q=None, split_halving=False):
    CALLS.append(("paged", q.shape, k_cache.shape))
    return reference.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q=cu_seqlens_q,
                                     causal=False, window=config.window, softcap=config.softcap,
                                     scale=config.scale, return_lse=True)


@pytest.fixture(autouse=True)
def kernels_replaced_by_reference(monkeypatch):
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_ffi, "supported", lambda dtype, d, dv: True)
    monkeypatch.setattr(_ffi, "attn_varlen_fwd", fake_fwd)
    monkeypatch.setattr(_ffi, "attn_varlen_bwd", fake_bwd)
    monkeypatch.setattr(_ffi, "paged_fwd", fake_paged_fwd)
    CALLS.clear()


def _kernel_calls(fn, *args):
    """How many kernel calls the traced program makes: each is one custom_partitioning of a packed call."""
    return str(jax.make_jaxpr(fn)(*args)).count("custom_partitioning[")


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16)


V, TQ, TK, HQ, HK, D, DV = 3, 24, 28, 4, 2, 16, 8

# Three elements, each with 4 sequences: rows before the first sequence, empty sequences, padding inside
# spans, rows after the last, a seqused beyond its span (clamped to it) and offsets beyond T (clamped to T).
CU_Q = np.array([[2, 8, 8, 18, 22], [0, 5, 11, 20, 24], [0, 0, 10, 14, 30]], np.int32)
CU_K = np.array([[0, 9, 15, 24, 26], [1, 6, 12, 20, 28], [0, 7, 7, 19, 40]], np.int32)
USED_Q = np.array([[5, 0, 10, 3], [5, 6, 99, 2], [0, 9, 4, 8]], np.int32)
USED_K = np.array([[9, 4, 7, 2], [5, 6, 8, 8], [7, 0, 12, 5]], np.int32)


def _varlen_inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = _normal(keys[0], (V, TQ, HQ, D))
    k, v = _normal(keys[1], (V, TK, HK, D)), _normal(keys[2], (V, TK, HK, DV))
    dout = _normal(keys[3], (V, TQ, HQ, DV))
    dlse = jax.random.normal(keys[4], (V, HQ, TQ), jnp.float32)
    return q, k, v, dout, dlse, *(jnp.asarray(x) for x in (CU_Q, CU_K, USED_Q, USED_K))


def _attend(q, k, v, cu_q, cu_k, used_q, used_k):
    return jax_flash.flash_attention_varlen(q, k, v, cu_q, cu_k, 12, 12, seqused_q=used_q, seqused_k=used_k,
                                            causal=True, window=(7, 0), softcap=6.0, return_lse=True,
                                            implementation="cuda")


def _grads(attend):
    def grads(q, k, v, dout, dlse, *offsets):
        def loss(q, k, v):
            out, lse = attend(q, k, v, *offsets)
            return (jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32))
                    + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse) * dlse))
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    return grads


def _assert_equal_trees(got, want):
    """Equal up to rounding (the stand-in's float32 sums run over the whole concatenated key axis, which
    can move a bfloat16 result by an ulp), and -inf exactly where the loop has -inf."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        tol = 1e-5 if g.dtype == jnp.float32 else 2.0**-6
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert g.shape == w.shape
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w))
        finite = np.isfinite(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=tol, atol=1e-5)


def _loop(fn, *args, in_axes):
    """fn over the elements one at a time, results stacked: what the vmapped call must equal."""
    results = [fn(*(x[i] if axis == 0 else x for x, axis in zip(args, in_axes))) for i in range(V)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *results)


def test_vmapped_varlen_is_one_call_equal_to_a_loop():
    q, k, v, _, _, *offsets = _varlen_inputs()
    args = (q, k, v, *offsets)
    batched = jax.vmap(_attend)
    assert _kernel_calls(batched, *args) == 1
    # The one call holds every element's tokens and sequences: V * T rows, V * N sequences.
    assert CALLS[-1] == ("fwd", (V * TQ, HQ, D), (V * TK, HK, D), (V * 4 + 1,), (V * 4,))
    got = jax.jit(batched)(*args)
    _assert_equal_trees(got, _loop(_attend, *args, in_axes=(0,) * 7))
    # Rows outside every sequence: out 0, lse -inf (rows 0-1 of element 0 lie before its first sequence).
    out, lse = got
    assert np.all(np.asarray(out[0, :2], np.float32) == 0) and np.all(np.isneginf(lse[0, :, :2]))


def test_vmapped_varlen_backward_is_one_call_equal_to_a_loop():
    q, k, v, dout, dlse, *offsets = _varlen_inputs(seed=1)
    args = (q, k, v, dout, dlse, *offsets)
    grads = _grads(_attend)
    batched = jax.vmap(grads)
    assert _kernel_calls(batched, *args) == 2  # one forward, one backward
    assert ("bwd", (V * TQ, HQ, D), (V * TK, HK, D), (V * 4 + 1,), (V * 4,)) in CALLS
    got = jax.jit(batched)(*args)
    _assert_equal_trees(got, _loop(grads, *args, in_axes=(0,) * 9))
    # And differentiating the vmapped call: the same gradients.
    def loss(q, k, v):
        out, lse = jax.vmap(_attend)(q, k, v, *offsets)
        return (jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32))
                + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse) * dlse))
    _assert_equal_trees(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v), got)


def test_vmap_with_shared_operands_and_nested_vmap():
    q, k, v, _, _, cu_q, cu_k, used_q, used_k = _varlen_inputs(seed=2)
    # Only q batched: k, v and the offsets are shared by the elements.
    in_axes = (0, None, None, None, None, None, None)
    args = (q, k[0], v[0], cu_q[1], cu_k[1], used_q[1], used_k[1])
    batched = jax.vmap(_attend, in_axes=in_axes)
    assert _kernel_calls(batched, *args) == 1
    _assert_equal_trees(jax.jit(batched)(*args), _loop(_attend, *args, in_axes=in_axes))
    # Two vmapped axes: still one call, over 2 * V elements.
    two = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), (q, k, v, cu_q, cu_k, used_q, used_k))
    nested = jax.vmap(jax.vmap(_attend))
    assert _kernel_calls(nested, *two) == 1
    assert CALLS[-1][1] == (2 * V * TQ, HQ, D)
    got = jax.jit(nested)(*two)
    for i in range(2):
        _assert_equal_trees(jax.tree.map(lambda x: x[i], got),
                            _loop(_attend, *(x[i] for x in two), in_axes=(0,) * 7))


# ---------------------------------------------------------------------------------------------------------
# Segment ids: the vmapped axis folds into the batch.

def _segment_inputs(seed=3, b=2, s=16, hq=4, hk=2, d=16):
    keys = jax.random.split(jax.random.key(seed), 5)
    rng = np.random.default_rng(seed)
    q = _normal(keys[0], (V, b, s, hq, d))
    k, v = _normal(keys[1], (V, b, s, hk, d)), _normal(keys[2], (V, b, s, hk, d))
    dout = _normal(keys[3], (V, b, s, hq, d))
    dlse = jax.random.normal(keys[4], (V, b, hq, s), jnp.float32)
    # Runs of ids 0 (padding) to 3 in random order: documents of random lengths.
    ids = jnp.asarray(np.sort(rng.integers(0, 4, (V, b, s)), axis=-1)[..., ::-1].copy(), jnp.int32)
    return q, k, v, dout, dlse, ids


def _segments(q, k, v, ids):
    return jax_flash.flash_attention(q, k, v, causal=True, segment_ids=ids, max_segments=4, return_lse=True,
                                     implementation="cuda")


def test_vmapped_segment_ids_are_one_call_equal_to_a_loop():
    q, k, v, dout, dlse, ids = _segment_inputs()
    batched = jax.vmap(_segments)
    assert _kernel_calls(batched, q, k, v, ids) == 1
    assert CALLS[-1][1] == (V * 2 * 16, 4, 16)  # every element's rows in one packed call
    _assert_equal_trees(jax.jit(batched)(q, k, v, ids), _loop(_segments, q, k, v, ids, in_axes=(0,) * 4))
    grads = _grads(_segments)
    batched_grads = jax.vmap(grads)
    assert _kernel_calls(batched_grads, q, k, v, dout, dlse, ids) == 2
    _assert_equal_trees(jax.jit(batched_grads)(q, k, v, dout, dlse, ids),
                        _loop(grads, q, k, v, dout, dlse, ids, in_axes=(0,) * 6))


# ---------------------------------------------------------------------------------------------------------
# Paged: one call per element; a cache shared by the elements is not copied for each.

def test_vmapped_paged_runs_per_element_on_the_shared_cache():
    b, sq, page, max_pages, num_pages = 2, 3, 8, 6, 10
    keys = jax.random.split(jax.random.key(4), 3)
    q = _normal(keys[0], (V, b, sq, HQ, D))
    k_cache, v_cache = _normal(keys[1], (num_pages, page, HK, D)), _normal(keys[2], (num_pages, page, HK, DV))
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.integers(-1, num_pages + 1, (V, b, max_pages)), jnp.int32)
    lengths = jnp.asarray(rng.integers(sq, max_pages * page + 1, (V, b)), jnp.int32)

    def attend(q, k_cache, v_cache, table, lengths):
        return jax_flash.paged_attention(q, k_cache, v_cache, table, lengths, softcap=5.0, return_lse=True,
                                         implementation="cuda")

    in_axes = (0, None, None, 0, 0)
    got = jax.jit(jax.vmap(attend, in_axes=in_axes))(q, k_cache, v_cache, table, lengths)
    assert {call[2] for call in CALLS if call[0] == "paged"} == {k_cache.shape}
    _assert_equal_trees(got, _loop(attend, q, k_cache, v_cache, table, lengths, in_axes=in_axes))
