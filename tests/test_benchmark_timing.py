"""The benchmarks' timing helpers and the paged benchmark's smoke run, on any backend: time_ms_alternating
reports each step's own time in the order given, the backward alone is the forward+backward's gradient, and
benchmark_paged times every cell of its table."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash import benchmark, benchmark_paged
from jax_flash.benchmark import time_ms, time_ms_alternating


def _sleeping(ms):
    def step(x):
        time.sleep(ms / 1e3)
        return x + 1

    return step


def test_alternating_steps_keep_their_own_times_and_order():
    x = [(jnp.zeros(4),)]
    fast, slow = time_ms_alternating([(_sleeping(1), x), (_sleeping(12), x)], repeats=3, iters=2)
    assert 1 <= fast < slow  # sleep never returns early
    assert slow >= 12
    assert time_ms(_sleeping(3), x, repeats=2, iters=2) >= 3


def test_backward_alone_returns_the_forward_backward_gradients():
    inputs = benchmark.make_inputs(jax.random.PRNGKey(0), 2, 1, 128, 2, 64, jnp.bfloat16)
    for deterministic in (False, True):
        attend = benchmark.attention_fn("ours", True, "xla", deterministic)
        bwd, bwd_inputs = benchmark.timed_step(attend, "bwd", inputs)
        fwd_bwd, same_inputs = benchmark.timed_step(attend, "fwdbwd", inputs)
        assert same_inputs is inputs and len(bwd_inputs) == len(inputs)
        for alone, whole in zip(bwd_inputs, inputs):
            for a, b in zip(bwd(*alone), fwd_bwd(*whole)):
                np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
        assert time_ms(bwd, bwd_inputs, repeats=1, iters=1) > 0


def test_paged_smoke_times_every_cell(tmp_path):
    out = tmp_path / "paged.json"
    benchmark_paged.main(["--smoke", "--implementation", "xla", "--no-cudnn", "--json", str(out)])
    records = json.loads(out.read_text())["results"]
    ours = [r for r in records if r["backend"] == "ours"]
    assert len(ours) == 4  # B {1, 2} x page {16, 128}
    for rec in ours:
        assert rec["error"] is None and rec["ms"] > 0 and rec["gbps"] > 0 and rec["alternating"]
    cudnn = [r for r in records if r["backend"] == "cudnn"]
    assert len(cudnn) == 4 and all(r["error"] == "skipped (--no-cudnn)" and r["ms"] is None for r in cudnn)
    splits = [r for r in records if r["backend"].startswith("ours splits=")]
    assert [r["backend"] for r in splits] == ["ours splits=auto", "ours splits=1"]
    assert all(r["ms"] > 0 for r in splits)


def test_paged_cells_that_do_not_fit_twice_are_timed_one_after_the_other(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark_paged, "fits", lambda *a, copies=1: None if copies == 1 else "too big twice")
    out = tmp_path / "paged.json"
    # cuDNN asked for (two cells per shape): without a GPU it records its error and ours is still timed.
    benchmark_paged.main(["--smoke", "--implementation", "xla", "--json", str(out)])
    records = json.loads(out.read_text())["results"]
    ours = [r for r in records if r["backend"] == "ours"]
    assert len(ours) == 4 and all(r["ms"] > 0 and not r["alternating"] for r in ours)
    assert all(r["ms"] > 0 for r in records if r["backend"].startswith("ours splits="))
