"""Attention sinks on the CPU: the reference against the sink written out as an explicit score column, the
"xla" implementation, the CUDA path's JAX-side sink math (ops/_sinks.py) with the reference standing in for the
kernels, and ring / Ulysses attention in shard_map on 8 host devices. float32; the kernels' own grid with
sinks is tests/test_gpu_sinks.py."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import jax_flash
import jax_flash.parallel as cp
from jax_flash import _ffi, reference
from jax_flash.parallel._shard_map import shard_map

TOL = dict(rtol=2e-5, atol=2e-5)


def _explicit(q, k, v, mask, sinks, scale=None):
    """Attention with the sink as one more score column (value 0): the definition written out. q (B, Sq, Hq,
    D), mask broadcastable to (B, Hq, Sq, Sk). Returns out and lse (B, Hq, Sq)."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") * scale
    s = jnp.where(mask, s, -jnp.inf)
    column = jnp.broadcast_to(sinks[None, :, None, None], (*s.shape[:3], 1))
    scores = jnp.concatenate([s, column], axis=-1)
    lse = jax.nn.logsumexp(scores, axis=-1)
    p = jnp.exp(scores - lse[..., None])[..., :-1]
    return jnp.einsum("bhqk,bkhd->bqhd", p, v, precision="highest"), lse


def _random(seed, *shapes):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)


def _vjp(fn, args, cotangents):
    """(out, lse) of fn(*args) and the gradients of <(out, lse), cotangents> with respect to every arg."""
    def run(*args):
        primals, vjp = jax.vjp(fn, *args)
        return (*primals, *vjp(cotangents))

    return jax.jit(run)(*args)


def _bf16(*arrays):
    return tuple(x.astype(jnp.bfloat16) for x in arrays)


def _kernel_dtypes(q, k, v, sinks, dout, dlse):
    """q, k, v and dout in bfloat16, as the kernels take them; sinks and dlse stay float32."""
    return (*_bf16(q, k, v), sinks, *_bf16(dout), dlse)


def _assert_bf16_close(ours, expected, names):
    """bfloat16 results of two paths of the same math: within a few bf16 roundings of the magnitude."""
    for name, a, b in zip(names, ours, expected):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape and np.isfinite(a).all(), name
        bound = 2e-2 * max(1.0, float(np.abs(b).max()))
        assert float(np.abs(a - b).max()) <= bound, (name, float(np.abs(a - b).max()), bound)


def _assert_all_close(ours, expected, names):
    for name, a, b in zip(names, ours, expected):
        a, b = np.asarray(a), np.asarray(b)
        assert np.isfinite(a).all(), f"{name}: not finite"
        np.testing.assert_allclose(a, b, err_msg=name, **TOL)


NAMES = ("out", "lse", "dq", "dk", "dv", "dsinks")
# (Hq, Hk, Sq, Sk, causal, window): GQA 8/1 and 7; Sq > Sk causal leaves the first rows no key; windows.
DENSE_CASES = [(8, 1, 12, 5, True, None), (7, 1, 9, 9, False, (3, 2)), (14, 2, 6, 10, True, (2, None))]


def _dense_inputs(hq, hk, sq, sk, seed=0, b=2, d=8, dv=16):
    q, k, v, dout, dlse, sinks = _random(seed, (b, sq, hq, d), (b, sk, hk, d), (b, sk, hk, dv), (b, sq, hq, dv),
                                         (b, hq, sq), (hq,))
    return q, k, v, sinks, dout, dlse


@pytest.mark.parametrize("hq, hk, sq, sk, causal, window", DENSE_CASES)
def test_reference_equals_explicit_sink_column(hq, hk, sq, sk, causal, window):
    q, k, v, sinks, dout, dlse = _dense_inputs(hq, hk, sq, sk)
    mask = reference.visible_mask(sq, sk, causal, window)
    ref = _vjp(lambda q, k, v, s: reference.attention(q, k, v, causal=causal, window=window, return_lse=True,
                                                      sinks=s), (q, k, v, sinks), (dout, dlse))
    explicit = _vjp(lambda q, k, v, s: _explicit(q, k, v, mask, s), (q, k, v, sinks), (dout, dlse))
    _assert_all_close(ref, explicit, NAMES)


def test_xla_implementation_is_the_reference():
    q, k, v, sinks, dout, dlse = _kernel_dtypes(*_dense_inputs(7, 1, 9, 9))
    xla = _vjp(lambda q, k, v, s: jax_flash.flash_attention(q, k, v, causal=True, window=(3, 2), return_lse=True,
                                                            sinks=s, implementation="xla"),
               (q, k, v, sinks), (dout, dlse))
    ref = _vjp(lambda q, k, v, s: reference.attention(q, k, v, causal=True, window=(3, 2), return_lse=True,
                                                      sinks=s), (q, k, v, sinks), (dout, dlse))
    for name, a, b in zip(NAMES, xla, ref):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32), err_msg=name)


def test_rows_that_see_no_key_get_zero_and_the_sink():
    q, k, v, sinks, dout, dlse = _dense_inputs(8, 1, 12, 5)
    out, lse, *grads = _vjp(lambda q, k, v, s: reference.attention(q, k, v, causal=True, return_lse=True,
                                                                   sinks=s), (q, k, v, sinks), (dout, dlse))
    empty = 12 - 5  # causal, bottom-right aligned: rows 0..6 sit before key 0
    assert np.array_equal(np.asarray(out[:, :empty]), np.zeros_like(out[:, :empty]))
    np.testing.assert_array_equal(np.asarray(lse[:, :, :empty]),
                                  np.broadcast_to(np.asarray(sinks)[None, :, None], lse[:, :, :empty].shape))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert np.array_equal(np.asarray(grads[0][:, :empty]), np.zeros_like(grads[0][:, :empty]))


def test_naive_reference_takes_sinks():
    q, k, v, sinks, _, _ = _dense_inputs(8, 1, 12, 5)
    ref = reference.attention(q, k, v, causal=True, return_lse=True, sinks=sinks)
    naive = reference.naive_attention(q, k, v, causal=True, return_lse=True, sinks=sinks)
    _assert_all_close(naive, ref, NAMES[:2])


LENGTHS = (5, 0, 7, 3)  # an empty sequence
CU = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int32)
TOTAL = int(CU[-1]) + 3  # rows after the last sequence: padding


def _varlen_inputs(hq=8, hk=1, d=8, dv=16, seed=3):
    q, k, v, dout, dlse, sinks = _random(seed, (TOTAL, hq, d), (TOTAL, hk, d), (TOTAL, hk, dv), (TOTAL, hq, dv),
                                         (hq, TOTAL), (hq,))
    used = jnp.asarray([4, 0, 7, 3], jnp.int32)  # sequence 0 has a padding row
    return q, k, v, sinks, dout, dlse, jnp.asarray(CU), used


@pytest.mark.parametrize("causal, window", [(True, None), (False, (2, 1))])
def test_varlen_reference_equals_explicit_sink_column(causal, window):
    q, k, v, sinks, dout, dlse, cu, used = _varlen_inputs()
    mask = reference.varlen_mask(cu, cu, TOTAL, TOTAL, seqused_q=used, seqused_k=used, causal=causal,
                                 window=window)

    def explicit(q, k, v, s):
        out, lse = _explicit(q[None], k[None], v[None], mask, s)
        return out[0], lse[0]

    kw = dict(seqused_q=used, seqused_k=used, causal=causal, window=window, return_lse=True)
    ref = _vjp(lambda q, k, v, s: reference.attention_varlen(q, k, v, cu, cu, sinks=s, **kw), (q, k, v, sinks),
               (dout, dlse))
    _assert_all_close(ref, _vjp(explicit, (q, k, v, sinks), (dout, dlse)), NAMES)
    out, lse = ref[:2]
    padding = np.ones(TOTAL, bool)
    for start, n in zip(CU[:-1], np.asarray(used)):
        padding[start:start + n] = False
    assert np.array_equal(np.asarray(out)[padding], np.zeros_like(np.asarray(out)[padding]))
    np.testing.assert_array_equal(np.asarray(lse)[:, padding],
                                  np.broadcast_to(np.asarray(sinks)[:, None], (8, padding.sum())))


def _paged_inputs(seed=5, b=3, hq=8, hk=1, d=8, page_size=8, pages_per_seq=4):
    num_pages = b * pages_per_seq
    q, k_cache, v_cache, sinks = _random(seed, (b, 1, hq, d), (num_pages, page_size, hk, d),
                                         (num_pages, page_size, hk, d), (hq,))
    table = jnp.asarray(np.random.default_rng(seed).permutation(num_pages).reshape(b, pages_per_seq), jnp.int32)
    lengths = jnp.asarray([0, 13, 32], jnp.int32)  # an empty cache: its query sees no key
    return q, k_cache, v_cache, table, lengths, sinks


def test_paged_decode_reference_equals_dense_with_sinks():
    q, k_cache, v_cache, table, lengths, sinks = _paged_inputs()
    out, lse = reference.paged_attention(q, k_cache, v_cache, table, lengths, return_lse=True, sinks=sinks)
    keys = reference.gather_pages(k_cache, table, lengths)
    values = reference.gather_pages(v_cache, table, lengths)
    mask = (jnp.arange(keys.shape[1])[None, :] < lengths[:, None])[:, None, None, :]
    expected = _explicit(q, keys, values, mask, sinks)
    _assert_all_close((out, lse), expected, NAMES[:2])
    np.testing.assert_array_equal(np.asarray(lse[0, :, 0]), np.asarray(sinks))


def test_sinks_are_checked():
    q, k, v, sinks, _, _ = _kernel_dtypes(*_dense_inputs(8, 1, 4, 4))
    with pytest.raises(ValueError, match=r"sinks must have shape \(Hq,\) = \(8,\).*\(4,\)"):
        jax_flash.flash_attention(q, k, v, sinks=sinks[:4])
    with pytest.raises(TypeError, match="sinks must be a float array"):
        jax_flash.flash_attention(q, k, v, sinks=jnp.zeros(8, jnp.int32))


# ---------------------------------------------------------------------------------------------------------
# The CUDA path's JAX side: the reference stands in for the kernels. The dense and packed forwards take the sinks
# as the kernels do, an lse-shaped operand (ops/_sinks.sink_rows); the paged one is sink-free.


def _with_row_sinks(out, lse, sink_rows, inside=None):
    """What the forward kernels make of their sinks operand: each row's softmax with its sink column, from the
    sink-free float32 (out, lse); rows outside every sequence (inside False) untouched, as the kernels leave
    them (out 0, lse -inf)."""
    new_lse = jnp.logaddexp(lse, sink_rows)
    seen = jnp.isfinite(lse)
    keep = jnp.where(seen, jnp.exp(jnp.where(seen, lse, 0) - new_lse), 0)
    if inside is not None:
        new_lse, keep = jnp.where(inside, new_lse, lse), jnp.where(inside, keep, 1)
    return out * jnp.swapaxes(keep, -1, -2)[..., None], new_lse


def _inside_sequences(cu, used, total):
    """(total,) bool: the token rows [cu[i], cu[i] + used[i]) of some sequence."""
    t = jnp.arange(total)[None]
    return jnp.any((t >= cu[:-1, None]) & (t < (cu[:-1] + used)[:, None]), axis=0)


def fake_fwd(q, k, v, config, sinks=None):
    out, lse = reference.attention(q, k, v, window=config.window, softcap=config.softcap, scale=config.scale,
                                   return_lse=True)
    if sinks is not None:
        assert sinks.shape == lse.shape and sinks.dtype == jnp.float32
        out, lse = _with_row_sinks(out, lse, sinks)
    return out.astype(q.dtype), lse


def fake_bwd(q, k, v, out, lse, dout, dlse, config, deterministic):
    grads = reference.attention_bwd_from_lse(q, k, v, out, lse, dout, dlse, window=config.window,
                                             softcap=config.softcap, scale=config.scale)
    return tuple(g.astype(q.dtype) for g in grads)


def fake_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k, sinks=None):
    out, lse = reference.attention_varlen(q, k, v, cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                          window=config.window, softcap=config.softcap, scale=config.scale,
                                          return_lse=True)
    if sinks is not None:
        assert sinks.shape == lse.shape and sinks.dtype == jnp.float32
        out, lse = _with_row_sinks(out, lse, sinks, _inside_sequences(cu_q, used_q, q.shape[0]))
    return out.astype(q.dtype), lse


def fake_varlen_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config, deterministic, max_q,
                    max_k):
    grads = reference.attention_varlen_bwd_from_lse(q, k, v, out, lse, dout, dlse, cu_q, cu_k, seqused_q=used_q,
                                                    seqused_k=used_k, window=config.window,
                                                    softcap=config.softcap, scale=config.scale)
    return tuple(g.astype(q.dtype) for g in grads)


def fake_paged_fwd(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits,
                   max_seqlen_q=None, split_halving=False):
    out, lse = reference.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens,
                                         cu_seqlens_q=cu_seqlens_q, causal=False, window=config.window,
                                         softcap=config.softcap, scale=config.scale, return_lse=True)
    return out.astype(q.dtype), lse


@pytest.fixture
def stand_in_kernels(monkeypatch):
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_ffi, "supported", lambda dtype, d, dv: True)
    for name, fake in (("attn_fwd", fake_fwd), ("attn_bwd", fake_bwd), ("attn_varlen_fwd", fake_varlen_fwd),
                       ("attn_varlen_bwd", fake_varlen_bwd), ("paged_fwd", fake_paged_fwd)):
        monkeypatch.setattr(_ffi, name, fake)


def _both(fn, args, cotangents):
    """fn's results and gradients on the stood-in kernels ("cuda") and on the reference ("xla"), jitted."""
    return tuple(jax.jit(lambda *a, impl=impl: _vjp(functools.partial(fn, implementation=impl), a, cotangents))(
        *args) for impl in ("cuda", "xla"))


@pytest.mark.parametrize("hq, hk, sq, sk, causal, window", DENSE_CASES[:2])
def test_kernel_path_dense(stand_in_kernels, hq, hk, sq, sk, causal, window):
    q, k, v, sinks, dout, dlse = _kernel_dtypes(*_dense_inputs(hq, hk, sq, sk))
    ours, ref = _both(lambda q, k, v, s, implementation: jax_flash.flash_attention(
        q, k, v, causal=causal, window=window, return_lse=True, sinks=s, implementation=implementation),
        (q, k, v, sinks), (dout, dlse))
    _assert_bf16_close(ours, ref, NAMES)


def test_kernel_path_segment_ids_and_vmap(stand_in_kernels):
    q, k, v, sinks, dout, dlse = _kernel_dtypes(*_dense_inputs(8, 1, 12, 12))
    ids = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3, [3] * 12], jnp.int32)

    def attend(q, k, v, s, implementation):
        def fn(q, k, v, s):
            return jax_flash.flash_attention(q, k, v, causal=True, return_lse=True, segment_ids=ids,
                                             max_segments=2, sinks=s, implementation=implementation)

        return jax.vmap(fn, in_axes=(0, 0, 0, None))(q[None], k[None], v[None], s)

    ours, ref = _both(lambda q, k, v, s, implementation: jax.tree.map(lambda x: x[0], attend(
        q, k, v, s, implementation)), (q, k, v, sinks), (dout, dlse))
    _assert_bf16_close(ours, ref, NAMES)


def test_kernel_path_varlen(stand_in_kernels):
    q, k, v, sinks, dout, dlse, cu, used = _varlen_inputs(hq=7, hk=1)
    q, k, v, sinks, dout, dlse = _kernel_dtypes(q, k, v, sinks, dout, dlse)
    ours, ref = _both(lambda q, k, v, s, implementation: jax_flash.flash_attention_varlen(
        q, k, v, cu, cu, 7, 7, seqused_q=used, seqused_k=used, causal=True, return_lse=True, sinks=s,
        implementation=implementation), (q, k, v, sinks), (dout, dlse))
    _assert_bf16_close(ours, ref, NAMES)


def test_kernel_path_paged(stand_in_kernels):
    q, k_cache, v_cache, table, lengths, sinks = _paged_inputs()
    q, k_cache, v_cache = _bf16(q, k_cache, v_cache)
    ours, ref = (jax_flash.paged_attention(q, k_cache, v_cache, table, lengths, num_splits=2, return_lse=True,
                                           sinks=sinks, implementation=impl) for impl in ("cuda", "xla"))
    _assert_bf16_close(ours, ref, NAMES[:2])


def test_kernel_path_vmap_of_batched_sinks(stand_in_kernels):
    """Sinks that differ per vmapped element reach each element's rows: the lse-shaped operand folds into the
    batch (dense) and concatenates with the tokens (packed) like lse."""
    q, k, v, sinks, dout, dlse = _kernel_dtypes(*_dense_inputs(8, 1, 7, 9))
    sinks2 = jnp.stack([sinks, sinks[::-1] * 3.0])
    q2, k2, v2 = (jnp.stack([x, x[::-1]]) for x in (q, k, v))

    def dense(q, k, v, s, implementation):
        return jax.vmap(lambda q, k, v, s: jax_flash.flash_attention(
            q, k, v, causal=True, return_lse=True, sinks=s, implementation=implementation))(q, k, v, s)

    ours, ref = _both(dense, (q2, k2, v2, sinks2), tuple(jnp.stack([x, x]) for x in (dout, dlse)))
    _assert_bf16_close(ours, ref, NAMES)

    q, k, v, sinks, dout, dlse, cu, used = _varlen_inputs(hq=7, hk=1)
    q, k, v, sinks, dout, dlse = _kernel_dtypes(q, k, v, sinks, dout, dlse)
    q2, k2, v2 = (jnp.stack([x, x[::-1]]) for x in (q, k, v))
    sinks2 = jnp.stack([sinks, sinks[::-1] - 2.0])

    def varlen(q, k, v, s, implementation):
        return jax.vmap(lambda q, k, v, s: jax_flash.flash_attention_varlen(
            q, k, v, cu, cu, 7, 7, seqused_q=used, seqused_k=used, causal=True, return_lse=True, sinks=s,
            implementation=implementation))(q, k, v, s)

    ours, ref = _both(varlen, (q2, k2, v2, sinks2), tuple(jnp.stack([x, x]) for x in (dout, dlse)))
    _assert_bf16_close(ours, ref, NAMES)


def test_kernel_path_sharded_over_heads(stand_in_kernels):
    """Under sharded jit the sinks operand splits over the heads with q, out and lse."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    q, k, v, sinks, _, _ = _kernel_dtypes(*_dense_inputs(8, 4, 6, 6))
    put = lambda x, spec: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))  # noqa: E731
    qs, ks, vs = (put(x, P("data", None, "model")) for x in (q, k, v))

    def attend(q, k, v, s, implementation):
        return jax_flash.flash_attention(q, k, v, causal=True, return_lse=True, sinks=s,
                                         implementation=implementation)

    ours = jax.jit(functools.partial(attend, implementation="cuda"))(qs, ks, vs, put(sinks, P("model")))
    ref = attend(q, k, v, sinks, "xla")
    _assert_bf16_close(ours, ref, NAMES[:2])


def test_kernel_path_without_sinks_is_unchanged(stand_in_kernels):
    q, k, v, _, _, _ = _kernel_dtypes(*_dense_inputs(8, 1, 6, 6))
    with_none = jax.make_jaxpr(lambda q, k, v: jax_flash.flash_attention(q, k, v, implementation="cuda",
                                                                         sinks=None))(q, k, v)
    without = jax.make_jaxpr(lambda q, k, v: jax_flash.flash_attention(q, k, v, implementation="cuda"))(q, k, v)
    assert str(with_none) == str(without)


# ---------------------------------------------------------------------------------------------------------
# Context parallelism: ring and Ulysses in shard_map on 8 host devices, replicated sinks.


@pytest.mark.parametrize("strategy, check_vma", [("ring", True), ("ring", False), ("ulysses", True)])
def test_parallel_with_sinks(strategy, check_vma):
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs 8 CPU devices")
    mesh = Mesh(np.array(devices[:8]), ("cp",))
    q, k, v, sinks, dout, dlse = _dense_inputs(8, 2, 32, 32, b=1)
    attend = cp.ring_attention if strategy == "ring" else cp.ulysses_attention
    spec, lse_spec = P(None, "cp"), P(None, None, "cp")

    def local(q, k, v, s):
        return attend(q, k, v, axis_name="cp", causal=True, layout="contiguous", return_lse=True, sinks=s,
                      implementation="xla")

    sharded = shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P()), out_specs=(spec, lse_spec),
                        check_vma=check_vma)
    ours = jax.jit(lambda *a: _vjp(sharded, a, (dout, dlse)))(q, k, v, sinks)
    ref = _vjp(lambda q, k, v, s: reference.attention(q, k, v, causal=True, return_lse=True, sinks=s),
               (q, k, v, sinks), (dout, dlse))
    _assert_all_close(ours, ref, NAMES)


@pytest.mark.parametrize("strategy, layout, check_vma", [("ring", "zigzag", True), ("ring", "striped", False),
                                                     ("ulysses", "contiguous", False)])
def test_parallel_packed_with_sinks(strategy, layout, check_vma):
    """Packed sequences (an empty one, padding rows between and after) split over 2 host devices."""
    size = 2
    devices = jax.devices("cpu")
    if len(devices) < size:
        pytest.skip(f"needs {size} CPU devices")
    mesh = Mesh(np.array(devices[:size]), ("cp",))
    cu = np.array([0, 13, 13, 19, 40], np.int32)
    padded_cu, used = cp.padded_cu_seqlens(cu, 2 * size)
    total = int(padded_cu[-1])
    hq, hk = 4, 2
    q, k, v, dout, dlse, sinks = _random(3, (total, hq, 8), (total, hk, 8), (total, hk, 16), (total, hq, 16),
                                         (hq, total), (hq,))
    attend = cp.ring_attention_varlen if strategy == "ring" else cp.ulysses_attention_varlen

    def local(q, k, v, s):
        return attend(q, k, v, padded_cu, axis_name="cp", seqused=used, causal=True, layout=layout,
                      return_lse=True, sinks=s, implementation="xla")

    to_layout = lambda x: cp.varlen_to_layout(x, padded_cu, size, layout)  # noqa: E731
    from_layout = lambda x: cp.varlen_from_layout(x, padded_cu, size, layout)  # noqa: E731
    spec = P("cp")
    sharded = shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P()), out_specs=(spec, P(None, "cp")),
                        check_vma=check_vma)
    moved = _vjp(sharded, (to_layout(q), to_layout(k), to_layout(v), sinks), (to_layout(dout), to_layout(dlse.T).T))
    out, lse, dq, dk, dv, dsinks = moved
    ours = (from_layout(out), from_layout(lse.T).T, from_layout(dq), from_layout(dk), from_layout(dv), dsinks)
    ref = _vjp(lambda q, k, v, s: reference.attention_varlen(q, k, v, padded_cu, padded_cu, seqused_q=used,
                                                             seqused_k=used, causal=True, return_lse=True, sinks=s),
               (q, k, v, sinks), (dout, dlse))
    _assert_all_close(ours, ref, NAMES)


# ---------------------------------------------------------------------------------------------------------
# The forward FFI calls as lowered (the extension stood in for, nothing runs): the sinks operand and has_sinks.


class _StandInExtension:
    def bwd_workspace_bytes(self, *shapes):
        return 1024


@pytest.fixture
def lowering_only(monkeypatch):
    monkeypatch.setattr(_ffi, "_registered", lambda: _StandInExtension())
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_ffi, "supported", lambda *args: True)
    jax.clear_caches()


def _forward_calls(fn, *args):
    """[(target, sinks operand type, has_sinks)] of the forward custom calls in fn's lowered program."""
    text = jax.jit(fn).lower(*args).as_text()
    calls = re.findall(r"custom_call @(jax_flash_attn(?:_varlen)?_fwd)\((.*?)\).*?has_sinks = (true|false)"
                       r".*?: \((.*?)\) ->", text)
    return [(target, types.split(", ")[-1], flag == "true") for target, _, flag, types in calls]


def test_forward_calls_carry_the_sinks_operand(lowering_only):
    x = jax.ShapeDtypeStruct((2, 16, 4, 64), jnp.bfloat16)
    s = jax.ShapeDtypeStruct((4,), jnp.bfloat16)
    dense = functools.partial(jax_flash.flash_attention, causal=True, implementation="cuda")
    assert _forward_calls(dense, x, x, x) == [("jax_flash_attn_fwd", "tensor<0xf32>", False)]
    assert _forward_calls(lambda q, k, v, s: dense(q, k, v, sinks=s), x, x, x, s) == [
        ("jax_flash_attn_fwd", "tensor<2x4x16xf32>", True)]

    cu = jnp.array([0, 5, 16], jnp.int32)
    t = jax.ShapeDtypeStruct((16, 4, 64), jnp.bfloat16)
    varlen = functools.partial(jax_flash.flash_attention_varlen, cu_seqlens_q=cu, cu_seqlens_k=cu,
                               max_seqlen_q=11, max_seqlen_k=11, implementation="cuda")
    assert _forward_calls(varlen, t, t, t) == [("jax_flash_attn_varlen_fwd", "tensor<0xf32>", False)]
    assert _forward_calls(lambda q, k, v, s: varlen(q, k, v, sinks=s), t, t, t, s) == [
        ("jax_flash_attn_varlen_fwd", "tensor<4x16xf32>", True)]
