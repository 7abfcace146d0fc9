"""Context-parallel argument errors: raised at trace time (jax.eval_shape: nothing compiles), naming the
argument and what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import jax_flash.parallel as cp
from jax_flash.parallel._shard_map import shard_map

AXIS = "cp"


def _mesh(size):
    return Mesh(np.array(jax.devices("cpu")[:size]), (AXIS,))


def _shapes(b=1, s=32, hq=4, hk=2, d=8, dv=8, dtype=jnp.float32):
    return (jax.ShapeDtypeStruct((b, s, hq, d), dtype), jax.ShapeDtypeStruct((b, s, hk, d), dtype),
            jax.ShapeDtypeStruct((b, s, hk, dv), dtype))


def _trace(fn, *shapes, size=4, packed=False):
    """Traces fn(q, k, v) inside shard_map over `size` devices, sequence axis split."""
    spec = P(AXIS) if packed else P(None, AXIS)
    mapped = shard_map(fn, mesh=_mesh(size), in_specs=(spec,) * len(shapes), out_specs=spec)
    return jax.eval_shape(mapped, *shapes)


@pytest.mark.parametrize("attend", [cp.ring_attention, cp.ulysses_attention])
def test_bad_layout(attend):
    with pytest.raises(ValueError, match="layout must be one of"):
        _trace(lambda q, k, v: attend(q, k, v, axis_name=AXIS, layout="spiral"), *_shapes())


def test_bad_strategy_and_layout_in_the_wrapper():
    q, k, v = (jnp.zeros(s.shape, s.dtype) for s in _shapes())
    with pytest.raises(ValueError, match="strategy"):
        cp.context_parallel_attention(q, k, v, mesh=_mesh(4), axis=AXIS, strategy="tree")
    with pytest.raises(ValueError, match="layout"):
        cp.context_parallel_attention(q, k, v, mesh=_mesh(4), axis=AXIS, layout="spiral")


def test_ulysses_heads_must_split_over_the_axis():
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of 4"):
        _trace(lambda q, k, v: cp.ulysses_attention(q, k, v, axis_name=AXIS), *_shapes(hq=6, hk=2))
    with pytest.raises(ValueError, match=r"kv heads \(3\) must be a multiple or a divisor"):
        _trace(lambda q, k, v: cp.ulysses_attention(q, k, v, axis_name=AXIS), *_shapes(hq=12, hk=3))


def test_zigzag_needs_two_chunks_per_rank():
    # 36 tokens over 4 ranks: 9 local rows, not 2 chunks
    with pytest.raises(ValueError, match="even number of local rows"):
        _trace(lambda q, k, v: cp.ring_attention(q, k, v, axis_name=AXIS), *_shapes(s=36))
    with pytest.raises(ValueError, match="multiple of 8"):
        cp.to_layout(jnp.zeros((1, 36, 1, 1)), 4, "zigzag")


def test_window_needs_a_layout_that_can_express_it():
    with pytest.raises(ValueError, match="zigzag"):
        _trace(lambda q, k, v: cp.ring_attention(q, k, v, axis_name=AXIS, window=(4, 0)), *_shapes())
    # contiguous and striped take windows
    _trace(lambda q, k, v: cp.ring_attention(q, k, v, axis_name=AXIS, layout="striped", window=(4, 0)),
           *_shapes())


def test_packed_window_limits():
    shapes = [jax.ShapeDtypeStruct((32, h, 8), jnp.float32) for h in (4, 2, 2)]
    cu = jnp.array([0, 16, 32], jnp.int32)

    def ring(**kw):
        return lambda q, k, v: cp.ring_attention_varlen(q, k, v, cu, axis_name=AXIS, **kw)

    with pytest.raises(ValueError, match="right side"):
        _trace(ring(layout="striped", window=(2, 2)), *shapes, packed=True)
    with pytest.raises(ValueError, match="left window only with layout='striped'"):
        _trace(ring(layout="contiguous", causal=True, window=(2, 0)), *shapes, packed=True)
    with pytest.raises(TypeError, match="cu_seqlens must be int32"):
        _trace(lambda q, k, v: cp.ring_attention_varlen(q, k, v, cu.astype(jnp.int16), axis_name=AXIS),
               *shapes, packed=True)
    with pytest.raises(ValueError, match="seqused must have shape"):
        _trace(lambda q, k, v: cp.ring_attention_varlen(q, k, v, cu, seqused=jnp.zeros((3,), jnp.int32),
                                                        axis_name=AXIS), *shapes, packed=True)


def test_shapes_and_dtypes():
    ring = lambda q, k, v: cp.ring_attention(q, k, v, axis_name=AXIS)  # noqa: E731
    q, k, v = _shapes()
    with pytest.raises(ValueError, match="rank 4"):
        _trace(ring, jax.ShapeDtypeStruct((32, 4, 8), jnp.float32), k, v)
    with pytest.raises(ValueError, match="self-attention"):  # cross-attention shards
        _trace(ring, q, *_shapes(s=64)[1:])
    with pytest.raises(ValueError, match=r"multiple of kv heads"):
        _trace(ring, *_shapes(hq=3, hk=2))
    with pytest.raises(TypeError, match="one dtype"):
        _trace(ring, q, k, jax.ShapeDtypeStruct(v.shape, jnp.bfloat16))
    with pytest.raises(TypeError, match="float"):
        _trace(ring, *_shapes(dtype=jnp.int32))
    with pytest.raises(ValueError, match="softcap"):
        _trace(lambda q, k, v: cp.ring_attention(q, k, v, axis_name=AXIS, softcap=-1.0), q, k, v)


def test_axis_name_must_be_bound():
    q, k, v = (jnp.zeros(s.shape, s.dtype) for s in _shapes())
    with pytest.raises(ValueError, match="inside shard_map"):
        cp.ring_attention(q, k, v, axis_name="nowhere")


def test_cuda_where_it_cannot_run():
    import jax_flash

    if jax_flash.cuda_available():
        pytest.skip("the kernels can run here")
    with pytest.raises(ValueError, match="implementation='cuda' cannot run"):
        _trace(lambda q, k, v: cp.ring_attention(q, k, v, axis_name=AXIS, implementation="cuda"),
               *_shapes(dtype=jnp.bfloat16))
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        _trace(lambda q, k, v: cp.ulysses_attention(q, k, v, axis_name=AXIS, implementation="cuda"),
               *_shapes())
