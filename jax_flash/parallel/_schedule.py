"""The ring schedule: for every step, which attention calls a rank makes, decided before tracing.

At step s rank r holds the keys of rank src = r - s (mod P). The relation between r's query positions and
src's key positions depends on r, but in every supported layout only through one predicate, *no_wrap* =
(r >= s): the visiting block came round the ring without passing rank 0. So a step is a static list of
`Task`s, each a call on parts of the local rows with a mask given as a *band*, and at most a select on
no_wrap picks inputs or drops a result. Every rank runs the same program; XLA sees static shapes.

A band (lo, hi) keeps local key row j for local query row i when lo <= j - i <= hi (None: unbounded),
both rows counted inside the task's parts. Global causal / window masks become bands per layout:
  contiguous  key - query position = (j - i) - delta * n           (delta = r - src in {s, s - P})
  striped     key - query position = (j - i) * P - delta
  zigzag      causal only: chunk pairs are fully visible, fully masked, or the step-0 diagonal.
For zigzag + causal every step after the first is two unmasked (n/2 x n/2) calls: the pair of chunks that
is visible for every rank, and the one of two pairs that is visible for this rank (picked by no_wrap), so
no masked-out block is computed and every rank does the same work.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ALL, FIRST, SECOND = "all", "first", "second"
FULL = (None, None)


@dataclasses.dataclass(frozen=True)
class Task:
    """q_part / k_part: ALL rows, the FIRST or SECOND half (zigzag chunks), or a pair (part where
    no_wrap, part elsewhere). guard: None (always counts), True (only where no_wrap), False (only where
    not); a guarded task is computed everywhere and its result dropped where the guard fails."""

    q_part: str | tuple[str, str]
    k_part: str | tuple[str, str]
    band: tuple[int | None, int | None]
    guard: bool | None = None


def plan(layout: str, axis_size: int, left, right, local_len: int | None):
    """Tuple of steps, each a tuple of Tasks; trailing steps with nothing to compute are left out.

    left / right: the global window sides (None = unbounded; causal is right = 0). local_len: each
    rank's rows of a dense sequence, or None for packed sequences (spans differ per sequence).
    Raises ValueError for a mask the layout cannot express with static calls.
    """
    packed = local_len is None
    _check_supported(layout, left, right, packed)
    steps = []
    for s in range(axis_size):
        if layout == "zigzag":
            steps.append(_zigzag_step(s, right is not None))
            continue
        band = _contiguous_band if layout == "contiguous" else _striped_band
        candidates = [(0, None)] if s == 0 else [(s, True), (s - axis_size, False)]
        bands = [(_clip(band(delta, axis_size, local_len, left, right), local_len), guard)
                 for delta, guard in candidates]
        steps.append(tuple(Task(ALL, ALL, b, g) for b, g in _split([(b, g) for b, g in bands if b])))
    while len(steps) > 1 and not steps[-1]:
        steps.pop()
    return tuple(steps)


def _check_supported(layout, left, right, packed):
    windowed = left is not None or right not in (None, 0)
    if layout == "zigzag" and windowed:
        raise ValueError("layout 'zigzag' supports full and causal attention only (its chunk offsets "
                         "differ per rank); use layout='contiguous' or 'striped' with a window")
    if packed and right not in (None, 0):
        raise ValueError("packed context parallelism needs window right side unbounded or 0 (causal): "
                         "a bounded right side would let queries see other ranks' padding rows")
    if packed and left is not None and (layout != "striped" or right != 0):
        raise ValueError("packed context parallelism supports a left window only with layout='striped' "
                         "and causal=True (local spans differ per sequence in the other layouts)")


def _zigzag_step(s, causal):
    if not causal:
        return (Task(ALL, ALL, FULL),)
    if s == 0:  # both local chunks in increasing position order: plain causal
        return (Task(ALL, ALL, (None, 0)),)
    # src < r (no_wrap): q chunk r sees k chunk src. src > r: q chunk 2P-1-r sees k chunk 2P-1-src.
    # q chunk 2P-1-r always sees k chunk src; the remaining pair is masked for every rank.
    return (Task(SECOND, FIRST, FULL), Task((FIRST, SECOND), (FIRST, SECOND), FULL))


def _contiguous_band(delta, axis_size, n, left, right):
    if n is None:  # packed: full or causal only, and the chunk offset is a whole span
        if delta == 0:
            return (None, right)
        return FULL if delta > 0 or right is None else None
    d = delta * n
    return (None if left is None else d - left, None if right is None else d + right)


def _striped_band(delta, axis_size, n, left, right):
    return (None if left is None else -((left - delta) // axis_size),  # ceil((delta - left) / P)
            None if right is None else (delta + right) // axis_size)


def _clip(band, n):
    """The band restricted to j - i in [-(n - 1), n - 1]: None when empty, sides that do not bind
    become None. With n None (packed) only an empty band is detected."""
    if band is None:
        return None
    lo, hi = band
    if lo is not None and hi is not None and lo > hi:
        return None
    if n is None:
        return band
    if (lo is not None and lo > n - 1) or (hi is not None and hi < -(n - 1)):
        return None
    return (None if lo is None or lo <= -(n - 1) else lo, None if hi is None or hi >= n - 1 else hi)


def _split(bands):
    """Two guarded bands (no_wrap's, the other's) -> an unguarded core they share plus guarded rest."""
    if len(bands) < 2:
        return bands
    (b1, _), (b2, _) = bands
    if b1 == b2:
        return [(b1, None)]
    core = _intersect(b1, b2)
    if core is None:
        return bands
    return ([(core, None)] + [(b, True) for b in _minus(b1, core)] + [(b, False) for b in _minus(b2, core)])


def _intersect(a, b):
    lo = a[0] if b[0] is None else b[0] if a[0] is None else max(a[0], b[0])
    hi = a[1] if b[1] is None else b[1] if a[1] is None else min(a[1], b[1])
    return None if lo is not None and hi is not None and lo > hi else (lo, hi)


def _minus(band, core):
    """band minus core (core inside band): up to two bands."""
    pieces = []
    if core[0] is not None and (band[0] is None or band[0] < core[0]):
        pieces.append((band[0], core[0] - 1))
    if core[1] is not None and (band[1] is None or band[1] > core[1]):
        pieces.append((core[1] + 1, band[1]))
    return pieces


# ---------------------------------------------------------------------------------------------------------
# Dense calls and their work


def part_rows(part: str, n: int) -> tuple[int, int]:
    """(start, stop) of a part among n local rows."""
    return {ALL: (0, n), FIRST: (0, n // 2), SECOND: (n // 2, n)}[part]


def dense_call(band, m: int):
    """A band on m x m rows as one kernel call: (query rows, key rows, (left, right)) with the rows a
    prefix of the part and the window bottom-right aligned (-1 unbounded). Rows the band leaves without
    any key are cut so that the alignment (key rows - query rows) lands on the band's edge."""
    lo, hi = band
    if (lo is None or lo <= 0) and (hi is None or hi >= 0):
        return m, m, (-1 if lo is None else -lo, -1 if hi is None else hi)
    if lo is not None and lo > 0:  # keys right of the diagonal only: the last lo queries see nothing
        return m - lo, m, (0, -1 if hi is None else hi - lo)
    return m, m + hi, (-1 if lo is None else hi - lo, 0)  # hi < 0: the last -hi keys are never seen


def visible_pairs(q_len: int, k_len: int, window) -> int:
    """(query, key) pairs a bottom-right aligned window keeps: the work of an exact kernel."""
    left, right = window
    i = np.arange(q_len)
    pos = i + (k_len - q_len)
    first = np.maximum(0, pos - left) if left >= 0 else np.zeros_like(i)
    last = np.minimum(k_len - 1, pos + right) if right >= 0 else np.full_like(i, k_len - 1)
    return int(np.maximum(last - first + 1, 0).sum())


def rank_work(steps, axis_size: int, local_len: int):
    """Visible (query, key) pairs per rank: (executed, useful), each a (P,) int array. Executed counts
    every call a rank makes; useful only those whose guard holds (a dropped result is wasted work)."""
    executed = np.zeros(axis_size, np.int64)
    useful = np.zeros(axis_size, np.int64)
    for s, tasks in enumerate(steps):
        for task in tasks:
            q_part = task.q_part if isinstance(task.q_part, str) else task.q_part[0]
            start, stop = part_rows(q_part, local_len)
            pairs = visible_pairs(*dense_call(task.band, stop - start))
            for r in range(axis_size):
                executed[r] += pairs
                if task.guard is None or task.guard == (r >= s):
                    useful[r] += pairs
    return executed, useful
