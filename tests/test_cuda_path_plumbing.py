"""The CUDA path's JAX plumbing (custom_vjp, lse cotangent, vmap folding, batch/head partitioning),
exercised on any machine by standing the reference in for the two FFI calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_flash import _ffi, reference
from jax_flash.ops import dense
from jax_flash.ops._config import check_dense

CALLS = []


def fake_fwd(q, k, v, config):
    CALLS.append(("fwd", q.shape))
    assert q.ndim == 4, "vmapped axes must fold into the batch before the FFI call"
    return reference.attention(q, k, v, window=config.window, softcap=config.softcap,
                               scale=config.scale, return_lse=True)


def fake_bwd(q, k, v, out, lse, dout, dlse, config, deterministic):
    CALLS.append(("bwd", q.shape))
    assert q.ndim == 4
    _, vjp = jax.vjp(lambda q, k, v: reference.attention(
        q, k, v, window=config.window, softcap=config.softcap, scale=config.scale,
        return_lse=True), q, k, v)
    return vjp((dout, dlse))


@pytest.fixture(autouse=True)
def kernels_replaced_by_reference(monkeypatch):
    monkeypatch.setattr(_ffi, "attn_fwd", fake_fwd)
    monkeypatch.setattr(_ffi, "attn_bwd", fake_bwd)
    CALLS.clear()


def _inputs(b=4, sq=12, sk=20, hq=8, hk=4, d=16, dv=16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (b, sq, hq, d), jnp.float32)
    k = jax.random.normal(keys[1], (b, sk, hk, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, sk, hk, dv), jnp.float32)
    dout = jax.random.normal(keys[3], (b, sq, hq, dv), jnp.float32)
    dlse = jax.random.normal(keys[4], (b, hq, sq), jnp.float32)
    return q, k, v, dout, dlse


def _config(q, k, v, **kw):
    # check_dense accepts only kernel dtypes; the config does not depend on them.
    cast = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    return check_dense(*cast, causal=kw.get("causal", True), window=kw.get("window"),
                       softcap=kw.get("softcap"), scale=None)


def _loss(attn, dout, dlse):
    def loss(q, k, v):
        out, lse = attn(q, k, v)
        return jnp.sum(out * dout) + jnp.sum(jnp.where(jnp.isinf(lse), 0.0, lse) * dlse)
    return loss


def test_gradients_include_the_lse_cotangent():
    q, k, v, dout, dlse = _inputs()
    config = _config(q, k, v, softcap=5.0)
    ours = jax.grad(_loss(lambda q, k, v: dense._cuda_attention(q, k, v, config, False), dout, dlse),
                    argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(_loss(lambda q, k, v: reference.attention(
        q, k, v, window=config.window, softcap=config.softcap, return_lse=True), dout, dlse),
        argnums=(0, 1, 2))(q, k, v)
    assert ("bwd", q.shape) in CALLS
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_vmap_folds_into_batch():
    q, k, v, dout, dlse = _inputs(b=2)
    config = _config(q, k, v)
    stack = lambda x: jnp.stack([x, 2 * x, -x])  # noqa: E731
    qs, ks, vs = stack(q), stack(k), stack(v)
    attn = lambda q, k, v: dense._cuda_attention(q, k, v, config, False)  # noqa: E731
    out, lse = jax.vmap(attn)(qs, ks, vs)
    for i in range(3):
        o, l = attn(qs[i], ks[i], vs[i])
        np.testing.assert_allclose(out[i], o, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(lse[i], l, rtol=1e-6, atol=1e-6)
    # Only q batched: k and v broadcast. And gradients under vmap.
    out_q = jax.vmap(attn, in_axes=(0, None, None))(qs, k, v)[0]
    np.testing.assert_allclose(out_q[1], attn(qs[1], k, v)[0], rtol=1e-6, atol=1e-6)
    grads = jax.vmap(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v)[0] ** 2)))(qs, ks, vs)
    np.testing.assert_allclose(grads[2], jax.grad(lambda q: jnp.sum(attn(q, ks[2], vs[2])[0] ** 2))(qs[2]),
                               rtol=1e-5, atol=1e-5)
    assert all(shape[0] in (2, 6) for _, shape in CALLS)


@pytest.mark.parametrize("hq, hk, dv, spec", [
    (8, 4, 16, P("data", None, "model", None)),   # batch and heads
    (8, 4, 8, P(None, None, "model", None)),      # heads only, Dv != D
    (8, 4, 16, P("data", None, None, None)),      # batch only
    (7, 1, 16, P("data", None, None, None)),      # MQA, GQA 7
])
def test_sharded_jit_keeps_batch_and_head_sharding(hq, hk, dv, spec):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    q, k, v, dout, dlse = _inputs(b=4, hq=hq, hk=hk, dv=dv)
    config = _config(q, k, v, window=(5, 3))
    shard = NamedSharding(mesh, spec)
    qs, ks, vs, douts = (jax.device_put(x, shard) for x in (q, k, v, dout))
    lse_spec = NamedSharding(mesh, P(spec[0], spec[2], None))
    dlses = jax.device_put(dlse, lse_spec)

    def step(q, k, v, dout, dlse):
        attn = lambda q, k, v: dense._cuda_attention(q, k, v, config, False)  # noqa: E731
        out, lse = attn(q, k, v)
        grads = jax.grad(_loss(attn, dout, dlse), argnums=(0, 1, 2))(q, k, v)
        return out, lse, grads

    compiled = jax.jit(step).lower(qs, ks, vs, douts, dlses).compile()
    hlo = compiled.as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    out, lse, grads = compiled(qs, ks, vs, douts, dlses)
    assert out.sharding.spec[0] == spec[0]
    want_out, want_lse, want_grads = jax.jit(step)(q, k, v, dout, dlse)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
