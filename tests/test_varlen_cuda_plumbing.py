"""The packed (varlen) CUDA path's JAX plumbing: custom_vjp with the lse cotangent, integer index arrays
without cotangents, seqused defaults and static max_seqlen, exercised on any machine by standing the
reference in for the two FFI calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_flash import _ffi, reference
from jax_flash.ops import varlen
from jax_flash.ops._config import check_varlen

CALLS = []


def _reference(q, k, v, cu_q, cu_k, used_q, used_k, config):
    return reference.attention_varlen(q, k, v, cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                      window=config.window, softcap=config.softcap, scale=config.scale,
                                      return_lse=True)


def fake_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k):
    CALLS.append(("fwd", max_q, max_k))
    assert used_q is not None and used_k is not None, "the kernels always receive seqused"
    return _reference(q, k, v, cu_q, cu_k, used_q, used_k, config)


def fake_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config, deterministic, max_q, max_k):
    CALLS.append(("bwd", max_q, max_k))
    _, vjp = jax.vjp(lambda q, k, v: _reference(q, k, v, cu_q, cu_k, used_q, used_k, config), q, k, v)
    return vjp((dout, dlse))


@pytest.fixture(autouse=True)
def kernels_replaced_by_reference(monkeypatch):
    monkeypatch.setattr(_ffi, "attn_varlen_fwd", fake_fwd)
    monkeypatch.setattr(_ffi, "attn_varlen_bwd", fake_bwd)
    CALLS.clear()


def _inputs(tq=40, tk=44, hq=6, hk=2, d=16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (tq, hq, d), jnp.float32)
    k = jax.random.normal(keys[1], (tk, hk, d), jnp.float32)
    v = jax.random.normal(keys[2], (tk, hk, d), jnp.float32)
    dout = jax.random.normal(keys[3], (tq, hq, d), jnp.float32)
    dlse = jax.random.normal(keys[4], (hq, tq), jnp.float32)
    # Three sequences, an empty one, padding between them and rows after the last.
    cu_q = jnp.array([2, 12, 12, 30, 36], jnp.int32)
    cu_k = jnp.array([0, 9, 20, 33, 40], jnp.int32)
    used_q = jnp.array([8, 0, 15, 6], jnp.int32)
    used_k = jnp.array([9, 4, 10, 7], jnp.int32)
    return q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k


def _config(q, k, v, cu_q, cu_k, **kw):
    cast = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    return check_varlen(*cast, cu_q, cu_k, 64, 64, seqused_q=None, seqused_k=None,
                        causal=kw.get("causal", True), window=kw.get("window"), softcap=kw.get("softcap"),
                        scale=None)


def _loss(attn, dout, dlse):
    def loss(q, k, v):
        out, lse = attn(q, k, v)
        return jnp.sum(out * dout) + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse) * dlse)
    return loss


def test_gradients_include_the_lse_cotangent():
    q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k = _inputs()
    config = _config(q, k, v, cu_q, cu_k, softcap=5.0, window=(6, 0))
    static = (config, 18, 11, False)
    ours = jax.grad(_loss(lambda q, k, v: varlen._cuda_varlen(q, k, v, cu_q, cu_k, used_q, used_k, static),
                          dout, dlse), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(_loss(lambda q, k, v: _reference(q, k, v, cu_q, cu_k, used_q, used_k, config), dout, dlse),
                   argnums=(0, 1, 2))(q, k, v)
    assert ("bwd", 18, 11) in CALLS
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # Rows outside every sequence: zero gradient (query rows 0-1 lie before cu_seqlens_q[0]).
    assert np.all(np.asarray(ours[0])[:2] == 0)


def test_index_arrays_have_no_cotangent_under_jit():
    q, k, v, dout, dlse, cu_q, cu_k, used_q, used_k = _inputs()
    config = _config(q, k, v, cu_q, cu_k)

    @jax.jit
    def step(q, k, v, cu_q, cu_k, used_q, used_k):
        f = lambda q, k, v: varlen._cuda_varlen(q, k, v, cu_q, cu_k, used_q, used_k,  # noqa: E731
                                                (config, 20, 20, True))
        return jax.grad(_loss(f, dout, dlse), argnums=(0, 1, 2))(q, k, v)

    first = step(q, k, v, cu_q, cu_k, used_q, used_k)
    # New offsets, same shapes: the same compiled step, a different (correct) answer.
    cu_q2 = jnp.array([0, 5, 20, 21, 40], jnp.int32)
    second = step(q, k, v, cu_q2, cu_k, used_q, used_k)
    assert step._cache_size() == 1
    ref = jax.grad(_loss(lambda q, k, v: _reference(q, k, v, cu_q2, cu_k, used_q, used_k, config), dout, dlse),
                   argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(second[0], ref[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(first[0], second[0])


def test_public_op_passes_spans_when_seqused_is_absent(monkeypatch):
    q, k, v, _, _, cu_q, cu_k, _, _ = _inputs()
    seen = {}

    def spy_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k):
        # Traced inside the custom_partitioning wrapper: the values arrive at run time.
        jax.debug.callback(lambda a, b: seen.update(used_q=a, used_k=b), used_q, used_k)
        seen.update(max=(max_q, max_k))
        return fake_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k)

    monkeypatch.setattr(_ffi, "attn_varlen_fwd", spy_fwd)
    monkeypatch.setattr(varlen, "choose_implementation", lambda *a: "cuda")
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = varlen.flash_attention_varlen(*bf, cu_q, cu_k, 18, 13, causal=True, implementation="cuda")
    np.testing.assert_array_equal(seen["used_q"], np.diff(np.asarray(cu_q)))
    np.testing.assert_array_equal(seen["used_k"], np.diff(np.asarray(cu_k)))
    assert seen["max"] == (18, 13)
    ref = reference.attention_varlen(*bf, cu_q, cu_k, causal=True)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=1e-2)
