"""Packed attention on the kernels under vmap and sharded jit.

vmap of flash_attention_varlen and of segment-id attention compiles to one kernel call per direction and is
bitwise equal to per-element calls (deterministic=True: the kernels are bitwise independent of where a
sequence sits in the packing). With 2 or more GPUs: segment-id attention sharded over batch and heads,
varlen over heads and paged attention over batch and kv heads (caches whole or their pages split with the
batch) compile without collectives and are bitwise equal to the single-device run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_flash
from jax_flash import _ffi

pytestmark = pytest.mark.gpu

COLLECTIVES = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")


def _normal(key, shape, dtype=jnp.bfloat16):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _custom_calls(compiled, target):
    return compiled.as_text().count(f'custom_call_target="{target}"')


def _assert_bitwise(got, want, what):
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (what, i)
        assert np.array_equal(g.view(np.uint8), w.view(np.uint8)), f"{what}: output {i} differs"


def _with_grads(attend):
    """out, lse and the vjp (dq, dk, dv) with cotangents for both, from one forward call."""

    def step(q, k, v, dout, dlse, *rest):
        outs, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, *rest), q, k, v)
        return outs, vjp((dout, dlse))

    return step


# ---------------------------------------------------------------------------------------------------------
# vmap: one kernel call over every element's sequences

V, N, TQ, TK, HQ, HK, D = 3, 5, 1024, 1280, 8, 2, 128


def _packings(seed):
    """(V, N + 1) offsets and (V, N) used lengths: random lengths per element, padding inside spans and
    between sequences, rows before the first and after the last."""
    rng = np.random.default_rng(seed)
    offsets, used = [], []
    for total in (TQ, TK):
        cu = np.sort(rng.integers(0, total, (V, N + 1)), axis=1).astype(np.int32)
        spans = np.diff(cu, axis=1)
        offsets.append(cu)
        used.append((spans - rng.integers(0, 40, spans.shape).clip(0, spans)).astype(np.int32))
    return (*(jnp.asarray(x) for x in offsets), *(jnp.asarray(x) for x in used))


def _varlen(q, k, v, cu_q, cu_k, used_q, used_k):
    return jax_flash.flash_attention_varlen(q, k, v, cu_q, cu_k, TQ, TK, seqused_q=used_q, seqused_k=used_k,
                                            causal=True, return_lse=True, deterministic=True,
                                            implementation="cuda")


def test_vmap_of_varlen_is_one_kernel_call_bitwise_equal_to_per_element_calls():
    keys = jax.random.split(jax.random.key(0), 5)
    q, k, v = _normal(keys[0], (V, TQ, HQ, D)), _normal(keys[1], (V, TK, HK, D)), _normal(keys[2], (V, TK, HK, D))
    dout = _normal(keys[3], (V, TQ, HQ, D))
    dlse = jax.random.normal(keys[4], (V, HQ, TQ), jnp.float32)
    args = (q, k, v, dout, dlse, *_packings(seed=1))
    step = _with_grads(_varlen)
    batched = jax.jit(jax.vmap(step)).lower(*args).compile()
    assert _custom_calls(batched, _ffi.VARLEN_FWD_TARGET) == 1
    assert _custom_calls(batched, _ffi.VARLEN_BWD_TARGET) == 1
    got = batched(*args)
    one = jax.jit(step)
    for i in range(V):
        _assert_bitwise(jax.tree.map(lambda x: x[i], got), one(*(x[i] for x in args)), f"element {i}")


def test_vmap_of_segment_ids_is_one_kernel_call_bitwise_equal_to_per_element_calls():
    b, s = 2, 768
    keys = jax.random.split(jax.random.key(2), 5)
    q, k, v = (_normal(keys[0], (V, b, s, HQ, D)), _normal(keys[1], (V, b, s, HK, D)),
               _normal(keys[2], (V, b, s, HK, D)))
    dout = _normal(keys[3], (V, b, s, HQ, D))
    dlse = jax.random.normal(keys[4], (V, b, HQ, s), jnp.float32)
    # Runs of ids (0 = padding) of random lengths in random order.
    rng = np.random.default_rng(3)
    ids = jnp.asarray(np.repeat(rng.integers(0, 6, (V, b, 12)), s // 12, axis=-1), jnp.int32)

    def attend(q, k, v, ids):
        return jax_flash.flash_attention(q, k, v, causal=True, segment_ids=ids, max_segments=12, return_lse=True,
                                         deterministic=True, implementation="cuda")

    step = _with_grads(attend)
    args = (q, k, v, dout, dlse, ids)
    batched = jax.jit(jax.vmap(step)).lower(*args).compile()
    assert _custom_calls(batched, _ffi.VARLEN_FWD_TARGET) == 1
    assert _custom_calls(batched, _ffi.VARLEN_BWD_TARGET) == 1
    got = batched(*args)
    one = jax.jit(step)
    for i in range(V):
        _assert_bitwise(jax.tree.map(lambda x: x[i], got), one(*(x[i] for x in args)), f"element {i}")


# ---------------------------------------------------------------------------------------------------------
# Sharded jit on several GPUs

def _mesh(split_batch: bool, split_heads: bool):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs 2 or more GPUs")
    n = len(devices)
    if split_batch and split_heads:
        if n < 4 or n % 2:
            pytest.skip("needs an even number of 4 or more GPUs")
        shape = (2, n // 2)
    else:
        shape = (n, 1) if split_batch else (1, n)
    if split_heads and HK % shape[1]:
        pytest.skip(f"{HK} kv heads do not split over {shape[1]} GPUs")
    return Mesh(np.array(devices).reshape(shape), ("data", "model"))


def _compiled_local(fn, args, shardings):
    """fn compiled on the sharded args (checked free of collectives) and run; and fn on one device."""
    want = jax.device_get(jax.jit(fn)(*args))
    sharded = [jax.device_put(x, s) for x, s in zip(args, shardings)]
    compiled = jax.jit(fn).lower(*sharded).compile()
    moved = [c for c in COLLECTIVES if c in compiled.as_text()]
    assert not moved, f"the compiled program moves data between devices: {moved}"
    return compiled(*sharded), want


@pytest.mark.parametrize("batch, heads", [(True, True), (True, False), (False, True)],
                         ids=["batch_heads", "batch", "heads"])
def test_segment_ids_sharded(batch, heads):
    mesh = _mesh(batch, heads)
    spec = P("data" if batch else None, None, "model" if heads else None, None)
    b, s = 8, 1024
    keys = jax.random.split(jax.random.key(4), 5)
    q, k, v = _normal(keys[0], (b, s, HQ, D)), _normal(keys[1], (b, s, HK, D)), _normal(keys[2], (b, s, HK, D))
    dout = _normal(keys[3], (b, s, HQ, D))
    dlse = jax.random.normal(keys[4], (b, HQ, s), jnp.float32)
    rng = np.random.default_rng(5)
    ids = jnp.asarray(np.repeat(rng.integers(0, 5, (b, 16)), s // 16, axis=-1), jnp.int32)

    def attend(q, k, v, ids):
        return jax_flash.flash_attention(q, k, v, causal=True, segment_ids=ids, max_segments=16, return_lse=True,
                                         deterministic=True, implementation="cuda")

    named = lambda p: NamedSharding(mesh, p)  # noqa: E731
    got, want = _compiled_local(_with_grads(attend), (q, k, v, dout, dlse, ids),
                                (named(spec), named(spec), named(spec), named(spec),
                                 named(P(spec[0], spec[2], None)), named(P(spec[0], None))))
    _assert_bitwise(got, want, "sharded segment-id attention")


def test_varlen_heads_sharded():
    mesh = _mesh(False, True)
    keys = jax.random.split(jax.random.key(6), 5)
    q, k, v = _normal(keys[0], (TQ, HQ, D)), _normal(keys[1], (TK, HK, D)), _normal(keys[2], (TK, HK, D))
    dout = _normal(keys[3], (TQ, HQ, D))
    dlse = jax.random.normal(keys[4], (HQ, TQ), jnp.float32)
    offsets = [x[0] for x in _packings(seed=7)]
    heads = NamedSharding(mesh, P(None, "model", None))
    whole = NamedSharding(mesh, P())
    got, want = _compiled_local(_with_grads(_varlen), (q, k, v, dout, dlse, *offsets),
                                (heads, heads, heads, heads, NamedSharding(mesh, P("model", None)), *[whole] * 4))
    _assert_bitwise(got, want, "varlen with heads sharded")


@pytest.mark.parametrize("batch, heads, pool_blocks", [(True, False, False), (False, True, False),
                                                       (True, False, True), (True, True, True)],
                         ids=["batch", "heads", "batch_pool_blocks", "batch_heads_pool_blocks"])
def test_paged_sharded(batch, heads, pool_blocks):
    mesh = _mesh(batch, heads)
    data = mesh.shape["data"]
    b, sq, page, max_pages, num_pages = 8, 1, 64, 32, 64 * data
    keys = jax.random.split(jax.random.key(8), 3)
    q = _normal(keys[0], (b, sq, HQ, D))
    k_cache, v_cache = _normal(keys[1], (num_pages, page, HK, D)), _normal(keys[2], (num_pages, page, HK, D))
    rng = np.random.default_rng(9)
    if pool_blocks:
        # Sequence i's pages come from its data shard's block of the pool.
        block = np.arange(b)[:, None] // (b // data)
        table = block * (num_pages // data) + rng.integers(0, num_pages // data, (b, max_pages))
    else:
        table = rng.integers(0, num_pages, (b, max_pages))
    table = jnp.asarray(table, jnp.int32)
    lengths = jnp.asarray(rng.integers(1, max_pages * page + 1, (b,)), jnp.int32)

    def attend(q, k_cache, v_cache, table, lengths):
        # A fixed split count: the automatic plan depends on each device's shapes.
        return jax_flash.paged_attention(q, k_cache, v_cache, table, lengths, num_splits=4, return_lse=True,
                                         implementation="cuda")

    rows, kv = "data" if batch else None, "model" if heads else None
    named = lambda p: NamedSharding(mesh, p)  # noqa: E731
    cache = named(P("data" if pool_blocks else None, None, kv, None))
    got, want = _compiled_local(attend, (q, k_cache, v_cache, table, lengths),
                                (named(P(rows, None, kv, None)), cache, cache, named(P(rows, None)), named(P(rows))))
    _assert_bitwise(got, want, "sharded paged attention")
