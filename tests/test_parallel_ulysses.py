"""Ulysses (all-to-all over heads) attention on the CPU (8 forced host devices, float32): for P in {2, 4, 8}
(P = 1 has nothing to exchange), every layout, causal and not, dense and packed, output, lse and gradients
equal single-device reference attention. Kv heads (2) are split for P = 2 and repeated for P = 4, 8."""

import jax
import pytest

from test_parallel_ring import (CASES, FAST_COMPILE, NAMES, assert_close, cp_vjp, cpu_mesh, dense_case,
                                from_layout_order, packing_rows_are_zero, reference_vjp, references, ring_results,
                                sharded, to_layout_order)

HEADS = (8, 2)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("layout, causal", CASES)
@pytest.mark.parametrize("size", [2, 4, 8])
def test_ulysses_equals_single_device_attention(size, layout, causal, packed):
    ours = ring_results(size, packed, "ulysses", HEADS)[0][(layout, causal)]
    for name, a, b in zip(NAMES, ours, references(packed, HEADS)[causal]):
        assert_close(f"{name} (P={size}, {layout}, causal={causal})", a, b)
    if packed:
        packing_rows_are_zero(ours)


def test_ulysses_window_and_softcap():
    size, layout = 4, "striped"
    mesh = cpu_mesh(size)
    arrays = dense_case(seed=7, hq=8, hk=4)
    kw = dict(causal=False, window=(6, 2), softcap=3.0)
    inputs = sharded(mesh, to_layout_order(arrays, size, layout), None)
    run = jax.jit(lambda *x: cp_vjp(mesh, *x, strategy="ulysses", layout=layout, implementation="xla", **kw),
                  compiler_options=FAST_COMPILE)
    ours = from_layout_order(jax.device_get(run(*inputs)), size, layout)
    with jax.default_device(jax.devices("cpu")[0]):
        ref = reference_vjp(*arrays, **kw)
    for name, a, b in zip(NAMES, ours, ref):
        assert_close(name, a, b)


def test_compiled_ulysses_uses_all_to_all_only():
    size = 4
    mesh = cpu_mesh(size)
    arrays = dense_case(hq=8, hk=2)
    inputs = sharded(mesh, to_layout_order(arrays, size, "zigzag"), None)
    hlo = jax.jit(lambda *x: cp_vjp(mesh, *x, strategy="ulysses", layout="zigzag", causal=True,
                                    implementation="xla"),
                  compiler_options=FAST_COMPILE).lower(*inputs).compile().as_text()
    assert "all-to-all" in hlo
    assert "collective-permute" not in hlo and "all-gather" not in hlo
