"""The ring's CUDA path wiring on any machine: the four kernel entry points (_ffi.attn_fwd / attn_bwd and the
packed attn_varlen_fwd / attn_varlen_bwd) are stood in for by float32 functions with the same signatures,
and the ring must reproduce the reference through them, calling them on local blocks only."""

import jax
import pytest

from jax_flash import _ffi, reference
from jax_flash.parallel import _blocks
from test_parallel_ring import (NAMES, assert_close, cp_vjp, cpu_mesh, dense_case, from_layout_order, packed_case,
                                reference_vjp, sharded, to_layout_order)

CALLS = []


def fake_fwd(q, k, v, config):
    CALLS.append(("fwd", q.shape, k.shape))
    out, lse = reference.attention(q, k, v, window=config.window, softcap=config.softcap, scale=config.scale,
                                   return_lse=True)
    return out.astype(q.dtype), lse


def fake_bwd(q, k, v, out, lse, dout, dlse, config, deterministic):
    CALLS.append(("bwd", q.shape, k.shape))
    assert out.shape[:-1] == q.shape[:-1] and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert isinstance(deterministic, bool)
    mask = reference.visible_mask(q.shape[1], k.shape[1], window=config.window)
    return _blocks._bwd_from_lse(q, k, v, out, lse, dout, dlse, mask, config)


def fake_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k):
    CALLS.append(("varlen_fwd", q.shape, k.shape))
    assert isinstance(max_q, int) and isinstance(max_k, int)
    assert used_q.shape == used_k.shape == (cu_q.shape[0] - 1,)
    out, lse = reference.attention_varlen(q, k, v, cu_q, cu_k, seqused_q=used_q, seqused_k=used_k,
                                          window=config.window, softcap=config.softcap, scale=config.scale,
                                          return_lse=True)
    return out.astype(q.dtype), lse


def fake_varlen_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config, deterministic, max_q,
                    max_k):
    CALLS.append(("varlen_bwd", q.shape, k.shape))
    assert lse.shape == (q.shape[1], q.shape[0]) and isinstance(deterministic, bool)
    mask = reference.varlen_mask(cu_q, cu_k, q.shape[0], k.shape[0], seqused_q=used_q, seqused_k=used_k,
                                 window=config.window)
    grads = _blocks._bwd_from_lse(q[None], k[None], v[None], out[None], lse[None], dout[None], dlse[None], mask,
                                  config)
    return tuple(g[0] for g in grads)


@pytest.fixture(autouse=True)
def kernels_replaced(monkeypatch):
    monkeypatch.setattr(_ffi, "attn_fwd", fake_fwd)
    monkeypatch.setattr(_ffi, "attn_bwd", fake_bwd)
    monkeypatch.setattr(_ffi, "attn_varlen_fwd", fake_varlen_fwd, raising=False)
    monkeypatch.setattr(_ffi, "attn_varlen_bwd", fake_varlen_bwd, raising=False)
    monkeypatch.setattr(_blocks, "choose_implementation", lambda *args: "cuda")
    CALLS.clear()


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_ring_through_the_kernel_entry_points(packed):
    size, layout = 4, "zigzag"
    mesh = cpu_mesh(size)
    meta, arrays = packed_case(seed=6) if packed else (None, dense_case(seed=6))
    inputs = sharded(mesh, to_layout_order(arrays, size, layout, meta), meta)
    run = jax.jit(lambda *x: cp_vjp(mesh, *x, packed=meta, layout=layout, causal=True, softcap=5.0,
                                    deterministic=True, implementation="cuda"))
    ours = from_layout_order(jax.device_get(run(*inputs)), size, layout, meta)
    with jax.default_device(jax.devices("cpu")[0]):
        ref = reference_vjp(*arrays, packed=meta, causal=True, softcap=5.0)
    for name, a, b in zip(NAMES, ours, ref):
        assert_close(name, a, b)
    kinds = {c[0] for c in CALLS}
    assert kinds == ({"varlen_fwd", "varlen_bwd"} if packed else {"fwd", "bwd"})
    local = arrays[0].shape[0 if packed else 1] // size
    for _, q_shape, _ in CALLS:  # blocks of local rows only: nothing was gathered
        assert q_shape[0 if packed else 1] <= local
