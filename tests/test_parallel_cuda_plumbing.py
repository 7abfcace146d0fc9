"""The ring's CUDA path wiring on any machine: the four kernel entry points (_ffi.attn_fwd / attn_bwd and the
packed attn_varlen_fwd / attn_varlen_bwd) are stood in for by float32 functions with the same signatures,
and the ring must reproduce the reference through them (reached through ops' partitioned, vmap-folding
wrappers, jax_flash/ops/_with_lse.py), calling them on local blocks only. And the real FFI wrappers, lowered
but not run, type-check inside a user's shard_map with check_vma on."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jax_flash import _ffi, reference
from test_parallel_ring import (NAMES, assert_close, cp_vjp, cpu_mesh, dense_case, from_layout_order, packed_case,
                                reference_vjp, sharded, to_layout_order)

CALLS = []
KERNEL_CALLS = ("attn_fwd", "attn_bwd", "attn_varlen_fwd", "attn_varlen_bwd")
REAL_KERNEL_CALLS = {name: getattr(_ffi, name) for name in KERNEL_CALLS}


def fake_fwd(q, k, v, config):
    CALLS.append(("fwd", q.shape, k.shape))
    out, lse = reference.attention(q, k, v, window=config.window, softcap=config.softcap, scale=config.scale,
                                   return_lse=True)
    return out.astype(q.dtype), lse


def fake_bwd(q, k, v, out, lse, dout, dlse, config, deterministic):
    CALLS.append(("bwd", q.shape, k.shape))
    assert out.shape[:-1] == q.shape[:-1] and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert isinstance(deterministic, bool)
    return reference.attention_bwd_from_lse(q, k, v, out, lse, dout, dlse, window=config.window,
                                            softcap=config.softcap, scale=config.scale)


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
    return reference.attention_varlen_bwd_from_lse(q, k, v, out, lse, dout, dlse, cu_q, cu_k, seqused_q=used_q,
                                                   seqused_k=used_k, window=config.window,
                                                   softcap=config.softcap, scale=config.scale)


@pytest.fixture(autouse=True)
def kernels_replaced(monkeypatch):
    monkeypatch.setattr(_ffi, "attn_fwd", fake_fwd)
    monkeypatch.setattr(_ffi, "attn_bwd", fake_bwd)
    monkeypatch.setattr(_ffi, "attn_varlen_fwd", fake_varlen_fwd, raising=False)
    monkeypatch.setattr(_ffi, "attn_varlen_bwd", fake_varlen_bwd, raising=False)
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)  # "cuda" is chosen, float32 accepted
    monkeypatch.setattr(_ffi, "supported", lambda *args: True)
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


@pytest.mark.parametrize("name", ["ring", "ring_varlen", "ulysses", "ulysses_varlen"])
def test_kernel_calls_type_check_in_the_users_shard_map(monkeypatch, name):
    """The real FFI wrappers (jax.ffi.ffi_call; the extension's module stood in for, nothing runs) inside the
    user's shard_map with its default checks, forward and VJP: ffi_call wants operands that vary over the same
    mesh axes and declares results that vary over none unless told (jax_flash/_vma.py). Lowering type-checks
    it all; the ring's program then holds the kernels and no all-reduce (a result typed as invariant would
    have its gradient summed over the devices)."""
    from test_parallel_user_shard_map import DATA, FUNCTIONS, user_shard_map

    for call, real in REAL_KERNEL_CALLS.items():
        monkeypatch.setattr(_ffi, call, real)
    monkeypatch.setattr(_ffi, "_registered", lambda: types.SimpleNamespace(bwd_workspace_bytes=lambda *args: 16))
    mesh = Mesh(np.array(jax.devices("cpu")[:8]).reshape(2, 4), (DATA, "cp"))
    packed = name.endswith("varlen")
    hq, hk, d, rows = 8, 2, 128, 128
    lead = (rows,) if packed else (2, rows)
    shapes = [jax.ShapeDtypeStruct((*lead, h, d), jnp.bfloat16) for h in (hq, hk, hk, hq)]
    shapes.append(jax.ShapeDtypeStruct((hq, rows) if packed else (2, hq, rows), jnp.float32))
    if packed:
        shapes += [jax.ShapeDtypeStruct((4,), jnp.int32), jax.ShapeDtypeStruct((3,), jnp.int32)]
    mapped = user_shard_map(FUNCTIONS[name], mesh, packed, check_vma=True, vjp_inside=True, layout="zigzag",
                            causal=False, implementation="cuda")
    text = jax.jit(mapped).lower(*shapes).as_text()
    targets = (_ffi.VARLEN_FWD_TARGET, _ffi.VARLEN_BWD_TARGET) if packed else (_ffi.FWD_TARGET, _ffi.BWD_TARGET)
    assert all(target in text for target in targets)
    if name.startswith("ring"):
        assert "all_reduce" not in text
