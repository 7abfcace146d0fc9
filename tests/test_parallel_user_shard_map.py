"""Every function of jax_flash.parallel inside the user's own jax.shard_map (CPU, 8 host devices, the reference
path), with shard_map's default checks (check_vma=True) and with check_vma=False.

A 2 x 4 mesh ("dp", "cp"), as in a training step with data and context parallelism: the sequence is split over
"cp", the batch (dense) or the heads (packed) over "dp". Ring and Ulysses, dense and packed, every layout,
causal or not, and windows and softcap: the user's jax.jit(jax.shard_map(...)) with the VJP taken inside the
shard_map body; for one case of each function, jax.vjp taken outside it; and a shard_map manual over "cp"
alone. Output, lse and gradients against single-device reference attention by the oracle rule (bf16 inputs,
tests/oracle.py).

Compile time dominates on the CPU: each (function, check_vma) compiles one program holding all its cases.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_flash.parallel as cp
from jax_flash import reference
from oracle import check_oracle
from test_parallel_ring import (AXIS, FAST_COMPILE, NAMES, after, dense_case, from_layout_order, packed_case,
                                reference_vjp, to_layout_order)

DATA = "dp"
HEADS = (8, 2)  # Ulysses splits the query heads over "cp" after "dp" took half of them (packed)
FUNCTIONS = {"ring": cp.ring_attention, "ring_varlen": cp.ring_attention_varlen,
             "ulysses": cp.ulysses_attention, "ulysses_varlen": cp.ulysses_attention_varlen}
FULL_AND_CAUSAL = [(layout, dict(causal=causal)) for layout in cp.LAYOUTS for causal in (False, True)]
# Ring windows need "contiguous" or "striped" (packed: "striped" and causal); Ulysses takes any mask.
CASES = {
    "ring": FULL_AND_CAUSAL + [("contiguous", dict(window=(5, 2), softcap=2.0)),
                               ("striped", dict(causal=True, window=(9, 0))),
                               ("zigzag", dict(causal=True, softcap=2.5))],
    "ring_varlen": FULL_AND_CAUSAL + [("striped", dict(causal=True, window=(7, 0), softcap=4.0))],
    "ulysses": FULL_AND_CAUSAL + [("zigzag", dict(window=(6, 2), softcap=3.0))],
    "ulysses_varlen": FULL_AND_CAUSAL + [("striped", dict(window=(7, 3), softcap=4.0))],
}
# One case per function with jax.vjp outside the user's shard_map; the first is issue 15's report.
OUTSIDE = [("ring", "zigzag", dict(causal=False)), ("ring_varlen", "zigzag", dict(causal=True)),
           ("ulysses", "contiguous", dict(causal=False)), ("ulysses_varlen", "striped", dict(causal=True))]


def case_id(layout, kw):
    return "-".join([layout, *(f"{k}={v}" for k, v in kw.items())])


# ---------------------------------------------------------------------------------------------------------
# The user's side (shared with test_gpu_parallel.py)


def user_specs(packed: bool, data_axis=DATA):
    """(spec of q, k, v, out and their gradients, spec of lse and dlse) of the user's shard_map: the sequence
    over AXIS, the batch (dense) or the heads (packed) over data_axis (None: not split)."""
    if packed:
        return P(AXIS, data_axis), P(data_axis, AXIS)
    return P(data_axis, AXIS), P(data_axis, None, AXIS)


def user_shard_map(fn, mesh, packed: bool, *, check_vma: bool, vjp_inside: bool, data_axis=DATA,
                   manual_axes=None, **kw):
    """fn (a jax_flash.parallel function) in the user's own jax.shard_map, with its default arguments when
    check_vma is True. The mapped function takes (q, k, v, dout, dlse[, cu_seqlens, seqused]) and returns
    (out, lse, dq, dk, dv) with the VJP taken in the shard_map body (vjp_inside), or (out, lse) alone.
    manual_axes: shard_map's axis_names (None: every mesh axis is manual)."""
    rows, lse_spec = user_specs(packed, data_axis)

    def attend(q, k, v, *meta):
        if meta:
            return fn(q, k, v, meta[0], seqused=meta[1], axis_name=AXIS, return_lse=True, **kw)
        return fn(q, k, v, axis_name=AXIS, return_lse=True, **kw)

    def body(q, k, v, dout, dlse, *meta):
        if not vjp_inside:
            return attend(q, k, v, *meta)
        (out, lse), vjp = jax.vjp(lambda q, k, v: attend(q, k, v, *meta), q, k, v)
        return (out, lse, *vjp((dout.astype(out.dtype), dlse)))

    in_specs = (rows,) * 4 + (lse_spec,) + ((P(), P()) if packed else ())
    out_specs = (rows, lse_spec, rows, rows, rows) if vjp_inside else (rows, lse_spec)
    options = {} if check_vma else dict(check_vma=False)
    if manual_axes is not None:
        options["axis_names"] = manual_axes
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **options)


def user_vjp(fn, mesh, inputs, meta, *, check_vma: bool, vjp_inside: bool, **kw):
    """(out, lse, dq, dk, dv) of fn in the user's shard_map on layout-ordered global inputs (q, k, v, dout,
    dlse[, cu_seqlens, seqused]); the VJP inside the shard_map body or around it. kw: user_shard_map's."""
    mapped = user_shard_map(fn, mesh, meta is not None, check_vma=check_vma, vjp_inside=vjp_inside, **kw)
    if vjp_inside:
        return mapped(*inputs)
    q, k, v, dout, dlse, *extra = inputs
    (out, lse), vjp = jax.vjp(lambda q, k, v: mapped(q, k, v, dout, dlse, *extra), q, k, v)
    return (out, lse, *vjp((dout.astype(out.dtype), dlse)))


def user_inputs(mesh, arrays, layout, meta, data_axis=DATA):
    """Naturally ordered (q, k, v, dout, dlse) -> layout order, placed on the mesh as the user's specs say,
    with (cu_seqlens, seqused) replicated for packed sequences."""
    size = mesh.shape[AXIS]
    rows, lse_spec = user_specs(meta is not None, data_axis)
    ordered = to_layout_order(arrays, size, layout, meta)
    placed = tuple(jax.device_put(x, NamedSharding(mesh, lse_spec if i == 4 else rows))
                   for i, x in enumerate(ordered))
    if meta is None:
        return placed
    return placed + tuple(jax.device_put(jnp.asarray(x), NamedSharding(mesh, P())) for x in meta)


def run_cases(mesh, cases, case_arrays, *, check_vma: bool, vjp_inside: bool, implementation: str,
              compiler_options=None, **options):
    """cases: (function name, layout, kw); case_arrays(name) -> (packing or None, natural arrays). One program
    runs the cases one after another (see `after`); returns each case's (out, lse, dq, dk, dv) in natural
    order. The inputs lie on the mesh as user_specs says; options: user_shard_map's (data_axis, manual_axes)."""
    size = mesh.shape[AXIS]
    inputs = [user_inputs(mesh, case_arrays(name)[1], layout, case_arrays(name)[0]) for name, layout, _ in cases]

    def program(inputs):
        results, previous = [], None
        for (name, layout, kw), x in zip(cases, inputs):
            chained = (*after(x[:5], previous), *x[5:])
            previous = user_vjp(FUNCTIONS[name], mesh, chained, case_arrays(name)[0], check_vma=check_vma,
                                vjp_inside=vjp_inside, implementation=implementation, layout=layout, **options,
                                **kw)
            results.append(previous)
        return results

    results = jax.device_get(jax.jit(program, compiler_options=compiler_options)(inputs))
    return [from_layout_order(r, size, layout, case_arrays(name)[0]) for r, (name, layout, _) in zip(results, cases)]


def naive_vjp(q, k, v, dout, dlse, *, packed=None, **kw):
    """(out, lse, dq, dk, dv) of plain attention in the input dtype: the oracle's error budget."""
    def attend(q, k, v):
        if packed is None:
            return reference.naive_attention(q, k, v, return_lse=True, **kw)
        cu, used = (jnp.asarray(x) for x in packed)
        return reference.naive_attention_varlen(q, k, v, cu, cu, seqused_q=used, seqused_k=used, return_lse=True,
                                                **kw)

    (out, lse), vjp = jax.vjp(attend, *(jnp.asarray(x) for x in (q, k, v)))
    return jax.device_get((out, lse, *vjp((jnp.asarray(dout), jnp.asarray(dlse)))))


def check_by_oracle(ours, arrays, meta, kw, label):
    """ours (out, lse, dq, dk, dv), natural order, against the float32 reference on the same bf16 inputs."""
    up = tuple(np.asarray(x, np.float32) for x in arrays)
    ref = reference_vjp(*up, packed=meta, **kw)
    naive = naive_vjp(*arrays, packed=meta, **kw)
    for i, (name, a, b, c) in enumerate(zip(NAMES, ours, ref, naive)):
        factor = 3.0 if i >= 2 and kw.get("softcap") else 2.0
        check_oracle(f"{name} ({label})", a, b, c, factor=factor)


def bf16(arrays):
    """q, k, v, dout in bf16; dlse stays float32."""
    return tuple(np.asarray(x).astype(jnp.bfloat16) if i < 4 else x for i, x in enumerate(arrays))


# ---------------------------------------------------------------------------------------------------------
# CPU grid


def _mesh():
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return Mesh(np.array(devices[:8]).reshape(2, 4), (DATA, AXIS))


@functools.cache
def _arrays(name: str):
    """(packing or None, bf16 arrays) for a function of FUNCTIONS."""
    hq, hk = HEADS
    if name.endswith("varlen"):
        meta, arrays = packed_case(seed=11, hq=hq, hk=hk)
        return meta, bf16(arrays)
    return None, bf16(dense_case(seed=10, hq=hq, hk=hk))


@functools.cache
def _grid(name: str, check_vma: bool):
    cases = [(name, layout, kw) for layout, kw in CASES[name]]
    return run_cases(_mesh(), cases, _arrays, check_vma=check_vma, vjp_inside=True, implementation="xla",
                     compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_inside_the_users_shard_map(name, check_vma):
    meta, arrays = _arrays(name)
    for (layout, kw), ours in zip(CASES[name], _grid(name, check_vma)):
        check_by_oracle(ours, arrays, meta, kw, f"{name} {case_id(layout, kw)} check_vma={check_vma}")


def test_gradients_taken_outside_the_users_shard_map():
    results = run_cases(_mesh(), OUTSIDE, _arrays, check_vma=True, vjp_inside=False, implementation="xla",
                        compiler_options=FAST_COMPILE)
    for (name, layout, kw), ours in zip(OUTSIDE, results):
        meta, arrays = _arrays(name)
        check_by_oracle(ours, arrays, meta, kw, f"{name} {layout} {kw}, vjp outside")


def test_shard_map_over_the_sequence_axis_only():
    """The user's shard_map manual over "cp" alone (axis_names), jit keeping the batch split over "dp"."""
    cases = [("ring", "zigzag", dict(causal=False)), ("ulysses", "zigzag", dict(causal=True))]
    results = run_cases(_mesh(), cases, _arrays, check_vma=True, vjp_inside=True, implementation="xla",
                        compiler_options=FAST_COMPILE, data_axis=None, manual_axes={AXIS})
    for (name, layout, kw), ours in zip(cases, results):
        meta, arrays = _arrays(name)
        check_by_oracle(ours, arrays, meta, kw, f"{name} {layout} {kw}, manual over {AXIS} only")
