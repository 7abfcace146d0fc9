"""Bad static input raises ValueError/TypeError at trace time, naming the argument."""

import jax
import jax.numpy as jnp
import pytest

import jax_flash


def _qkv(b=2, sq=8, sk=8, hq=4, hk=2, d=64, dv=64, dtype=jnp.bfloat16):
    keys = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(keys[0], (b, sq, hq, d), dtype),
            jax.random.normal(keys[1], (b, sk, hk, d), dtype),
            jax.random.normal(keys[2], (b, sk, hk, dv), dtype))


@pytest.mark.parametrize("change, error, match", [
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have rank 4"),
    (lambda q, k, v: (q, k[:1], v), ValueError, "batch"),
    (lambda q, k, v: (q, k, v[:, :4]), ValueError, "sequence length"),
    (lambda q, k, v: (q, k, v[:, :, :1]), ValueError, "heads"),
    (lambda q, k, v: (q[..., :32], k, v), ValueError, "head dim"),
    (lambda q, k, v: (q[:, :, :3], k, v), ValueError, "multiple of kv heads"),
    (lambda q, k, v: (q.astype(jnp.float32), k, v), TypeError, "bfloat16 or float16"),
    (lambda q, k, v: (q, k.astype(jnp.float16), v), TypeError, "one dtype"),
    (lambda q, k, v: (q[..., :12], k[..., :12], v), ValueError, "multiple of 8"),
    (lambda q, k, v: (jnp.zeros((2, 8, 4, 264), q.dtype), jnp.zeros((2, 8, 2, 264), q.dtype), v),
     ValueError, "multiple of 8 in"),
])
def test_bad_shapes_and_dtypes(change, error, match):
    q, k, v = change(*_qkv())
    with pytest.raises(error, match=match):
        jax_flash.flash_attention(q, k, v)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(window=(-2, 0)), ValueError, r"window\[0\]"),
    (dict(window=(4, -5)), ValueError, r"window\[1\]"),
    (dict(window=3), ValueError, "pair"),
    (dict(window=(1.5, 0)), TypeError, "window"),
    (dict(softcap=0.0), ValueError, "softcap"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(softcap=float("inf")), ValueError, "softcap"),
    (dict(scale=float("nan")), ValueError, "scale"),
    (dict(scale=float("inf")), ValueError, "scale"),
    (dict(scale=-0.5), ValueError, "scale"),
    (dict(causal=1), TypeError, "causal"),
    (dict(return_lse="yes"), TypeError, "return_lse"),
    (dict(implementation="triton"), ValueError, "implementation"),
])
def test_bad_attributes(kwargs, error, match):
    with pytest.raises(error, match=match):
        jax_flash.flash_attention(*_qkv(), **kwargs)


def test_errors_raise_at_trace_time():
    q, k, v = _qkv()
    fn = jax.jit(lambda q, k, v: jax_flash.flash_attention(q, k, v, softcap=-3.0))
    with pytest.raises(ValueError, match="softcap"):
        fn.lower(q, k, v)


def test_cuda_where_it_cannot_run_is_an_error():
    if jax_flash.cuda_available():
        pytest.skip("the kernels can run here")
    with pytest.raises(ValueError, match="implementation='cuda' cannot run"):
        jax_flash.flash_attention(*_qkv(), implementation="cuda")
