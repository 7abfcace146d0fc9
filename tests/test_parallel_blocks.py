"""The blocks jax_flash.parallel runs (jax_flash/ops/_with_lse.py), on the reference path: the backward from the
LSE (reference.attention_bwd_from_lse, its one definition) equals autodiff of reference attention, and the
gradients of blocks over disjoint keys, each taken with the merged out and lse, add up to the whole one's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_flash import reference
from jax_flash.ops import _with_lse
from jax_flash.ops._config import AttentionConfig
from jax_flash.parallel._merge import merge
from test_parallel_ring import assert_close


def _arrays(seed, lead, sq, sk, hq=6, hk=2, d=8, dv=12):
    """q, k, v, dout, dlse with leading axes `lead` ((B,) dense, () packed); lse heads before rows."""
    rng = np.random.default_rng(seed)
    shapes = [(*lead, sq, hq, d), (*lead, sk, hk, d), (*lead, sk, hk, dv), (*lead, sq, hq, dv), (*lead, hq, sq)]
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)


def _autodiff_and_from_lse(attend, backward_from_lse, q, k, v, dout, dlse):
    """(autodiff gradients, backward_from_lse(out, lse) gradients) of attend(q, k, v) -> (out, lse), in one
    compiled program (eager ops compile one by one)."""
    @jax.jit
    def both(q, k, v, dout, dlse):
        (out, lse), vjp = jax.vjp(attend, q, k, v)
        return vjp((dout, dlse)), backward_from_lse(q, k, v, out, lse, dout, dlse)

    return both(q, k, v, dout, dlse)


# Masks where some query rows see no key (causal with Sq > Sk, a narrow window), softcap, GQA.
MASKS = [dict(causal=False), dict(causal=True), dict(window=(3, 1)), dict(causal=True, window=(2, 0), softcap=2.0),
         dict(softcap=1.5)]


@pytest.mark.parametrize("mask", MASKS, ids=str)
def test_dense_backward_from_lse_equals_autodiff(mask):
    q, k, v, dout, dlse = _arrays(0, (2,), sq=20, sk=13)
    grads, ours = _autodiff_and_from_lse(
        lambda q, k, v: reference.attention(q, k, v, return_lse=True, **mask),
        lambda *args: reference.attention_bwd_from_lse(*args, **mask), q, k, v, dout, dlse)
    for name, a, b in zip(("dq", "dk", "dv"), ours, grads):
        assert_close(name, a, b, tol=1e-5)


@pytest.mark.parametrize("mask", MASKS[:2] + MASKS[3:], ids=str)
def test_packed_backward_from_lse_equals_autodiff(mask):
    q, k, v, dout, dlse = _arrays(1, (), sq=40, sk=44)
    cu_q, cu_k = jnp.array([2, 12, 12, 30, 36], jnp.int32), jnp.array([0, 9, 20, 33, 40], jnp.int32)
    meta = dict(seqused_q=jnp.array([8, 0, 15, 6], jnp.int32), seqused_k=jnp.array([9, 4, 10, 7], jnp.int32))

    def attend(q, k, v):
        return reference.attention_varlen(q, k, v, cu_q, cu_k, return_lse=True, **meta, **mask)

    def backward_from_lse(*args):
        return reference.attention_varlen_bwd_from_lse(*args, cu_q, cu_k, **meta, **mask)

    grads, ours = _autodiff_and_from_lse(attend, backward_from_lse, q, k, v, dout, dlse)
    for name, a, b in zip(("dq", "dk", "dv"), ours, grads):
        assert_close(name, a, b, tol=1e-5)


def test_block_gradients_add_up_to_the_whole():
    """Keys split in two blocks: merged forward = whole forward; block backwards with the merged out and lse
    sum to the whole backward (dq) or fill their keys' rows (dk, dv). Through ops' xla blocks."""
    config = AttentionConfig(scale=0.3, softcap=3.0, window_left=-1, window_right=-1)

    @jax.jit
    def blocks_and_whole(q, k, v, dout, dlse):
        whole_out, whole_lse = _with_lse.attention_fwd_lse(q, k, v, config, "xla")
        whole = _with_lse.attention_bwd_from_lse(q, k, v, whole_out, whole_lse, dout, dlse, config, "xla", False)
        halves = [(k[:, :7], v[:, :7]), (k[:, 7:], v[:, 7:])]
        parts = [_with_lse.attention_fwd_lse(q, kb, vb, config, "xla") for kb, vb in halves]
        out, lse = merge(parts[0], parts[1])
        grads = [_with_lse.attention_bwd_from_lse(q, kb, vb, out, lse, dout, dlse, config, "xla", False)
                 for kb, vb in halves]
        return (out, lse, grads), (whole_out, whole_lse, whole)

    (out, lse, grads), (whole_out, whole_lse, whole) = blocks_and_whole(*_arrays(2, (2,), sq=16, sk=16))
    assert_close("out", out, whole_out)
    assert_close("lse", lse, whole_lse)
    assert_close("dq", grads[0][0] + grads[1][0], whole[0])
    for i, name in ((1, "dk"), (2, "dv")):
        assert_close(name, jnp.concatenate([grads[0][i], grads[1][i]], axis=1), whole[i])
