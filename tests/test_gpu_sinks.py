"""Attention sinks on the kernels against the fp32 reference by the oracle rule (DESIGN.md): out, lse and the
gradients of q, k, v and the sinks, over head dims, GQA 8/1 and 7, causal and windows, rows that see no key,
packed sequences with empty ones, and paged decode with several splits. The sinks are applied around the kernels
in JAX (jax_flash/ops/_sinks.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import reference
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


@gpu
@pytest.mark.parametrize("d, hq, hk, sq, sk, causal, window", DENSE)
def test_dense_with_sinks(d, hq, hk, sq, sk, causal, window):
    b = 2
    q, k, v, dout, dlse, sinks = _random(0, (b, sq, hq, d), (b, sk, hk, d), (b, sk, hk, d), (b, sq, hq, d),
                                         (b, hq, sq), (hq,))
    qb, kb, vb, doutb = (x.astype(jnp.bfloat16) for x in (q, k, v, dout))
    kw = dict(causal=causal, window=window, return_lse=True)
    ours = _vjp(lambda q, k, v, s: jax_flash.flash_attention(q, k, v, sinks=s, implementation="cuda", **kw),
                (qb, kb, vb, sinks), (doutb, dlse))
    ref = _vjp(lambda q, k, v, s: reference.attention(q, k, v, sinks=s, **kw),
               (qb.astype(jnp.float32), kb.astype(jnp.float32), vb.astype(jnp.float32), sinks), (dout, dlse))
    naive = _vjp(lambda q, k, v, s: reference.naive_attention(q, k, v, sinks=s, **kw), (qb, kb, vb, sinks),
                 (doutb, dlse))
    _check(ours, ref, naive, NAMES)
    if causal and sq > sk:
        empty = sq - sk
        assert np.array_equal(np.asarray(ours[0][:, :empty], np.float32), np.zeros((b, empty, hq, d)))
        np.testing.assert_array_equal(np.asarray(ours[1][:, :, :empty]),
                                      np.broadcast_to(np.asarray(sinks)[None, :, None], (b, hq, empty)))


@gpu
@pytest.mark.parametrize("hq, hk, causal", [(8, 1, True), (7, 1, False)])
def test_varlen_with_sinks(hq, hk, causal):
    lengths = (100, 0, 37, 1, 250, 0)
    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lengths)]), jnp.int32)
    total, d = int(cu[-1]) + 16, 128
    q, k, v, dout, dlse, sinks = _random(1, (total, hq, d), (total, hk, d), (total, hk, d), (total, hq, d),
                                         (hq, total), (hq,))
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
