"""Ring attention on the CPU (8 forced host devices, float32, the "xla" block path).

For P in {1, 2, 4, 8}, every layout, causal and not, with GQA and Dv != D, dense and packed: the output,
the lse and the gradients (with random cotangents for both) equal single-device reference attention, and do
not depend on P. Also: windows and softcap, bf16 by the oracle rule, the compiled program's collectives,
and per-device memory that stays flat as P grows at fixed tokens per device.

Compile time dominates on the CPU, so each P compiles one program holding every (layout, causal) ring, at
XLA's lowest backend optimization level, and the cases read its results from a cache.
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

AXIS = "cp"
SIZES = (1, 2, 4, 8)
CASES = [(layout, causal) for layout in cp.LAYOUTS for causal in (False, True)]
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PACKED_LENGTHS = (13, 0, 6, 1, 21, 3)  # not multiples of 2P, an empty sequence
PACK_MULTIPLE = 16  # 2 * 8: one padded packing serves every P <= 8 and every layout
NAMES = ("out", "lse", "dq", "dk", "dv")


# ---------------------------------------------------------------------------------------------------------
# Inputs, references and the compiled rings (shared with test_gpu_parallel.py)


def cpu_mesh(size):
    devices = jax.devices("cpu")
    if len(devices) < size:
        pytest.skip(f"needs {size} CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return Mesh(np.array(devices[:size]), (AXIS,))


def dense_case(seed=0, b=2, s=64, hq=4, hk=2, d=8, dv=16, dtype=np.float32):
    """q, k, v, dout (B, S, H, D|Dv) and dlse (B, Hq, S), naturally ordered numpy arrays."""
    rng = np.random.default_rng(seed)
    shapes = [(b, s, hq, d), (b, s, hk, d), (b, s, hk, dv), (b, s, hq, dv), (b, hq, s)]
    return tuple(rng.standard_normal(shape).astype(dtype) for shape in shapes)


def packed_case(seed=1, hq=4, hk=2, d=8, dv=16, lengths=PACKED_LENGTHS, multiple=PACK_MULTIPLE,
                dtype=np.float32):
    """(cu_seqlens, seqused) padded to `multiple`, and q, k, v, dout (T, H, D|Dv), dlse (Hq, T)."""
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    padded_cu, used = (np.asarray(x) for x in cp.padded_cu_seqlens(cu, multiple))
    total = int(padded_cu[-1]) + multiple  # rows after the last sequence: padding too
    rng = np.random.default_rng(seed)
    shapes = [(total, hq, d), (total, hk, d), (total, hk, dv), (total, hq, dv), (hq, total)]
    return (padded_cu, used), tuple(rng.standard_normal(shape).astype(dtype) for shape in shapes)


def reference_vjp(q, k, v, dout, dlse, *, packed=None, causal=False, window=None, softcap=None):
    """(out, lse, dq, dk, dv) of single-device reference attention (packed: (cu_seqlens, seqused))."""
    meta = (None, None) if packed is None else tuple(jnp.asarray(x) for x in packed)
    return jax.device_get(_reference_vjp(q, k, v, dout, dlse, *meta, causal=causal, window=window,
                                         softcap=softcap))


@functools.partial(jax.jit, static_argnames=("causal", "window", "softcap"))
def _reference_vjp(q, k, v, dout, dlse, cu, used, *, causal, window, softcap):
    def attend(q, k, v):
        kw = dict(causal=causal, window=window, softcap=softcap, return_lse=True)
        if cu is None:
            return reference.attention(q, k, v, **kw)
        return reference.attention_varlen(q, k, v, cu, cu, seqused_q=used, seqused_k=used, **kw)

    (out, lse), vjp = jax.vjp(attend, q, k, v)
    return (out, lse, *vjp((dout.astype(out.dtype), dlse)))


def to_layout_order(arrays, size, layout, packed=None):
    """Naturally ordered (q, k, v, dout, dlse) -> layout order (lse: heads before the sequence)."""
    if packed is None:
        return tuple(cp.to_layout(x, size, layout, axis=2 if i == 4 else 1) for i, x in enumerate(arrays))
    cu = jnp.asarray(packed[0])
    moved = [x.T if i == 4 else x for i, x in enumerate(arrays)]
    moved = [cp.varlen_to_layout(jnp.asarray(x), cu, size, layout) for x in moved]
    return tuple(x.T if i == 4 else x for i, x in enumerate(moved))


def from_layout_order(results, size, layout, packed=None):
    """(out, lse, dq, dk, dv) in layout order -> natural order numpy arrays."""
    if packed is None:
        return tuple(np.asarray(cp.from_layout(x, size, layout, axis=2 if i == 1 else 1))
                     for i, x in enumerate(results))
    cu = jnp.asarray(packed[0])
    moved = [x.T if i == 1 else x for i, x in enumerate(results)]
    moved = [np.asarray(cp.varlen_from_layout(x, cu, size, layout)) for x in moved]
    return tuple(x.T if i == 1 else x for i, x in enumerate(moved))


def cp_vjp(mesh, q, k, v, dout, dlse, *, packed=None, strategy="ring", **kw):
    """(out, lse, dq, dk, dv) of context_parallel_attention on layout-ordered global arrays."""
    extra = {} if packed is None else dict(cu_seqlens=jnp.asarray(packed[0]), seqused=jnp.asarray(packed[1]))

    def attend(q, k, v):
        return cp.context_parallel_attention(q, k, v, mesh=mesh, axis=AXIS, strategy=strategy, return_lse=True,
                                             **extra, **kw)

    (out, lse), vjp = jax.vjp(attend, q, k, v)
    return (out, lse, *vjp((dout.astype(out.dtype), dlse)))


def sharded(mesh, arrays, packed):
    """Puts layout-ordered (q, k, v, dout, dlse) on the mesh, the sequence split over AXIS."""
    seq = P(AXIS) if packed is not None else P(None, AXIS)
    lse = P(None, AXIS) if packed is not None else P(None, None, AXIS)
    return tuple(jax.device_put(x, NamedSharding(mesh, lse if i == 4 else seq)) for i, x in enumerate(arrays))


def after(arrays, previous):
    """`arrays` made to depend on a previous ring's results. Rings compiled into one program then run one
    after another: the CPU runtime may interleave the collectives of independent rings and mix them up."""
    if previous is None:
        return arrays
    tie = 0.0 * sum(jnp.sum(jnp.where(jnp.isfinite(x), x, 0).astype(jnp.float32)) for x in previous)
    return tuple(x + tie.astype(x.dtype) for x in arrays)


def case_arrays(packed: bool, heads=(4, 2)):
    """(packing or None, arrays) of the shared grid inputs."""
    hq, hk = heads
    return packed_case(hq=hq, hk=hk) if packed else (None, dense_case(hq=hq, hk=hk))


@functools.cache
def ring_results(size, packed: bool, strategy="ring", heads=(4, 2)):
    """{(layout, causal): (out, lse, dq, dk, dv) in natural order}, and the compiled program's text."""
    mesh = cpu_mesh(size)
    meta, arrays = case_arrays(packed, heads)
    inputs = {layout: sharded(mesh, to_layout_order(arrays, size, layout, meta), meta) for layout in cp.LAYOUTS}

    def program(inputs):
        results, previous = {}, None
        for layout, causal in CASES:
            previous = cp_vjp(mesh, *after(inputs[layout], previous), packed=meta, strategy=strategy,
                              layout=layout, causal=causal, implementation="xla")
            results[f"{layout}-{causal}"] = previous
        return results

    compiled = jax.jit(program, compiler_options=FAST_COMPILE).lower(inputs).compile()
    results = jax.device_get(compiled(inputs))
    natural = {(layout, causal): from_layout_order(results[f"{layout}-{causal}"], size, layout, meta)
               for layout, causal in CASES}
    return natural, compiled.as_text()


@functools.cache
def references(packed: bool, heads=(4, 2)):
    meta, arrays = case_arrays(packed, heads)
    with jax.default_device(jax.devices("cpu")[0]):
        return {causal: reference_vjp(*arrays, packed=meta, causal=causal) for causal in (False, True)}


def assert_close(name, ours, ref, tol=2e-5):
    """float32 agreement: |ours - ref| <= tol * max(1, max|ref|); -inf exactly where ref has it; no NaN."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    assert not np.isnan(ours).any(), f"{name}: NaN"
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(ours), inf) and np.array_equal(ours[inf], ref[inf]), f"{name}: infinities"
    if inf.all():
        return
    err = np.abs(ours[~inf] - ref[~inf]).max()
    assert err <= tol * max(1.0, np.abs(ref[~inf]).max()), f"{name}: max error {err:.3g}"


def packing_rows_are_zero(results):
    """Padding rows of the shared packed case: out and every gradient exactly 0, lse -inf."""
    meta, _ = packed_case()
    pad = padding_rows(meta, results[0].shape[0])
    for name, x in zip(NAMES, results):
        rows = x[:, pad] if name == "lse" else x[pad]
        assert np.all(rows == (-np.inf if name == "lse" else 0)), f"{name} on padding rows"


def padding_rows(meta, total):
    """(total,) bool: packed rows outside every sequence's used rows."""
    cu, used = meta
    used_rows = np.zeros(total, bool)
    for start, n in zip(cu[:-1], used):
        used_rows[start:start + n] = True
    return ~used_rows


# ---------------------------------------------------------------------------------------------------------
# Equality with the single-device reference


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("layout, causal", CASES)
@pytest.mark.parametrize("size", SIZES)
def test_ring_equals_single_device_attention(size, layout, causal, packed):
    ours = ring_results(size, packed)[0][(layout, causal)]
    ref = references(packed)[causal]
    for name, a, b in zip(NAMES, ours, ref):
        assert_close(f"{name} (P={size}, {layout}, causal={causal})", a, b)
    if packed:
        packing_rows_are_zero(ours)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("layout, causal", CASES)
def test_ring_results_do_not_depend_on_axis_size(layout, causal, packed):
    base = ring_results(1, packed)[0][(layout, causal)]
    for size in SIZES[1:]:
        for name, a, b in zip(NAMES, ring_results(size, packed)[0][(layout, causal)], base):
            assert_close(f"{name} P={size} vs P=1", a, b, tol=1e-5)


def test_compiled_ring_passes_blocks_and_gathers_nothing():
    for packed in (False, True):
        hlo = compiled_ring(4, packed).as_text()
        assert "collective-permute" in hlo
        for op in ("all-gather", "all-to-all", "all-reduce"):
            assert op not in hlo, f"{op} in the compiled ring ({'packed' if packed else 'dense'})"


# Masks beyond full / causal: windows (contiguous and striped), softcap, and a window narrow enough that
# the ring stops early (its dK/dV go home by a longer shift).
EXTRAS = [
    ("striped", True, (5, 0), 3.0, 4),
    ("striped", False, (6, 3), None, 4),
    ("contiguous", False, (5, 2), 2.0, 4),
    ("contiguous", True, (9, 0), None, 8),
    ("zigzag", True, None, 2.5, 8),
]


@functools.cache
def extra_results():
    arrays = dense_case(seed=3)
    meta, packed_arrays = packed_case(seed=4)
    outs = {}
    for size in (4, 8):
        mesh = cpu_mesh(size)
        cases = [c for c in EXTRAS if c[-1] == size]
        inputs = [sharded(mesh, to_layout_order(arrays, size, c[0]), None) for c in cases]
        packed_inputs = sharded(mesh, to_layout_order(packed_arrays, size, "striped", meta), meta)
        with_packed = size == 4  # a windowed ring unrolls its steps: the packed one compiles slowly

        def program(inputs, packed_inputs, mesh=mesh, cases=cases, with_packed=with_packed):
            res = []
            for x, (layout, causal, window, softcap, _) in zip(inputs, cases):
                res.append(cp_vjp(mesh, *after(x, res[-1] if res else None), layout=layout, causal=causal,
                                  window=window, softcap=softcap, implementation="xla"))
            if with_packed:
                res.append(cp_vjp(mesh, *after(packed_inputs, res[-1]), packed=meta, layout="striped",
                                  causal=True, window=(7, 0), softcap=4.0, implementation="xla"))
            return res

        res = jax.device_get(jax.jit(program, compiler_options=FAST_COMPILE)(inputs, packed_inputs))
        for case, r in zip(cases, res):
            outs[case] = from_layout_order(r, size, case[0])
        if with_packed:
            outs["packed"] = from_layout_order(res[-1], size, "striped", meta)
    return arrays, (meta, packed_arrays), outs


@pytest.mark.parametrize("case", EXTRAS, ids=lambda c: f"{c[0]}-causal{c[1]}-w{c[2]}-cap{c[3]}-P{c[4]}")
def test_ring_windows_and_softcap(case):
    arrays, _, outs = extra_results()
    layout, causal, window, softcap, size = case
    with jax.default_device(jax.devices("cpu")[0]):
        ref = reference_vjp(*arrays, causal=causal, window=window, softcap=softcap)
    for name, a, b in zip(NAMES, outs[case], ref):
        assert_close(f"{name} {case}", a, b)


def test_packed_ring_with_window_and_softcap():
    _, (meta, arrays), outs = extra_results()
    with jax.default_device(jax.devices("cpu")[0]):
        ref = reference_vjp(*arrays, packed=meta, causal=True, window=(7, 0), softcap=4.0)
    for name, a, b in zip(NAMES, outs["packed"], ref):
        assert_close(f"{name} packed P=4", a, b)


def test_bf16_ring_by_the_oracle_rule():
    """bf16 inputs through the xla blocks (float32 math, partials merged in float32) against the
    float32 reference, with plain bf16 attention setting the error budget (tests/oracle.py)."""
    size, layout = 4, "zigzag"
    mesh = cpu_mesh(size)
    arrays32 = dense_case(seed=5)
    arrays = tuple(x.astype(jnp.bfloat16) if i < 4 else x for i, x in enumerate(arrays32))
    inputs = sharded(mesh, to_layout_order(arrays, size, layout), None)
    run = jax.jit(lambda *x: cp_vjp(mesh, *x, layout=layout, causal=True, implementation="xla"),
                  compiler_options=FAST_COMPILE)
    ours = from_layout_order(jax.device_get(run(*inputs)), size, layout)
    up = tuple(np.asarray(x, np.float32) for x in arrays)
    with jax.default_device(jax.devices("cpu")[0]):
        ref = reference_vjp(*up, causal=True)
        (out, lse), vjp = jax.vjp(lambda q, k, v: reference.naive_attention(q, k, v, causal=True, return_lse=True),
                                  *(jnp.asarray(x) for x in arrays[:3]))
        naive = jax.device_get((out, lse, *vjp((jnp.asarray(arrays[3]), jnp.asarray(arrays[4])))))
    assert ours[0].dtype == jnp.bfloat16
    for name, a, b, c in zip(NAMES, ours, ref, naive):
        check_oracle(name, a, b, c)


# ---------------------------------------------------------------------------------------------------------
# Memory


@functools.cache
def compiled_ring(size, packed: bool, tokens_per_device=64):
    """One zigzag causal ring's forward + backward, compiled from shapes alone."""
    mesh = cpu_mesh(size)
    hq, hk, d = 4, 2, 16
    rows = P(AXIS) if packed else P(None, AXIS)
    lead = (tokens_per_device * size,) if packed else (1, tokens_per_device * size)
    shapes = [jax.ShapeDtypeStruct((*lead, h, d), jnp.float32, sharding=NamedSharding(mesh, rows))
              for h in (hq, hk, hk, hq)]
    extra = {}
    if packed:  # sequences of 2P-multiple spans; the values do not matter for compiling
        cu = jax.ShapeDtypeStruct((4,), jnp.int32, sharding=NamedSharding(mesh, P()))
        shapes += [cu, jax.ShapeDtypeStruct((3,), jnp.int32, sharding=NamedSharding(mesh, P()))]

    def step(q, k, v, dout, *meta):
        if meta:
            extra.update(cu_seqlens=meta[0], seqused=meta[1])
        out, vjp = jax.vjp(lambda q, k, v: cp.context_parallel_attention(
            q, k, v, mesh=mesh, axis=AXIS, layout="zigzag", causal=True, implementation="xla", **extra), q, k, v)
        return (out, *vjp(dout))

    return jax.jit(step, compiler_options=FAST_COMPILE).lower(*shapes).compile()


def test_ring_memory_per_device_does_not_grow_with_axis_size():
    """Fixed tokens per device, P = 2, 4, 8: the compiled forward + backward's per-device temporaries stay
    flat (steps after the first run in a loop; only one visiting block is alive at a time)."""
    stats = {size: compiled_ring(size, False).memory_analysis() for size in (2, 4, 8)}
    if any(s is None for s in stats.values()):
        pytest.skip("compiled memory_analysis() is unavailable on this backend")
    assert len({s.argument_size_in_bytes for s in stats.values()}) == 1, "per-device inputs must not change"
    temp = {size: s.temp_size_in_bytes for size, s in stats.items()}
    assert temp[4] <= 1.05 * temp[2] and temp[8] <= 1.05 * temp[2], f"per-device temporaries grow with P: {temp}"
