"""The ring schedule, checked without running attention: over all ranks and steps, the calls cover every
visible (query, key) pair of the global mask exactly once and nothing else; zigzag + causal gives every
rank the same attention work (within 5% of the mean) and computes no masked-out block."""

import numpy as np
import pytest

import jax_flash.parallel as cp
from jax_flash import reference
from jax_flash.parallel import _schedule
from jax_flash.parallel.layouts import position


def covered_pairs(layout, size, n, causal, window):
    """(S, S) int: how many times each global (query, key) pair is computed by a call whose result counts."""
    steps = cp.ring_schedule(size, n, causal=causal, layout=layout, window=window)
    count = np.zeros((size * n, size * n), np.int64)
    for rank in range(size):
        for step, tasks in enumerate(steps):
            src, no_wrap = (rank - step) % size, rank >= step
            for task in tasks:
                if task.guard is not None and task.guard != no_wrap:
                    continue
                q_part, k_part = (p if isinstance(p, str) else p[0 if no_wrap else 1]
                                  for p in (task.q_part, task.k_part))
                (q0, q1), (k0, _) = _schedule.part_rows(q_part, n), _schedule.part_rows(k_part, n)
                q_len, k_len, window_ = _schedule.dense_call(task.band, q1 - q0)
                mask = np.asarray(reference.visible_mask(q_len, k_len, window=window_))
                i, j = np.nonzero(mask)
                gq = position(rank, q0 + i, n, size, layout)
                gk = position(src, k0 + j, n, size, layout)
                np.add.at(count, (gq, gk), 1)
    return count, steps


MASKS = [(False, None), (True, None), (True, (5, 0)), (False, (3, 4)), (False, (0, 0)), (True, (40, 0)),
         (False, (20, None)), (False, (None, 6))]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("layout", cp.LAYOUTS)
@pytest.mark.parametrize("causal, window", MASKS)
def test_schedule_covers_the_mask_exactly_once(layout, size, causal, window):
    n = 12 if size != 8 else 6
    windowed = window is not None
    if layout == "zigzag" and windowed:
        with pytest.raises(ValueError, match="zigzag"):
            cp.ring_schedule(size, n, causal=causal, layout=layout, window=window)
        return
    count, steps = covered_pairs(layout, size, n, causal, window)
    want = np.asarray(reference.visible_mask(size * n, size * n, causal=causal, window=window)).astype(np.int64)
    assert np.array_equal(count, want), f"pairs covered {count.max()}x at most, missing {(want > count).sum()}"
    assert 1 <= len(steps) <= size


@pytest.mark.parametrize("size", [2, 4, 8, 16])
@pytest.mark.parametrize("n", [2, 64, 8192])
def test_zigzag_causal_work_is_balanced_and_exact(size, n):
    steps = cp.ring_schedule(size, n, causal=True, layout="zigzag")
    executed, useful = _schedule.rank_work(steps, size, n)
    assert np.array_equal(executed, useful), "zigzag computes no block it then drops"
    mean = executed.mean()
    assert np.all(np.abs(executed - mean) <= 0.05 * mean), f"per-rank work {executed} vs mean {mean}"
    total = size * n
    assert useful.sum() == total * (total + 1) // 2, "exactly the causal triangle"
    # FLOPs per rank at D = Dv = 128: 4 * D per visible pair forward.
    flops = 4 * 128 * executed
    assert flops.max() <= 1.05 * flops.mean()


def test_other_layouts_are_less_balanced_for_causal_attention():
    """The balance check can fail: contiguous causal leaves the first rank nearly idle."""
    size, n = 4, 64
    _, useful = _schedule.rank_work(cp.ring_schedule(size, n, causal=True, layout="contiguous"), size, n)
    assert useful.max() > 3 * useful.min()
    _, useful = _schedule.rank_work(cp.ring_schedule(size, n, causal=True, layout="striped"), size, n)
    assert useful.max() <= 1.05 * useful.mean()  # striped balances too, up to a diagonal per step


def test_windows_shorten_the_ring():
    steps = cp.ring_schedule(8, 16, causal=True, layout="contiguous", window=(20, 0))
    assert len(steps) == 3  # keys at most 20 back: the own block and the two before
    assert len(cp.ring_schedule(8, 16, causal=True, layout="zigzag")) == 8


def test_packed_schedules_need_right_edges_or_full_bands():
    for layout in cp.LAYOUTS:
        for right in (None, 0):
            for steps in (_schedule.plan(layout, 4, None, right, None),):
                for task in (t for step in steps for t in step):
                    assert task.band[1] is not None or task.band[0] is None
    with pytest.raises(ValueError, match="right side"):
        _schedule.plan("striped", 4, None, 3, None)
    with pytest.raises(ValueError, match="striped"):
        _schedule.plan("contiguous", 4, 5, 0, None)
