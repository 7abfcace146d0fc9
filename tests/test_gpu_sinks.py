"""Attention sinks on the kernels against the fp32 reference by the oracle rule (DESIGN.md): out, lse and the
gradients of q, k, v and the sinks, over head dims, GQA 8/1 and 7, causal and windows, softcap, rows that see
no key, packed sequences with empty ones, sinks far above and below the scores, every forward kernel variant
the device runs, and paged decode with several splits. The dense and packed forward kernels fuse the sinks
into their final normalisation; paged attention adds them in JAX (jax_flash/ops/_sinks.py). Without sinks
the forward is the sink-free kernel's, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference
from jax_flash.ops import dense as dense_op
from jax_flash.ops._config import check_dense
from oracle import check_oracle

gpu = pytest.mark.gpu
NAMES = ("out", "lse", "dq", "dk", "dv", "dsinks")


def _random(seed, *shapes):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)


def _vjp(fn, args, cotangents):
    def run(*args):
        primals, vjp = jax.vjp(fn, *args)
        return (*primals, *vjp(cotangents))

    return jax.jit(run)(*args)


def _check(ours, ref, naive, names):
    for name, a, r, n in zip(names, ours, ref, naive):
        check_oracle(name, a, r, n)


# (D, Hq, Hk, Sq, Sk, causal, window): Sq > Sk causal leaves the first rows no key.
DENSE = [(64, 8, 1, 300, 200, True, None), (128, 7, 1, 257, 257, False, (64, 32)),
         (128, 8, 1, 128, 384, True, (100, None)), (256, 14, 2, 130, 130, True, None),
         (96, 8, 8, 64, 64, False, None)]


def _fwd_variants(d):
    return _ffi.runnable_variants("fwd", jnp.bfloat16, d, d)


@gpu
@pytest.mark.parametrize("d, hq, hk, sq, sk, causal, window", DENSE)
def test_dense_with_sinks(d, hq, hk, sq, sk, causal, window):
    _check_dense(d, hq, hk, sq, sk, causal=causal, window=window)


@gpu
@pytest.mark.parametrize("offset", [30.0, -30.0])
def test_dense_with_sinks_far_from_the_scores(offset):
    """A sink far above the scores takes nearly all the weight (out tiny, lse = the sink), one far below none."""
    _check_dense(128, 8, 1, 300, 200, causal=True, window=None, sink_offset=offset)


@gpu
def test_dense_with_sinks_and_softcap():
    _check_dense(128, 8, 2, 200, 200, causal=True, window=None, softcap=5.0)


@gpu
@pytest.mark.parametrize("d", [64, 128])
def test_dense_with_sinks_on_every_forward_variant(d):
    for variant in _fwd_variants(d):
        _check_dense(d, 8, 1, 300, 200, causal=True, window=None, variant=variant, grads=False)


def _check_dense(d, hq, hk, sq, sk, *, causal, window, softcap=None, sink_offset=0.0, variant=None, grads=True):
    b = 2
    q, k, v, dout, dlse, sinks = _random(0, (b, sq, hq, d), (b, sk, hk, d), (b, sk, hk, d), (b, sq, hq, d),
                                         (b, hq, sq), (hq,))
    sinks = sinks + sink_offset
    qb, kb, vb, doutb = (x.astype(jnp.bfloat16) for x in (q, k, v, dout))
    kw = dict(causal=causal, window=window, softcap=softcap, return_lse=True)
    args, args32 = (qb, kb, vb, sinks), (qb.astype(jnp.float32), kb.astype(jnp.float32), vb.astype(jnp.float32),
                                         sinks)
    if grads:
        ours = _vjp(lambda q, k, v, s: jax_flash.flash_attention(q, k, v, sinks=s, implementation="cuda",
                                                                 _variant=variant, **kw), args, (doutb, dlse))
        ref = _vjp(lambda q, k, v, s: reference.attention(q, k, v, sinks=s, **kw), args32, (dout, dlse))
        naive = _vjp(lambda q, k, v, s: reference.naive_attention(q, k, v, sinks=s, **kw), args, (doutb, dlse))
        _check(ours, ref, naive, NAMES)
    else:
        ours = jax.jit(lambda q, k, v, s: jax_flash.flash_attention(q, k, v, sinks=s, implementation="cuda",
                                                                    _variant=variant, **kw))(*args)
        ref = reference.attention(*args32[:3], sinks=sinks, **kw)
        _check(ours, ref, reference.naive_attention(*args[:3], sinks=sinks, **kw), NAMES[:2])
    if causal and sq > sk:
        empty = sq - sk
        assert np.array_equal(np.asarray(ours[0][:, :empty], np.float32), np.zeros((b, empty, hq, d)))
        np.testing.assert_array_equal(np.asarray(ours[1][:, :, :empty]),
                                      np.broadcast_to(np.asarray(sinks)[None, :, None], (b, hq, empty)))


@gpu
@pytest.mark.parametrize("hq, hk, causal, sink_offset", [(8, 1, True, 0.0), (7, 1, False, 0.0), (8, 1, True, 30.0)])
def test_varlen_with_sinks(hq, hk, causal, sink_offset):
    lengths = (100, 0, 37, 1, 250, 0)
    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lengths)]), jnp.int32)
    total, d = int(cu[-1]) + 16, 128
    q, k, v, dout, dlse, sinks = _random(1, (total, hq, d), (total, hk, d), (total, hk, d), (total, hq, d),
                                         (hq, total), (hq,))
    sinks = sinks + sink_offset
    qb, kb, vb, doutb = (x.astype(jnp.bfloat16) for x in (q, k, v, dout))
    kw = dict(causal=causal, return_lse=True)
    ours = _vjp(lambda q, k, v, s: jax_flash.flash_attention_varlen(q, k, v, cu, cu, 250, 250, sinks=s,
                                                                     implementation="cuda", **kw),
                (qb, kb, vb, sinks), (doutb, dlse))
    ref = _vjp(lambda q, k, v, s: reference.attention_varlen(q, k, v, cu, cu, sinks=s, **kw),
               (qb.astype(jnp.float32), kb.astype(jnp.float32), vb.astype(jnp.float32), sinks), (dout, dlse))
    naive = _vjp(lambda q, k, v, s: reference.naive_attention_varlen(q, k, v, cu, cu, sinks=s, **kw),
                 (qb, kb, vb, sinks), (doutb, dlse))
    _check(ours, ref, naive, NAMES)
    tail = np.asarray(ours[0][int(cu[-1]):], np.float32)
    assert np.array_equal(tail, np.zeros_like(tail))
    # Rows after the last sequence see no key: lse is the sink there, as everywhere a row sees none.
    np.testing.assert_array_equal(np.asarray(ours[1][:, int(cu[-1]):]),
                                  np.broadcast_to(np.asarray(sinks)[:, None], (hq, total - int(cu[-1]))))


@gpu
@pytest.mark.parametrize("d", [64, 128])
def test_without_sinks_the_forward_is_the_sink_free_kernel(d):
    """sinks=None runs the sink-free kernel (the same bits as the FFI call without a sinks operand), and a sink
    of -inf changes nothing but roundings."""
    b, hq, hk, sq, sk = 2, 8, 2, 300, 300
    q, k, v = (x.astype(jnp.bfloat16) for x in _random(3, (b, sq, hq, d), (b, sk, hk, d), (b, sk, hk, d)))
    for variant in _fwd_variants(d):
        config = check_dense(q, k, v, causal=True, window=None, softcap=None, scale=None, variant=variant)
        direct = jax.jit(lambda q, k, v: dense_op._fwd_sharded(q, k, v, config))(q, k, v)
        api = jax.jit(lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=True, return_lse=True,
                                                                implementation="cuda", _variant=variant))(q, k, v)
        for a, b_ in zip(api, direct):
            assert np.array_equal(np.asarray(a), np.asarray(b_)), variant
        no_sink = jax.jit(lambda q, k, v: jax_flash.flash_attention(
            q, k, v, causal=True, return_lse=True, implementation="cuda", _variant=variant,
            sinks=jnp.full((hq,), -jnp.inf, jnp.float32)))(q, k, v)
        np.testing.assert_allclose(np.asarray(no_sink[0], np.float32), np.asarray(api[0], np.float32),
                                   rtol=1e-2, atol=1e-2, err_msg=variant)
        np.testing.assert_allclose(np.asarray(no_sink[1]), np.asarray(api[1]), rtol=1e-5, atol=1e-5,
                                   err_msg=variant)


@gpu
@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_paged_decode_with_sinks(num_splits):
    b, hq, hk, d, page_size, pages = 4, 8, 1, 128, 64, 16
    q, k_cache, v_cache, sinks = _random(2, (b, 1, hq, d), (b * pages, page_size, hk, d),
                                         (b * pages, page_size, hk, d), (hq,))
    table = jnp.asarray(np.random.default_rng(2).permutation(b * pages).reshape(b, pages), jnp.int32)
    lengths = jnp.asarray([0, 1, 500, 1024], jnp.int32)  # an empty cache: its query sees no key
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k_cache, v_cache))
    ours = jax_flash.paged_attention(qb, kb, vb, table, lengths, num_splits=num_splits, return_lse=True,
                                     sinks=sinks, implementation="cuda")
    ref = reference.paged_attention(*(x.astype(jnp.float32) for x in (qb, kb, vb)), table, lengths,
                                    return_lse=True, sinks=sinks)
    naive = reference.naive_paged_attention(qb, kb, vb, table, lengths, return_lse=True, sinks=sinks)
    _check(ours, ref, naive, NAMES[:2])
    np.testing.assert_array_equal(np.asarray(ours[1][0, :, 0]), np.asarray(sinks))
