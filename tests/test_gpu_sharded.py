"""The CUDA kernels under jit with inputs sharded over batch and heads on several GPUs: results equal the
single-device run and the compiled program moves no data between devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_flash

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("spec", [P("data", None, "model", None), P("data", None, None, None),
                                  P(None, None, "model", None)])
def test_batch_and_head_sharding_on_gpus(spec):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs 2 or more GPUs")
    n = len(devices)
    # Give every named axis more than one device where the device count allows.
    shape = {("data", "model"): (2, n // 2) if n >= 4 and n % 2 == 0 else (n, 1),
             ("data",): (n, 1), ("model",): (1, n)}[tuple(a for a in spec if a)]
    mesh = Mesh(np.array(devices).reshape(shape), ("data", "model"))
    keys = jax.random.split(jax.random.key(0), 4)
    b, s, hq, hk, d = 4, 512, 8, 4, 128
    q = jax.random.normal(keys[0], (b, s, hq, d), jnp.bfloat16)
    k = jax.random.normal(keys[1], (b, s, hk, d), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, s, hk, d), jnp.bfloat16)
    dout = jax.random.normal(keys[3], (b, s, hq, d), jnp.bfloat16)

    def step(q, k, v, dout):
        out, vjp = jax.vjp(lambda q, k, v: jax_flash.flash_attention(
            q, k, v, causal=True, deterministic=True, implementation="cuda"), q, k, v)
        return (out, *vjp(dout))

    want = jax.device_get(jax.jit(step)(q, k, v, dout))
    sharded = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v, dout)]
    compiled = jax.jit(step).lower(*sharded).compile()
    hlo = compiled.as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo and "collective-permute" not in hlo
    got = compiled(*sharded)
    assert got[0].sharding.is_equivalent_to(NamedSharding(mesh, spec), 4)
    for a, w in zip(jax.device_get(got), want):
        assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(w).view(np.uint16))
