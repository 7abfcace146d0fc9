"""One jitted packed forward+backward step called with new random cu_seqlens/seqused every time (same shapes,
same max_seqlen), then once with a larger max_seqlen; saves every output to an .npz. The child process of
the command-buffer test, which runs it under
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1".

It checks, and exits non-zero otherwise: every call matches the reference by the oracle rule, the calls with
one max_seqlen share one executable, and the new max_seqlen gets a new one.

usage: python tests/gpu_subprocess_varlen.py OUT.npz
"""

import sys

import jax
import numpy as np

from varlen_harness import (STATIC, check_case, forward_and_grads_fn, make_inputs, pack, reference_and_naive,
                            run_ours)

CASE = dict(dtype="bfloat16", head_dims=(128, 128), heads=(4, 2), causal=True, softcap=None, window=(256, 0))
SLOTS, TRIALS = 8, 20
MAX_SEQLEN, LARGER_MAX_SEQLEN = 300, 400
# Room for SLOTS spans of the larger bound; not a multiple of the tile sizes.
TOTAL = SLOTS * LARGER_MAX_SEQLEN + 37


def trial_packing(trial, max_seqlen):
    """SLOTS sequences with spans <= max_seqlen (one of them exactly), used rows <= span, in TOTAL rows.
    Odd trials have as many keys as queries per sequence, even ones independent lengths."""
    rng = np.random.default_rng(trial)
    spans_q = rng.integers(0, max_seqlen + 1, SLOTS)
    spans_q[rng.integers(SLOTS)] = max_seqlen
    spans_k = spans_q if trial % 2 else rng.integers(0, max_seqlen + 1, SLOTS)
    used_q = rng.integers(0, spans_q + 1)
    used_k = used_q if trial % 2 else rng.integers(0, spans_k + 1)
    lead = rng.integers(0, 30, 2)
    tail = (TOTAL - lead[0] - spans_q.sum(), TOTAL - lead[1] - spans_k.sum())
    return pack(used_q, used_k, gaps_q=spans_q - used_q, gaps_k=spans_k - used_k, lead=lead, tail=tail)


def run(check: bool) -> dict:
    """Runs every trial with one fresh jitted step; check=True also compares with the reference."""
    traces = []

    def traced(*args, **kwargs):
        traces.append(kwargs["max_seqlen_q"])  # runs once per trace, i.e. once per new executable
        return forward_and_grads_fn(*args, **kwargs)

    step = jax.jit(traced, static_argnames=STATIC)
    trials = [(t, MAX_SEQLEN) for t in range(TRIALS)] + [(TRIALS, LARGER_MAX_SEQLEN)]
    results = {}
    for trial, bound in trials:
        packing = trial_packing(trial, bound)
        assert (packing.total_q, packing.total_k) == (TOTAL, TOTAL)
        inputs = make_inputs(CASE, TOTAL, TOTAL, seed=trial)
        ours = run_ours(CASE, packing, inputs, deterministic=True, max_seqlen=(bound, bound), step=step)
        if check:
            ref, naive = reference_and_naive(CASE, packing, inputs)
            check_case(ours, ref, naive, packing, softcap=CASE["softcap"])
        for name, x in zip(("out", "lse", "dq", "dk", "dv"), ours):
            results[f"{trial}_{name}"] = np.asarray(x)
        executables = step._cache_size() if hasattr(step, "_cache_size") else None
        print(f"trial {trial}: max_seqlen {bound}, used q {packing.used_q.tolist()}, traces {len(traces)}, "
              f"executables {executables}", flush=True)
        want = 1 if bound == MAX_SEQLEN else 2
        assert len(traces) == want, f"trial {trial}: {len(traces)} traces of the step, expected {want}"
        assert executables in (None, want), f"trial {trial}: {executables} executables, expected {want}"
    return results


if __name__ == "__main__":
    np.savez(sys.argv[1], **run(check=True))
