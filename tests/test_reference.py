"""The pure-JAX reference (float32) against a direct float64 NumPy transcription of DESIGN.md's semantics, and the
`implementation="xla"` path of the public op under jit, grad and vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import reference


def numpy_attention(q, k, v, *, causal, window, softcap, scale):
    """Loops over batch and heads; float64; rows with no visible key -> 0 and -inf."""
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    left, right = (-1, -1) if window is None else window
    if causal:
        right = 0 if right == -1 else min(right, 0)
    out = np.zeros((b, sq, hq, v.shape[-1]))
    lse = np.full((b, hq, sq), -np.inf)
    for bi in range(b):
        for h in range(hq):
            kv = h // (hq // hk)
            for i in range(sq):
                p = i + sk - sq
                keys = [j for j in range(sk) if (left < 0 or j >= p - left) and (right < 0 or j <= p + right)]
                if not keys:
                    continue
                s = scale * (k[bi, keys, kv] @ q[bi, i, h])
                if softcap:
                    s = softcap * np.tanh(s / softcap)
                m = s.max()
                w = np.exp(s - m)
                out[bi, i, h] = (w / w.sum()) @ v[bi, keys, kv]
                lse[bi, h, i] = m + np.log(w.sum())
    return out, lse


@pytest.mark.parametrize("sq, sk, hq, hk, causal, window, softcap", [
    (5, 9, 6, 2, True, None, None),      # Sq < Sk, GQA 3
    (9, 5, 6, 2, True, None, None),      # Sq > Sk: the first rows see no key
    (7, 7, 3, 1, False, (2, 1), None),   # window, MQA
    (8, 12, 4, 4, True, (3, -1), 2.0),   # window with causal, softcap well below the logits
    (6, 6, 2, 1, False, (0, 0), None),   # diagonal only
    (4, 0, 2, 1, False, None, None),     # no keys at all
])
def test_reference_matches_numpy(sq, sk, hq, hk, causal, window, softcap):
    rng = np.random.default_rng(0)
    q = 3 * rng.standard_normal((2, sq, hq, 16))
    k = 3 * rng.standard_normal((2, sk, hk, 16))
    v = rng.standard_normal((2, sk, hk, 8))
    want_out, want_lse = numpy_attention(q, k, v, causal=causal, window=window, softcap=softcap, scale=None)
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    out, lse = reference.attention(*f32, causal=causal, window=window, softcap=softcap, return_lse=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
    finite = np.isfinite(want_lse)
    np.testing.assert_allclose(np.asarray(lse)[finite], want_lse[finite], rtol=1e-5)


def test_fully_masked_rows_have_zero_finite_gradients():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((1, 9, 2, 8), (1, 4, 1, 8), (1, 4, 1, 8)))

    def loss(q, k, v):
        out, lse = reference.attention(q, k, v, causal=True, return_lse=True)
        return jnp.sum(out ** 2) + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse))

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    # Queries 0..4 sit before key 0 (Sq > Sk, bottom-right aligned): no visible key, zero gradient.
    assert np.all(np.asarray(grads[0])[0, :5] == 0)


def test_xla_path_under_jit_grad_vmap():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (3, 2, 10, 6, 32), jnp.bfloat16)
    k = jax.random.normal(keys[1], (3, 2, 14, 2, 32), jnp.bfloat16)
    v = jax.random.normal(keys[2], (3, 2, 14, 2, 16), jnp.bfloat16)

    def attn(q, k, v):
        return jax_flash.flash_attention(q, k, v, causal=True, window=(4, 0), implementation="xla")

    out = jax.jit(jax.vmap(attn))(q, k, v)
    assert out.shape == (3, 2, 10, 6, 16)
    for i in range(3):
        want = reference.attention(q[i], k[i], v[i], causal=True, window=(4, 0))
        np.testing.assert_array_equal(np.asarray(out[i], np.float32), np.asarray(want, np.float32))
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jax.vmap(attn)(q, k, v).astype(jnp.float32) ** 2),
                             argnums=(0, 1, 2)))(q, k, v)
    assert all(g.shape == x.shape and np.isfinite(np.asarray(g, np.float32)).all()
               for g, x in zip(grads, (q, k, v)))
    out, lse = jax_flash.flash_attention(q[0], k[0], v[0], return_lse=True, implementation="xla")
    assert lse.shape == (2, 6, 10) and lse.dtype == jnp.float32
