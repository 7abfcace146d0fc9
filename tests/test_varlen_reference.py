"""Packed (THD) attention through the reference: each sequence equals dense attention on its own rows,
padding and trailing rows are 0 with zero gradient, and bad index arrays are rejected at trace time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference


def _packing(rng, lengths_q, lengths_k, pad):
    """cu_seqlens with `pad` spare rows after each sequence's used rows, plus seqused."""
    cu_q, cu_k = [0], [0]
    for lq, lk in zip(lengths_q, lengths_k):
        cu_q.append(cu_q[-1] + lq + pad)
        cu_k.append(cu_k[-1] + lk + pad)
    used_q, used_k = np.array(lengths_q, np.int32), np.array(lengths_k, np.int32)
    return np.array(cu_q, np.int32), np.array(cu_k, np.int32), used_q, used_k


@pytest.mark.parametrize("causal, window, softcap", [(False, None, None), (True, None, None),
                                                      (True, (3, 0), None), (False, (2, 2), 4.0)])
@pytest.mark.parametrize("pad", [0, 3])
def test_each_sequence_is_dense_attention(causal, window, softcap, pad):
    rng = np.random.default_rng(0)
    lengths_q, lengths_k = [5, 0, 1, 9, 4], [7, 3, 0, 9, 2]  # empty sequences; Sq > Sk and Sq < Sk
    cu_q, cu_k, used_q, used_k = _packing(rng, lengths_q, lengths_k, pad)
    tail = 4  # rows after cu_seqlens[-1]
    tq, tk = int(cu_q[-1]) + tail, int(cu_k[-1]) + tail
    q = jnp.asarray(rng.standard_normal((tq, 6, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((tk, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((tk, 2, 8)), jnp.float32)
    kw = dict(causal=causal, window=window, softcap=softcap)
    seqused = dict(seqused_q=jnp.asarray(used_q), seqused_k=jnp.asarray(used_k)) if pad else {}
    out, lse = reference.attention_varlen(q, k, v, jnp.asarray(cu_q), jnp.asarray(cu_k), return_lse=True,
                                          **seqused, **kw)
    out, lse = np.asarray(out), np.asarray(lse)
    covered = np.zeros(tq, bool)
    for i, (lq, lk) in enumerate(zip(lengths_q, lengths_k)):
        rows_q, rows_k = slice(cu_q[i], cu_q[i] + lq), slice(cu_k[i], cu_k[i] + lk)
        covered[rows_q] = True
        if lq == 0:
            continue
        if lk == 0:
            assert np.all(out[rows_q] == 0) and np.all(np.isneginf(lse[:, rows_q]))
            continue
        want, want_lse = reference.attention(q[None, rows_q], k[None, rows_k], v[None, rows_k],
                                             return_lse=True, **kw)
        np.testing.assert_allclose(out[rows_q], want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.isneginf(lse[:, rows_q]), np.isneginf(want_lse[0]))
    assert np.all(out[~covered] == 0) and np.all(np.isneginf(lse[:, ~covered]))


def test_padding_rows_get_zero_gradient_and_shapes_reuse_one_executable():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((24, 4, 8)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((24, 2, 8)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((24, 2, 8)), jnp.bfloat16)

    @jax.jit
    def grads(q, k, v, cu, used):
        def loss(q, k, v):
            out = jax_flash.flash_attention_varlen(q, k, v, cu, cu, 16, 16, seqused_q=used, seqused_k=used,
                                                   causal=True)
            return jnp.sum(out.astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    for cu, used in (([0, 10, 20], [7, 10]), ([0, 4, 22], [4, 9]), ([0, 0, 16], [0, 16])):
        cu, used = np.array(cu, np.int32), np.array(used, np.int32)
        dq, dk, dv = (np.asarray(g, np.float32) for g in grads(q, k, v, cu, used))
        padding = np.ones(24, bool)
        for start, n in zip(cu[:-1], used):
            padding[start:start + n] = False
        for g in (dq, dk, dv):
            assert np.isfinite(g).all() and np.all(g[padding] == 0)
    assert grads._cache_size() == 1


@pytest.mark.parametrize("change, error, match", [
    (dict(cu_seqlens_q=np.array([0, 4], np.int64)), TypeError, "cu_seqlens_q must be int32"),
    (dict(cu_seqlens_k=np.array([0, 4, 8], np.int32)), ValueError, r"\(N \+ 1,\)"),
    (dict(cu_seqlens_q=np.zeros((2, 2), np.int32)), ValueError, "cu_seqlens_q must have shape"),
    (dict(seqused_q=np.array([1, 2], np.int32)), ValueError, r"seqused_q must have shape \(1,\)"),
    (dict(max_seqlen_q=4.0), TypeError, "max_seqlen_q"),
    (dict(max_seqlen_k=-1), TypeError, "max_seqlen_k"),
    (dict(q=np.zeros((8, 3, 16), np.float16)), ValueError, "multiple of kv heads"),
    (dict(q=np.zeros((1, 8, 4, 16), np.float16)), ValueError, "q must have rank 3"),
    (dict(implementation="cuda"), ValueError, "implementation='cuda' cannot run"),
])
def test_bad_varlen_arguments(change, error, match, monkeypatch):
    # implementation="cuda" must fail with the reason where the kernels cannot run; simulate that here.
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: "no GPU in this test")
    args = dict(q=np.zeros((8, 4, 16), np.float16), k=np.zeros((8, 2, 16), np.float16),
                v=np.zeros((8, 2, 16), np.float16), cu_seqlens_q=np.array([0, 8], np.int32),
                cu_seqlens_k=np.array([0, 8], np.int32), max_seqlen_q=8, max_seqlen_k=8)
    args.update(change)
    with pytest.raises(error, match=match):
        jax_flash.flash_attention_varlen(**args)
