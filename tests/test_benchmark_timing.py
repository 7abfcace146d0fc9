"""The benchmarks' timing helpers and the paged benchmark's smoke run, on any backend: time_ms_alternating
reports each step's own time in the order given, and benchmark_paged times every cell of its table."""

import json
import time

import jax.numpy as jnp

from jax_flash import benchmark_paged
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
