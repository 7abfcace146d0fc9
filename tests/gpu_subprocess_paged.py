"""One jitted decode step -- paged_kv_update of each sequence's new token, then paged_attention with the
automatic split count and with 3 splits -- replayed with new page tables, cache lengths and queries every
time (same shapes); saves every output to an .npz. The child process of the command-buffer test, which runs
it under XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1".

It checks, and exits non-zero otherwise: every call matches the reference (computed from a cache updated on
the host) by the oracle rule, and all calls share one executable.

usage: python tests/gpu_subprocess_paged.py OUT.npz
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash
from paged_harness import IMPL, Layout, check_case, random_array, reference_and_naive

# A window shorter than the caches: some of the splits see no key.
CASE = dict(dtype="bfloat16", head_dims=(128, 128), heads=(8, 2), causal=True, window=(200, 0), softcap=None)
BATCH, PAGE_SIZE, MAX_PAGES, TRIALS = 8, 16, 48, 20
CAPACITY = MAX_PAGES * PAGE_SIZE
NUM_PAGES = BATCH * MAX_PAGES + 5


def decode_step(q, k_new, v_new, k_cache, v_cache, page_table, lengths):
    """lengths: tokens in each cache before this step's token."""
    k_cache, v_cache = jax_flash.paged_kv_update(k_cache, v_cache, k_new, v_new, page_table, lengths)
    kw = dict(causal=CASE["causal"], window=CASE["window"], softcap=CASE["softcap"], return_lse=True,
              implementation=IMPL)
    auto = jax_flash.paged_attention(q, k_cache, v_cache, page_table, lengths + 1, **kw)
    three = jax_flash.paged_attention(q, k_cache, v_cache, page_table, lengths + 1, num_splits=3, **kw)
    return (*auto, *three)


def trial_data(trial):
    """Distinct pages in a new order, lengths from 0 to CAPACITY - 1 (one of each end), new tokens."""
    rng = np.random.default_rng(trial)
    table = rng.permutation(NUM_PAGES)[:BATCH * MAX_PAGES].reshape(BATCH, MAX_PAGES).astype(np.int32)
    lengths = rng.integers(0, CAPACITY, BATCH)
    lengths[rng.choice(BATCH, 2, replace=False)] = [0, CAPACITY - 1]
    (d, dv), (hq, hk) = CASE["head_dims"], CASE["heads"]
    keys = jax.random.split(jax.random.key(trial), 3)
    dtype = jnp.dtype(CASE["dtype"])
    q = random_array(keys[0], (BATCH, 1, hq, d), dtype)
    k_new = random_array(keys[1], (BATCH, 1, hk, d), dtype)
    v_new = random_array(keys[2], (BATCH, 1, hk, dv), dtype)
    return q, k_new, v_new, table, lengths.astype(np.int32)


def pools():
    (d, dv), (_, hk) = CASE["head_dims"], CASE["heads"]
    keys = jax.random.split(jax.random.key(1000), 2)
    dtype = jnp.dtype(CASE["dtype"])
    return (random_array(keys[0], (NUM_PAGES, PAGE_SIZE, hk, d), dtype),
            random_array(keys[1], (NUM_PAGES, PAGE_SIZE, hk, dv), dtype))


def host_update(k_cache, v_cache, k_new, v_new, table, lengths):
    k_cache, v_cache = k_cache.copy(), v_cache.copy()
    for b, n in enumerate(lengths):
        page, slot = table[b, n // PAGE_SIZE], n % PAGE_SIZE
        k_cache[page, slot], v_cache[page, slot] = k_new[b, 0], v_new[b, 0]
    return k_cache, v_cache


def run(check: bool) -> dict:
    """Runs every trial with one fresh jitted step; check=True also compares with the reference."""
    traces = []

    def traced(*args):
        traces.append(1)  # runs once per trace, i.e. once per new executable
        return decode_step(*args)

    step = jax.jit(traced)
    k_pool, v_pool = pools()
    device_pools = jax.device_put(k_pool), jax.device_put(v_pool)
    results = {}
    for trial in range(TRIALS):
        q, k_new, v_new, table, lengths = trial_data(trial)
        outs = jax.device_get(step(q, k_new, v_new, *device_pools, table, lengths))
        if check:
            k_cache, v_cache = host_update(k_pool, v_pool, k_new, v_new, table, lengths)
            layout = Layout(page_size=PAGE_SIZE, num_pages=NUM_PAGES, page_table=table,
                            cache_seqlens=lengths + 1)
            ref, naive = reference_and_naive(CASE, layout, (q, k_cache, v_cache))
            check_case(outs[:2], ref, naive, layout, CASE)
            check_case(outs[2:], ref, naive, layout, CASE)
        for name, x in zip(("out_auto", "lse_auto", "out_3", "lse_3"), outs):
            results[f"{trial}_{name}"] = np.asarray(x)
        executables = step._cache_size() if hasattr(step, "_cache_size") else None
        print(f"trial {trial}: lengths {lengths.tolist()}, traces {len(traces)}, executables {executables}",
              flush=True)
        assert len(traces) == 1, f"trial {trial}: {len(traces)} traces of the step, expected 1"
        assert executables in (None, 1), f"trial {trial}: {executables} executables, expected 1"
    return results


if __name__ == "__main__":
    np.savez(sys.argv[1], **run(check=True))
