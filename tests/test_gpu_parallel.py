"""Context parallelism with the CUDA kernels on every visible GPU (2 or 4), bf16, by the oracle rule.

For P = 2 and P = all GPUs, every layout, causal and not: ring attention's output, lse and gradients against
the float32 reference on one device, with plain bf16 attention setting the error budget (tests/oracle.py).
Also softcap and a window, Ulysses, packed sequences (when the varlen kernels are built), bitwise-repeatable
gradients with deterministic=True, and the compiled schedule: a K/V transfer in flight across a kernel call.
And every function inside the user's own jax.shard_map, with its default checks (check_vma=True) and with
check_vma=False, on a mesh of all GPUs (one GPU included: a mesh of one device still runs the shard_map
plumbing), as tests/test_parallel_user_shard_map.py does on the CPU.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jax_flash.parallel as cp
from jax_flash import _ffi, reference
from oracle import check_oracle
from test_parallel_ring import (AXIS, CASES, NAMES, cp_vjp, dense_case, from_layout_order, packed_case,
                                reference_vjp, sharded, to_layout_order)
from test_parallel_user_shard_map import DATA, FUNCTIONS, bf16, case_id, check_by_oracle, run_cases

pytestmark = pytest.mark.gpu

TOKENS_PER_GPU = 512
HEADS, D = (8, 2), 128  # D 128: the head-dim tile every kernel build has


def _sizes():
    n = len(jax.devices())
    return sorted({2, n}) if n >= 2 else []


def _mesh(size):
    if len(jax.devices()) < size:
        pytest.skip(f"needs {size} GPUs")
    return Mesh(np.array(jax.devices()[:size]), (AXIS,))


def _bf16(arrays):
    """q, k, v, dout in bf16 (dlse stays float32)."""
    return tuple(np.asarray(x).astype(jnp.bfloat16) if i < 4 else x for i, x in enumerate(arrays))


def _up(arrays):
    return tuple(np.asarray(x, np.float32) for x in arrays)


@functools.cache
def _dense_inputs(size, seed=0):
    hq, hk = HEADS
    return _bf16(dense_case(seed=seed, b=1, s=size * TOKENS_PER_GPU, hq=hq, hk=hk, d=D, dv=D))


def _naive_vjp(q, k, v, dout, dlse, **kw):
    """Plain attention in the input dtype (bf16): the oracle's error budget."""
    (out, lse), vjp = jax.vjp(lambda q, k, v: reference.naive_attention(q, k, v, return_lse=True, **kw),
                              *(jnp.asarray(x) for x in (q, k, v)))
    return jax.device_get((out, lse, *vjp((jnp.asarray(dout), jnp.asarray(dlse)))))


def _check(ours, ref, naive, softcap=None):
    for i, (name, a, b, c) in enumerate(zip(NAMES, ours, ref, naive)):
        check_oracle(name, a, b, c, factor=2.0 if i < 2 or not softcap else 3.0)


def _run(mesh, arrays, layout, meta=None, **kw):
    size = mesh.shape[AXIS]
    inputs = sharded(mesh, to_layout_order(arrays, size, layout, meta), meta)
    run = jax.jit(lambda *x: cp_vjp(mesh, *x, packed=meta, layout=layout, implementation="cuda", **kw))
    return from_layout_order(jax.device_get(run(*inputs)), size, layout, meta)


@pytest.mark.parametrize("layout, causal", CASES)
@pytest.mark.parametrize("size", _sizes())
def test_ring_on_gpus_by_the_oracle_rule(size, layout, causal):
    mesh = _mesh(size)
    arrays = _dense_inputs(size)
    ours = _run(mesh, arrays, layout, causal=causal)
    _check(ours, reference_vjp(*_up(arrays), causal=causal), _naive_vjp(*arrays, causal=causal))


@pytest.mark.parametrize("layout, window, softcap", [("striped", (300, 0), 30.0), ("contiguous", (700, 200), None),
                                                     ("zigzag", None, 30.0)])
def test_ring_window_and_softcap_on_gpus(layout, window, softcap):
    size = max(_sizes(), default=2)
    mesh = _mesh(size)
    arrays = _dense_inputs(size, seed=1)
    kw = dict(causal=True, window=window, softcap=softcap)
    if window is not None and window[1] != 0:
        kw["causal"] = False
    ours = _run(mesh, arrays, layout, **kw)
    _check(ours, reference_vjp(*_up(arrays), **kw), _naive_vjp(*arrays, **kw), softcap=softcap)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_ulysses_on_gpus(layout):
    size = max(_sizes(), default=2)
    mesh = _mesh(size)
    arrays = _dense_inputs(size, seed=2)
    ours = _run(mesh, arrays, layout, strategy="ulysses", causal=True)
    _check(ours, reference_vjp(*_up(arrays), causal=True), _naive_vjp(*arrays, causal=True))


def test_packed_ring_on_gpus():
    size = max(_sizes(), default=2)
    mesh = _mesh(size)
    hq, hk = HEADS
    lengths = (700, 0, 33, 1, 1500, 260)  # not multiples of 2P, an empty sequence
    meta, arrays = packed_case(hq=hq, hk=hk, d=D, dv=D, lengths=lengths, multiple=2 * size)
    arrays = _bf16(arrays)
    for layout, causal in CASES:
        ours = _run(mesh, arrays, layout, meta, causal=causal)
        ref = reference_vjp(*_up(arrays), packed=meta, causal=causal)
        _check(ours, ref, _packed_naive_vjp(meta, arrays, causal))
        pad = np.ones(ours[0].shape[0], bool)
        for start, n in zip(meta[0][:-1], meta[1]):
            pad[start:start + n] = False
        assert np.all(np.asarray(ours[0])[pad] == 0) and np.all(np.asarray(ours[2])[pad] == 0)


def _packed_naive_vjp(meta, arrays, causal):
    """Naive bf16 attention sequence by sequence, assembled like the packed outputs (padding 0 / -inf)."""
    (cu, used), (q, k, v, dout, dlse) = meta, arrays
    out = np.zeros(dout.shape, np.float32)
    lse = np.full(dlse.shape, -np.inf, np.float32)
    dq, dk, dv = (np.zeros(x.shape, np.float32) for x in (q, k, v))
    for start, n in zip(cu[:-1], used):
        if n == 0:
            continue
        rows = slice(start, start + n)
        o, l, gq, gk, gv = _naive_vjp(q[None, rows], k[None, rows], v[None, rows], dout[None, rows],
                                      dlse[None, :, rows], causal=causal)
        out[rows], lse[:, rows], dq[rows], dk[rows], dv[rows] = o[0], l[0], gq[0], gk[0], gv[0]
    return out, lse, dq, dk, dv


def test_deterministic_ring_gradients_repeat_bitwise():
    size = max(_sizes(), default=2)
    mesh = _mesh(size)
    arrays = _dense_inputs(size, seed=3)
    first = _run(mesh, arrays, "zigzag", causal=True, deterministic=True)
    second = _run(mesh, arrays, "zigzag", causal=True, deterministic=True)
    for name, a, b in zip(NAMES, first, second):
        assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)), name


def test_compiled_ring_overlaps_a_transfer_with_a_kernel():
    """In the scheduled program some K/V collective-permute starts before an attention kernel and is
    waited for after it."""
    size = max(_sizes(), default=2)
    mesh = _mesh(size)
    arrays = _dense_inputs(size)
    inputs = sharded(mesh, to_layout_order(arrays, size, "zigzag"), None)
    fwd = jax.jit(lambda q, k, v: cp.context_parallel_attention(q, k, v, mesh=mesh, axis=AXIS, causal=True,
                                                                implementation="cuda"))
    hlo = fwd.lower(*inputs[:3]).compile().as_text()
    overlapped = False
    for body in re.split(r"\n\n", hlo):
        lines = body.splitlines()
        starts = [i for i, line in enumerate(lines) if "collective-permute-start" in line]
        dones = [i for i, line in enumerate(lines) if "collective-permute-done" in line]
        kernels = [i for i, line in enumerate(lines) if _ffi.FWD_TARGET in line]
        overlapped |= any(s < kk < d for s in starts for d in dones for kk in kernels)
    assert overlapped, "no attention kernel runs while a K/V transfer is in flight"


# The user's own shard_map: every function, every layout, causal or not, and a window / softcap case.
USER_CASES = {
    "ring": [*((layout, dict(causal=causal)) for layout, causal in CASES),
             ("striped", dict(causal=True, window=(300, 0), softcap=30.0))],
    "ring_varlen": [*((layout, dict(causal=causal)) for layout, causal in CASES),
                    ("striped", dict(causal=True, window=(300, 0), softcap=30.0))],
    "ulysses": [*((layout, dict(causal=causal)) for layout, causal in CASES),
                ("zigzag", dict(window=(700, 200), softcap=30.0))],
    "ulysses_varlen": [*((layout, dict(causal=causal)) for layout, causal in CASES),
                       ("striped", dict(window=(700, 200), softcap=30.0))],
}


def _user_mesh():
    """All GPUs as a ("dp", "cp") mesh: 2 x n/2 where n >= 4 is even (the batch or heads split too), else
    1 x n."""
    devices = jax.devices()
    n = len(devices)
    data = 2 if n >= 4 and n % 2 == 0 else 1
    return Mesh(np.array(devices).reshape(data, n // data), (DATA, AXIS))


@functools.cache
def _user_arrays(name, size):
    """(packing or None, bf16 arrays) for a function over `size` ranks of the sequence axis."""
    hq, hk = HEADS
    if name.endswith("varlen"):
        lengths = (700, 0, 33, 1, 1500, 260)  # not multiples of 2P, an empty sequence
        meta, arrays = packed_case(seed=8, hq=hq, hk=hk, d=D, dv=D, lengths=lengths, multiple=2 * size)
        return meta, bf16(arrays)
    return None, bf16(dense_case(seed=9, b=2, s=size * TOKENS_PER_GPU, hq=hq, hk=hk, d=D, dv=D))


@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_in_the_users_shard_map_on_gpus(name, check_vma):
    mesh = _user_mesh()
    size = mesh.shape[AXIS]
    cases = [(name, layout, kw) for layout, kw in USER_CASES[name]]
    results = run_cases(mesh, cases, lambda name: _user_arrays(name, size), check_vma=check_vma, vjp_inside=True,
                        implementation="cuda")
    meta, arrays = _user_arrays(name, size)
    for (_, layout, kw), ours in zip(cases, results):
        check_by_oracle(ours, arrays, meta, kw, f"{name} {case_id(layout, kw)} check_vma={check_vma}, P={size}")


def test_shard_map_over_the_sequence_axis_only_on_gpus():
    """The user's shard_map manual over "cp" alone, jit keeping the batch (dense) or the heads (packed) split
    over "dp": the kernels' custom_partitioning then runs inside the partly manual program."""
    mesh = _user_mesh()
    size = mesh.shape[AXIS]
    cases = [("ring", "zigzag", dict(causal=False)), ("ring_varlen", "zigzag", dict(causal=True)),
             ("ulysses", "contiguous", dict(causal=True)), ("ulysses_varlen", "striped", dict(causal=False))]
    results = run_cases(mesh, cases, lambda name: _user_arrays(name, size), check_vma=True, vjp_inside=True,
                        implementation="cuda", data_axis=None, manual_axes={AXIS})
    for (name, layout, kw), ours in zip(cases, results):
        meta, arrays = _user_arrays(name, size)
        check_by_oracle(ours, arrays, meta, kw, f"{name} {layout} {kw}, manual over {AXIS} only, P={size}")
