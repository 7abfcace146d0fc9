"""Attention over a paged KV cache on the GPU against the fp32 reference by the oracle rule (DESIGN.md), with
the exact rules for padding rows and rows that see no key; invariance to the cache's layout; out-of-range
device data; command buffers; the in-place cache update.

JAX_FLASH_TEST_IMPL=xla runs the same code with the reference standing in for the kernels (see
paged_harness.py); the `gpu` marker still decides whether a test runs, so on a machine without a GPU run
    JAX_FLASH_TEST_IMPL=xla python -m pytest --noconftest tests/test_gpu_paged.py
(--noconftest drops conftest.py's skip of `gpu` tests).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash.ops import SplitPlan
from gpu_harness import assert_same_bits_under_command_buffers, poison_device_memory
from gpu_subprocess_paged import run as run_trials
from paged_harness import (FACTORS, IMPL, INT32_MAX, INT32_MIN, STATIC, Layout, assert_bitwise, attention_fn,
                           case_id, case_layout, check_case, clamped_equivalent, make_inputs, pages_needed, paginate,
                           pairwise_cases, random_array, reference_and_naive, run_case, run_ours)

gpu = pytest.mark.gpu

CASES = pairwise_cases()


@gpu
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_grid(case):
    run_case(case)


def _case(**kw):
    base = dict(dtype="bfloat16", head_dims=(128, 128), heads=(8, 2), causal=True, window=None, softcap=None,
                num_splits=None, table="shuffled", page_size=16, queries="decode")
    return dict(base, **kw)


# Many splits over long caches with a short window: most splits see no key; more splits than key blocks.
SPLIT_CASES = [
    _case(queries="decode", window=(16, 0), num_splits=32, capacity=4096),
    _case(queries="multi", window=(32, 32), num_splits=8, capacity=4096, page_size=128, heads=(14, 2)),
    _case(queries="chunked", causal=False, window=(64, 0), num_splits=16, capacity=3000, dtype="float16",
          table="shared", page_size=64),
    _case(queries="decode", num_splits=64, capacity=256, page_size=8, heads=(8, 1), softcap=30.0),
]


@gpu
@pytest.mark.parametrize("case", SPLIT_CASES, ids=[case_id(c) for c in SPLIT_CASES])
def test_splits_that_see_no_key(case):
    run_case(case)


# Halving splits (1/2, 1/4, ..., the last two equal; the automatic plan for decode over a wave of CTAs and a
# long cache) forced on every query mode: lengths from 1 to the capacity, windows that leave most parts
# without a key, more parts than key blocks, the 16-part maximum, packed queries.
HALVING_CASES = [
    _case(queries="decode", heads=(32, 8), page_size=128, capacity=8192, num_splits=7),
    _case(queries="decode", window=(16, 0), num_splits=16, capacity=4096),
    _case(queries="decode", num_splits=16, capacity=256, page_size=8, heads=(8, 1), softcap=30.0),
    _case(queries="multi", window=(32, 32), num_splits=8, capacity=4096, page_size=128, heads=(14, 2)),
    _case(queries="chunked", causal=False, window=(64, 0), num_splits=5, capacity=3000, dtype="float16",
          table="shared", page_size=64),
]


@gpu
@pytest.mark.parametrize("case", HALVING_CASES, ids=[case_id(c) for c in HALVING_CASES])
def test_halving_splits(case, monkeypatch):
    plan = SplitPlan(case["num_splits"], halving=True)
    monkeypatch.setattr(jax_flash.ops.paged, "choose_split_plan", lambda **kw: plan)
    step = jax.jit(attention_fn, static_argnames=STATIC)  # a cache of its own: the plan is not an argument
    layout = case_layout(case)
    inputs = make_inputs(case, layout, seed=0)
    poison_device_memory()
    ours = run_ours(case, layout, inputs, num_splits=None, step=step)
    ref, naive = reference_and_naive(case, layout, inputs)
    check_case(ours, ref, naive, layout, case)
    poison_device_memory()
    assert_bitwise(ours, run_ours(case, layout, inputs, num_splits=None, step=step), "a second run")


# 128k-token caches: the automatic split count at its cap, and one split walking the whole cache.
LONG_CASES = [
    _case(queries="decode", page_size=256, capacity=131072, num_splits=None),
    _case(queries="multi", page_size=16, capacity=131072, num_splits=1, dtype="float16", window=(4096, 0)),
]


@gpu
@pytest.mark.large
@pytest.mark.parametrize("case", LONG_CASES, ids=[case_id(c) for c in LONG_CASES])
def test_long_caches(case):
    run_case(case)


def test_grid_covers_the_issue():
    """The grid holds what issue #4 asks for (checked on the host, so it runs everywhere)."""
    assert 30 <= len(CASES) <= 64
    for name, values in FACTORS.items():
        assert {repr(c[name]) for c in CASES} == {repr(v) for v in values}, name
    layouts = [(c, case_layout(c)) for c in CASES]
    for case, layout in layouts:
        lengths = layout.cache_seqlens
        assert lengths.min() <= 1 and lengths.max() == layout.capacity, case_id(case)
        assert ((lengths % layout.page_size == 0) & (lengths > 0)).any(), case_id(case)
        if case["queries"] == "multi":
            assert 2 <= layout.sq <= 16 and lengths.min() < layout.sq
        if layout.packed:
            chunks = np.diff(layout.cu_q)
            assert (chunks == 0).any() and layout.padding_rows()[layout.cu_q[-1]:].all()
            assert ((chunks > 0) & (lengths == 0)).any() and (chunks > lengths).any()
        valid = (layout.page_table >= 0) & (layout.page_table < layout.num_pages)
        if case["table"] == "shared":
            assert not valid.all()
        used = np.concatenate([layout.page_table[b, :pages_needed(n, layout.page_size)]
                               for b, n in enumerate(lengths)])
        if case["table"] == "shuffled":
            assert len(set(used.tolist())) == len(used)
    shared = [layout for case, layout in layouts if case["table"] == "shared"]
    assert any(len(set(_used_pages(layout))) < len(_used_pages(layout)) for layout in shared)
    assert any(layout.packed and layout.cu_q[0] > 0 for _, layout in layouts)
    # Splits that see no key: a window far shorter than a third of the cache, with 3 splits.
    assert any(c["window"] and c["window"][0] * 3 < layout.capacity and c["num_splits"] == 3
               and c["queries"] != "chunked" for c, layout in layouts)


def _used_pages(layout):
    return np.concatenate([layout.page_table[b, :pages_needed(n, layout.page_size)]
                           for b, n in enumerate(layout.cache_seqlens)]).tolist()


# ---------------------------------------------------------------------------------------------------------
# Invariance: the same sequences in any paged layout give the same answer

INVARIANCE_CASES = {
    "decode": _case(queries="decode"),
    "chunked": _case(queries="chunked", causal=False, window=(48, 16), softcap=30.0, dtype="float16",
                     heads=(14, 2), head_dims=(192, 128)),
}
KEY_LENGTHS = [1, 255, 256, 257, 1000, 640]  # keys of each sequence
CHUNKS = [1, 9, 0, 64, 129, 7]  # packed queries of each sequence (chunked), at rows 3... with 11 rows after
# (page size, page order, num_splits): every page size in order and shuffled, other split counts.
LAYOUTS = ([(p, kind, None) for p in (8, 16, 64, 128, 256) for kind in ("sequential", "shuffled")]
           + [(16, "shuffled", 1), (16, "shuffled", 2), (16, "shuffled", 7), (128, "sequential", 1)])


def _logical_inputs(case, seed):
    """q and every sequence's keys and values (numpy), with the query layout."""
    (d, dv), (hq, hk) = case["head_dims"], case["heads"]
    dtype = jnp.dtype(case["dtype"])
    scale = 4.0 if case["softcap"] else 1.0
    keys = jax.random.split(jax.random.key(seed), 2 * len(KEY_LENGTHS) + 1)
    k = [random_array(keys[2 * b], (n, hk, d), dtype, scale) for b, n in enumerate(KEY_LENGTHS)]
    v = [random_array(keys[2 * b + 1], (n, hk, dv), dtype) for b, n in enumerate(KEY_LENGTHS)]
    if case["queries"] == "decode":
        queries = dict(sq=1)
        q_shape = (len(KEY_LENGTHS), 1, hq, d)
    else:
        cu = (3 + np.concatenate([[0], np.cumsum(CHUNKS)])).astype(np.int32)
        queries = dict(cu_q=cu, total_q=int(cu[-1]) + 11, max_seqlen_q=max(CHUNKS))
        q_shape = (queries["total_q"], hq, d)
    return random_array(keys[-1], q_shape, dtype, scale), k, v, queries


def _paged_inputs(case, q, k, v, queries, page_size, kind, seed):
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(case["dtype"])
    noise = lambda shape: np.array(rng.standard_normal(shape, np.float32).astype(dtype))  # noqa: E731
    table, num_pages, k_cache, v_cache = paginate(k, v, page_size, kind, rng, noise)
    layout = Layout(page_size=page_size, num_pages=num_pages, page_table=table,
                    cache_seqlens=np.array(KEY_LENGTHS, np.int32), **queries)
    return layout, (q, k_cache, v_cache)


@gpu
@pytest.mark.parametrize("name", list(INVARIANCE_CASES))
def test_same_answer_whatever_the_page_size_order_and_splits(name):
    case = INVARIANCE_CASES[name]
    q, k, v, queries = _logical_inputs(case, seed=11)
    results = {}
    ref = naive = None
    for i, (page_size, kind, splits) in enumerate(LAYOUTS):
        layout, inputs = _paged_inputs(case, q, k, v, queries, page_size, kind, seed=100 + i)
        if ref is None:  # the answer depends on the sequences only: one reference for every layout
            ref, naive = reference_and_naive(case, layout, inputs)
        poison_device_memory()
        ours = run_ours(case, layout, inputs, num_splits=splits)
        check_case(ours, ref, naive, layout, case)
        results[page_size, kind, splits] = ours
        if (page_size, kind, splits) == (16, "shuffled", None):
            poison_device_memory()
            assert_bitwise(ours, run_ours(case, layout, inputs, num_splits=splits), "a second run")
    # Where pages live changes no arithmetic: bitwise equal for one page size and split count.
    for page_size in (8, 16, 64, 128, 256):
        assert_bitwise(results[page_size, "sequential", None], results[page_size, "shuffled", None],
                       f"page size {page_size}, sequential vs shuffled pages")


# ---------------------------------------------------------------------------------------------------------
# Slots past a sequence's length: a serving loop never wrote them, so they may hold anything (NaN included).
# They must change no bit of the answer. The decode kernel on Hopper loads whole boxes of 8..64 slots with the
# TMA unit and zeroes the values past the length itself (paged_fwd_kernel.cuh); the cp.async path never loads
# them.

NAN_TAIL_CASES = [_case(queries="decode", page_size=64, table="sequential"),
                  _case(queries="decode", page_size=8, table="sequential", heads=(6, 2), num_splits=3),
                  _case(queries="multi", page_size=16, table="sequential", causal=False, heads=(4, 1)),
                  _case(queries="chunked", page_size=64, table="sequential")]


@gpu
@pytest.mark.parametrize("case", NAN_TAIL_CASES, ids=[case_id(c) for c in NAN_TAIL_CASES])
def test_slots_past_the_length_never_reach_the_output(case):
    layout = case_layout(case)
    q, k_cache, v_cache = make_inputs(case, layout, seed=3)
    # Sequential tables share no page, so every slot past a length (and every unused page) belongs to nobody.
    unused = np.ones(k_cache.shape[:2], bool)
    for b, n in enumerate(layout.seqlens_k()):
        pages = layout.page_table[b, :pages_needed(n, layout.page_size)]
        unused[pages] = False
        if n % layout.page_size:
            unused[pages[-1], n % layout.page_size:] = True
    assert unused.any() and not unused.all()
    nan_k, nan_v = (np.where(unused[:, :, None, None], np.nan, np.asarray(c)).astype(c.dtype)
                    for c in (k_cache, v_cache))
    poison_device_memory()
    ours = run_ours(case, layout, (q, k_cache, v_cache))
    ref, naive = reference_and_naive(case, layout, (q, k_cache, v_cache))
    check_case(ours, ref, naive, layout, case)
    poison_device_memory()
    assert_bitwise(run_ours(case, layout, (q, nan_k, nan_v)), ours, "NaN in the slots past the lengths")


# ---------------------------------------------------------------------------------------------------------
# Out-of-range device data: page indices outside [0, P), cache_seqlens outside [0, capacity], cu_seqlens_q
# outside [0, Tq] give the answer of the clamped call (clamped_equivalent); nothing is read out of bounds.

def _out_of_range(name):
    """(case, layout, inputs) of one out-of-range case."""
    rng = np.random.default_rng(5)
    if name == "dense":
        case = _case(queries="multi", head_dims=(64, 64), heads=(6, 2), page_size=16)
        batch, max_pages, num_pages = 6, 8, 20
        table = rng.integers(0, num_pages, (batch, max_pages))
        table[0, [1, 3, 5, 6]] = [-1, num_pages, INT32_MAX, INT32_MIN]  # inside sequence 0's 120 keys
        table[1, 7] = num_pages + 5
        table[3, [0, 7]] = [-(2**30), 2**30]
        table[4, 3:] = [-1, num_pages, INT32_MIN, INT32_MAX, 99999]  # past sequence 4's 37 keys
        table[2] = -1  # a sequence without keys
        lengths = [120, 500, -5, INT32_MAX, 37, INT32_MIN]  # 500 and INT32_MAX: past the capacity (128)
        layout = Layout(page_size=16, num_pages=num_pages, page_table=table.astype(np.int32),
                        cache_seqlens=np.array(lengths, np.int32), sq=2)
    elif name == "packed":
        case = _case(queries="chunked", dtype="float16", heads=(4, 1), page_size=8, window=(16, 0), num_splits=3)
        batch, max_pages, num_pages, total_q = 6, 12, 30, 64
        table = rng.integers(0, num_pages, (batch, max_pages))
        table[2, [0, 4, 11]] = [-1, num_pages, INT32_MAX]
        table[3, 5] = INT32_MIN
        table[0] = rng.choice([-1, num_pages, INT32_MIN, INT32_MAX], max_pages)  # a sequence without keys
        # Clamped: [0, 3, 3, 40, 64, 64, 64]; max_seqlen_q = 4 is far below the spans 37 and 24.
        cu = np.array([-50, 3, 3, 40, 10**9, INT32_MAX, INT32_MAX], np.int32)
        lengths = [-1, 7, 90, 1000, 5, 30]
        layout = Layout(page_size=8, num_pages=num_pages, page_table=table.astype(np.int32),
                        cache_seqlens=np.array(lengths, np.int32), cu_q=cu, total_q=total_q, max_seqlen_q=4)
    else:  # "packed-tail": rows after the clamped cu_seqlens_q[-1] are padding
        case = _case(queries="chunked", heads=(8, 2), page_size=32, causal=False)
        batch, max_pages, num_pages, total_q = 6, 4, 16, 64
        table = rng.integers(0, num_pages, (batch, max_pages))
        table[1, 1:] = [num_pages, -1, INT32_MIN]  # past its 8 keys
        table[3, 0] = INT32_MAX  # sequence 3's only page: its 30 keys are zeros
        # Clamped: [0, 0, 20, 20, 45, 45, 45]: sequence 1 owns rows 0..19, 3 rows 20..44; 45..63 are padding.
        cu = np.array([-7, -3, 20, 20, 45, 45, 45], np.int32)
        lengths = [INT32_MAX, 8, -100, 30, 2**30, 1]
        layout = Layout(page_size=32, num_pages=num_pages, page_table=table.astype(np.int32),
                        cache_seqlens=np.array(lengths, np.int32), cu_q=cu, total_q=total_q, max_seqlen_q=1)
    return case, layout, make_inputs(case, layout, seed=9)


OUT_OF_RANGE = ("dense", "packed", "packed-tail")


def run_out_of_range_case(name):
    """Ours on the raw data against the reference of the clamped call. `scripts/gpu_cycle.sh memcheck` runs
    every case under compute-sanitizer (run_out_of_range_cases), which shows no access leaves the buffers."""
    case, layout, inputs = _out_of_range(name)
    clamped, k_cache, v_cache = clamped_equivalent(layout, *inputs[1:])
    poison_device_memory()
    ours = run_ours(case, layout, inputs)
    ref, naive = reference_and_naive(case, clamped, (inputs[0], k_cache, v_cache))
    check_case(ours, ref, naive, clamped, case)


def run_out_of_range_cases():
    for name in OUT_OF_RANGE:
        run_out_of_range_case(name)
        print(f"paged out-of-range case {name}: ok", flush=True)


@gpu
@pytest.mark.parametrize("name", OUT_OF_RANGE)
def test_out_of_range_device_data_gives_the_clamped_answer(name):
    run_out_of_range_case(name)


@pytest.mark.parametrize("name", OUT_OF_RANGE)
def test_reference_clamps_like_the_host(name):
    """The reference itself reads out-of-range data as clamped_equivalent says (so the GPU test above
    compares with the right answer); runs everywhere."""
    case, layout, inputs = _out_of_range(name)
    clamped, k_cache, v_cache = clamped_equivalent(layout, *inputs[1:])
    raw_ref, _ = reference_and_naive(case, layout, inputs)
    clamped_ref, _ = reference_and_naive(case, clamped, (inputs[0], k_cache, v_cache))
    for x, y in zip(raw_ref, clamped_ref):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# A cache pool of more than 2^31 elements: page offsets need 64 bits

@gpu
@pytest.mark.large
def test_pages_beyond_2_to_the_31_elements():
    case = _case(page_size=256, heads=(8, 8), head_dims=(128, 128))
    page_elements = 256 * 8 * 128
    num_pages = 2**31 // page_elements + 16  # 4.3 GB per cache in bf16
    batch, max_pages = 3, 4
    table = np.array([[num_pages - 1, num_pages - 2, 0, num_pages - 3],
                      [num_pages // 2, num_pages - 4, num_pages - 5, 1],
                      [num_pages - 6, 2, num_pages - 7, num_pages - 8]], np.int32)
    layout = Layout(page_size=256, num_pages=num_pages, page_table=table,
                    cache_seqlens=np.array([1024, 700, 3 * 256 + 1], np.int32))
    pool = (num_pages, 256, 8, 128)
    dtype = jnp.dtype(case["dtype"])
    keys = jax.random.split(jax.random.key(3), 3)

    @jax.jit
    def page_pattern(key):
        # Nonzero, different on every page, without a pool-sized float32 temporary.
        tile = jax.random.normal(key, pool[1:], jnp.float32)
        pages = jnp.arange(num_pages, dtype=jnp.float32)[:, None, None, None]
        return jnp.sin(0.37 * pages + tile).astype(dtype)

    k_cache, v_cache = page_pattern(keys[0]), page_pattern(keys[1])
    q = random_array(keys[2], (batch, 1, 8, 128), dtype)
    ours = run_ours(case, layout, (q, k_cache, v_cache))
    # The reference reads a compact copy of the used pages: a float32 copy of the pools would not fit.
    compact = Layout(page_size=256, num_pages=table.size, page_table=np.arange(table.size, dtype=np.int32)
                     .reshape(table.shape), cache_seqlens=layout.cache_seqlens)
    pages = jnp.asarray(table.reshape(-1))
    ref, naive = reference_and_naive(case, compact, (q, k_cache[pages], v_cache[pages]))
    check_case(ours, ref, naive, layout, case)


# ---------------------------------------------------------------------------------------------------------
# Command buffers: one decode step replayed with new page tables and lengths, one executable

@gpu
def test_command_buffers_with_new_tables_and_lengths_every_call(tmp_path):
    # The child checks every call against the reference and the executable count (see its docstring);
    # the forward has no atomics: bitwise equal, whatever launches the kernels.
    assert_same_bits_under_command_buffers("gpu_subprocess_paged.py", tmp_path / "paged_cmdbuf.npz",
                                           run_trials(check=False))


# ---------------------------------------------------------------------------------------------------------
# paged_kv_update with donated caches: no copy of the cache, no growth over a decode loop

DONATION = dict(num_pages=2048, page_size=16, heads=(8, 2), head_dims=(128, 128), batch=8, max_pages=64,
                steps=50)


def _decode_step(q, k_new, v_new, k_cache, v_cache, page_table, lengths):
    k_cache, v_cache = jax_flash.paged_kv_update(k_cache, v_cache, k_new, v_new, page_table, lengths)
    out = jax_flash.paged_attention(q, k_cache, v_cache, page_table, lengths + 1, return_lse=True,
                                    implementation=IMPL)
    return out, k_cache, v_cache


def _bytes_in_use(device):
    stats = device.memory_stats()
    return None if not stats or "bytes_in_use" not in stats else stats["bytes_in_use"]


@gpu
def test_kv_update_in_place_when_donated():
    cfg = DONATION
    (hq, hk), (d, dv) = cfg["heads"], cfg["head_dims"]
    batch, page, steps = cfg["batch"], cfg["page_size"], cfg["steps"]
    rng = np.random.default_rng(0)
    table = rng.permutation(cfg["num_pages"])[:batch * cfg["max_pages"]].reshape(batch, -1).astype(np.int32)
    start = rng.integers(0, cfg["max_pages"] * page - steps, batch).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), 5)
    pool = (cfg["num_pages"], page, hk)
    k_cache = jax.random.normal(keys[0], (*pool, d), jnp.bfloat16)
    v_cache = jax.random.normal(keys[1], (*pool, dv), jnp.bfloat16)
    q = jax.random.normal(keys[2], (batch, 1, hq, d), jnp.bfloat16)
    k_steps = jax.random.normal(keys[3], (steps, batch, 1, hk, d), jnp.bfloat16)
    v_steps = jax.random.normal(keys[4], (steps, batch, 1, hk, dv), jnp.bfloat16)
    cache_bytes = k_cache.nbytes
    host_k, host_v = np.array(k_cache), np.array(v_cache)

    update = jax.jit(jax_flash.paged_kv_update, donate_argnums=(0, 1))
    step = jax.jit(_decode_step, donate_argnums=(3, 4))
    device = k_cache.devices().pop()
    # Temporaries are bounded on the GPU only: XLA's CPU backend scatters bf16 through float32 copies. And
    # the reference (IMPL=xla) gathers every sequence's keys in float32: only the kernels' step is bounded.
    on_gpu = device.platform == "gpu"
    for name, fn, args, temp_checked in (
            ("paged_kv_update", update, (k_cache, v_cache, k_steps[0], v_steps[0], table, start), on_gpu),
            ("decode step", step, (q, k_steps[0], v_steps[0], k_cache, v_cache, table, start),
             on_gpu and IMPL == "cuda")):
        stats = fn.lower(*args).compile().memory_analysis()
        assert stats.alias_size_in_bytes >= 2 * cache_bytes, f"{name}: the caches are not updated in place ({stats})"
        if temp_checked:
            assert stats.temp_size_in_bytes < cache_bytes // 4, f"{name}: a cache-sized temporary ({stats})"

    before = None
    for i in range(steps):
        old = k_cache
        out, k_cache, v_cache = step(q, k_steps[i], v_steps[i], k_cache, v_cache, table, start + i)
        jax.block_until_ready(out)
        assert old.is_deleted(), "the donated cache is still alive after the step"
        if i == 0:
            before = _bytes_in_use(device)
    after = _bytes_in_use(device)
    if before is not None:
        assert after - before < cache_bytes // 2, f"device memory grew by {after - before} bytes in {steps} steps"

    # The update wrote exactly the new tokens, where the tables say.
    k_new, v_new = np.asarray(k_steps), np.asarray(v_steps)
    for i in range(steps):
        for b in range(batch):
            position = start[b] + i
            slot = table[b, position // page], position % page
            host_k[slot], host_v[slot] = k_new[i, b, 0], v_new[i, b, 0]
    assert np.array_equal(np.asarray(k_cache).view(np.uint16), host_k.view(np.uint16))
    assert np.array_equal(np.asarray(v_cache).view(np.uint16), host_v.view(np.uint16))
    # The last step's attention saw the whole updated cache.
    case = _case(heads=cfg["heads"], head_dims=cfg["head_dims"], page_size=page)
    layout = Layout(page_size=page, num_pages=cfg["num_pages"], page_table=table, cache_seqlens=start + steps)
    ref, naive = reference_and_naive(case, layout, (np.asarray(q), host_k, host_v))
    check_case(jax.device_get(out), ref, naive, layout, case)
