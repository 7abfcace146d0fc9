"""Running one paged-cache case: ours, the fp32 reference and the naive attention (forward only), checked
by the oracle rule (tests/oracle.py) and by the exact rules for rows that see no key (DESIGN.md "Semantics").

The op under test runs with implementation=IMPL, "cuda" unless JAX_FLASH_TEST_IMPL says otherwise: with
JAX_FLASH_TEST_IMPL=xla the same tests exercise this harness on any machine, the reference standing in for the
kernels.

Layouts (page tables, cache lengths, query packing) are built on the host with numpy, so the tests know
every row's role independently of the code under test: which rows are padding and which see no key is
computed here from the layout alone and checked against the reference as well as against ours.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash
import covering
import gpu_harness
from gpu_harness import poison_device_memory
from jax_flash import reference
from oracle import check_oracle

IMPL = os.environ.get("JAX_FLASH_TEST_IMPL", "cuda")
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


# ---------------------------------------------------------------------------------------------------------
# Layouts

@dataclasses.dataclass
class Layout:
    """The device-data side of one call: where each sequence's keys live and which query rows it owns.

    Dense queries: every sequence has `sq` query rows (cu_q is None). Packed queries: sequence b owns rows
    [cu_q[b], cu_q[b + 1]) of total_q rows (both clamped to [0, total_q], as the op clamps them).
    All arrays are exactly what the op receives, out-of-range values included.
    """

    page_size: int
    num_pages: int
    page_table: np.ndarray  # (B, max_pages) int32
    cache_seqlens: np.ndarray  # (B,) int32
    sq: int = 1
    cu_q: np.ndarray | None = None  # (B + 1,) int32
    total_q: int = 0
    max_seqlen_q: int | None = None  # static bound for packed queries

    @property
    def batch(self) -> int:
        return self.page_table.shape[0]

    @property
    def max_pages(self) -> int:
        return self.page_table.shape[1]

    @property
    def capacity(self) -> int:
        return self.max_pages * self.page_size

    @property
    def packed(self) -> bool:
        return self.cu_q is not None

    def seqlens_k(self) -> np.ndarray:
        """Keys each sequence really has: cache_seqlens clipped to [0, capacity]."""
        return np.clip(self.cache_seqlens.astype(np.int64), 0, self.capacity)

    def query_shape(self, heads, d) -> tuple:
        return (self.total_q, heads, d) if self.packed else (self.batch, self.sq, heads, d)

    def sequences_q(self):
        """Per sequence b: (first query row, query count); rows of a packed q or of q[b] for dense q."""
        if not self.packed:
            return [(0, self.sq)] * self.batch
        cu = np.clip(self.cu_q.astype(np.int64), 0, self.total_q)
        return [(int(cu[b]), int(max(cu[b + 1] - cu[b], 0))) for b in range(self.batch)]

    def padding_rows(self) -> np.ndarray:
        """(Tq,) bool: packed rows outside every sequence (none for dense q)."""
        if not self.packed:
            return np.zeros(0, bool)
        pad = np.ones(self.total_q, bool)
        for start, count in self.sequences_q():
            pad[start:start + count] = False
        return pad

    def blind_rows(self, causal, window) -> np.ndarray:
        """Rows that see no key: (B, Sq) for dense q, (Tq,) for packed (padding rows included).

        Query i of a sequence with sq queries and L keys sits at p = i + L - sq and sees the keys
        [max(0, p - left), min(L - 1, p + right)] (DESIGN.md), an empty range when the row is blind."""
        left, right = window_bounds(causal, window)
        lengths = self.seqlens_k()
        blind = np.ones((self.batch, self.sq) if not self.packed else (self.total_q,), bool)
        for b, (start, count) in enumerate(self.sequences_q()):
            i = np.arange(count)
            pos = i + lengths[b] - count
            lo = np.zeros(count, np.int64) if left is None else np.maximum(0, pos - left)
            hi = np.full(count, lengths[b] - 1) if right is None else np.minimum(lengths[b] - 1, pos + right)
            seen_nothing = lo > hi
            if self.packed:
                blind[start:start + count] = seen_nothing
            else:
                blind[b] = seen_nothing
        return blind


def window_bounds(causal, window):
    """(left, right) with None for an unbounded side; causal bounds the right side at 0."""
    left, right = (None, None) if window is None else window
    left = None if left in (None, -1) else left
    right = None if right in (None, -1) else right
    if causal:
        right = 0 if right is None else min(right, 0)
    return left, right


def pages_needed(length, page_size) -> int:
    return -(-int(length) // page_size)


def page_tables(rng, lengths, max_pages, page_size, kind) -> tuple[np.ndarray, int]:
    """(page_table (B, max_pages) int32, pool size P) for sequences of the given key lengths.

    "sequential": sequence b's pages follow sequence b - 1's, in order; unused entries are 0.
    "shuffled": distinct pages in random order; unused entries are random valid pages (never read).
    "shared": every other sequence starts with a random number of sequence 0's pages (a shared prefix),
    a few more entries repeat random pages (shared between or within sequences, read by several); unused
    entries hold out-of-range junk (-1, P, INT32_MIN, INT32_MAX, ...), which must never be dereferenced.
    """
    batch = len(lengths)
    need = [pages_needed(n, page_size) for n in lengths]
    spare = 3
    num_pages = sum(need) + spare
    order = np.arange(num_pages) if kind == "sequential" else rng.permutation(num_pages)
    table = np.zeros((batch, max_pages), np.int64)
    start = 0
    for b in range(batch):
        table[b, :need[b]] = order[start:start + need[b]]
        start += need[b]
    if kind == "shuffled":
        for b in range(batch):
            table[b, need[b]:] = rng.integers(0, num_pages, max_pages - need[b])
    elif kind == "shared":
        longest = int(np.argmax(need))
        for b in range(1, batch, 2):
            if b != longest and need[b] > 0:
                shared = int(rng.integers(1, min(need[b], need[longest]) + 1))
                table[b, :shared] = table[longest, :shared]
        for b in range(batch):
            if need[b] > 1:
                slots = rng.choice(need[b], max(1, need[b] // 8), replace=False)
                table[b, slots] = rng.integers(0, num_pages, len(slots))
        junk = np.array([-1, -7, num_pages, num_pages + 1000, INT32_MIN, INT32_MAX])
        for b in range(batch):
            table[b, need[b]:] = rng.choice(junk, max_pages - need[b])
    elif kind != "sequential":
        raise ValueError(f"unknown page table kind {kind!r}")
    return table.astype(np.int32), num_pages


def paginate(keys, values, page_size, kind, rng, noise):
    """The same sequences in another paged layout: keys[b] (L_b, Hk, D) and values[b] (L_b, Hk, Dv) numpy
    written into pools of page_size tokens per page, pages ordered by page_tables(kind); every other slot
    (spare pages, the tails of last pages) holds noise(shape) junk. Returns (page_table, num_pages,
    k_cache, v_cache)."""
    lengths = [len(k) for k in keys]
    max_pages = max(pages_needed(n, page_size) for n in lengths)
    table, num_pages = page_tables(rng, lengths, max_pages, page_size, kind)
    k_cache = noise((num_pages, page_size, *keys[0].shape[1:]))
    v_cache = noise((num_pages, page_size, *values[0].shape[1:]))
    for b, (k, v) in enumerate(zip(keys, values)):
        for j in range(len(k)):
            page, slot = table[b, j // page_size], j % page_size
            k_cache[page, slot], v_cache[page, slot] = k[j], v[j]
    return table, num_pages, k_cache, v_cache


def clamped_equivalent(layout, k_cache, v_cache):
    """The in-range call that out-of-range device data stands for (DESIGN.md, the op's docstring): a page
    of zeros appended to the pools takes every page index outside [0, P), cache_seqlens clipped to [0,
    capacity], cu_seqlens_q clipped to [0, Tq]. Returns (layout, k_cache, v_cache)."""
    p = layout.num_pages
    table = layout.page_table.astype(np.int64)
    table = np.where((table >= 0) & (table < p), table, p).astype(np.int32)
    zero = lambda c: np.concatenate([c, np.zeros((1, *c.shape[1:]), c.dtype)])  # noqa: E731
    cu = None if layout.cu_q is None else np.clip(layout.cu_q, 0, layout.total_q).astype(np.int32)
    return (dataclasses.replace(layout, num_pages=p + 1, page_table=table, cu_q=cu,
                                cache_seqlens=layout.seqlens_k().astype(np.int32)),
            zero(k_cache), zero(v_cache))


# ---------------------------------------------------------------------------------------------------------
# The grid

FACTORS = {
    "page_size": [8, 16, 64, 128, 256],
    "queries": ["decode", "multi", "chunked"],  # Sq = 1; Sq in 2..16; packed with cu_seqlens_q
    "causal": [True, False],
    "window": [None, (64, 0), (32, 32)],
    "softcap": [None, 30.0],
    "heads": [(2, 2), (8, 2), (14, 2), (8, 1)],  # (Hq, Hk): group 1, 4, 7, MQA
    "head_dims": [(64, 64), (128, 128), (256, 256), (192, 128), (80, 80)],
    "dtype": ["bfloat16", "float16"],
    "num_splits": [1, 3, None],
    "table": ["shuffled", "shared"],
}

BATCH = {"decode": 7, "multi": 5, "chunked": 7}


def pairwise_cases(factors=FACTORS, total: int = 48, seed: int = 0) -> list[dict]:
    """The grid: covering.pairwise_cases over `factors`."""
    return covering.pairwise_cases(factors, case_id, total, seed)


def case_id(case) -> str:
    d, dv = case["head_dims"]
    hq, hk = case["heads"]
    window = "full" if case["window"] is None else "w{}_{}".format(*case["window"])
    splits = "auto" if case["num_splits"] is None else case["num_splits"]
    return (f"{'bf16' if case['dtype'] == 'bfloat16' else 'fp16'}-d{d}" + (f"x{dv}" if dv != d else "")
            + f"-h{hq}_{hk}-p{case['page_size']}-{case['queries']}-{case['table']}-split{splits}"
            + f"-{'causal' if case['causal'] else 'full'}-{window}" + ("-cap" if case["softcap"] else "")
            + (f"-kv{case['capacity']}" if case.get("capacity") else ""))


def case_layout(case) -> Layout:
    """The case's layout, reproducible from its id alone.

    Key lengths run from 1 to the table's capacity (both included), with a page boundary and one past it;
    multi-token queries meet caches shorter than Sq; chunked prefill packs chunks of 0..129 queries (see
    below) with padding rows after cu_seqlens_q[-1] and sometimes before cu_seqlens_q[0]."""
    rng = np.random.default_rng(zlib.crc32(case_id(case).encode()))
    page, mode = case["page_size"], case["queries"]
    batch = BATCH[mode]
    # case["capacity"] (optional): keys the table holds, rounded up to whole pages.
    max_pages = max(2, pages_needed(case.get("capacity") or rng.integers(300, 1100), page))
    capacity = max_pages * page
    lengths = rng.integers(1, capacity + 1, batch)
    boundary = page * int(rng.integers(1, max_pages))
    lengths[:4] = [capacity, 1, boundary, boundary + 1]
    kw = {}
    if mode == "multi":
        kw["sq"] = int(rng.integers(2, 17))
    elif mode == "chunked":
        # Sequence 0: the full cache; 1: a chunk longer than its 1-key cache; 2 and 6: a page boundary and
        # one past it; 3: queries without a single key; 4, 5: empty (keys but no queries).
        chunks = rng.integers(1, 130, batch)
        lengths = np.maximum(lengths, chunks)
        lengths[[0, 1, 2, 3, 6]] = [capacity, 1, boundary, 0, boundary + 1]
        chunks[1] = rng.integers(2, 9)
        chunks[[2, 6]] = np.minimum(chunks[[2, 6]], [boundary, boundary + 1])
        chunks[[4, 5]] = 0
        lead = int(rng.choice([0, 0, rng.integers(1, 20)]))
        cu = lead + np.concatenate([[0], np.cumsum(chunks)])
        kw.update(cu_q=cu.astype(np.int32), total_q=int(cu[-1] + rng.integers(1, 40)),
                  max_seqlen_q=int(chunks.max()))
    order = rng.permutation(batch)  # the edge lengths at random batch positions
    lengths = lengths[order]
    if "cu_q" in kw:
        chunks = np.diff(kw["cu_q"])[order]
        kw["cu_q"] = (kw["cu_q"][0] + np.concatenate([[0], np.cumsum(chunks)])).astype(np.int32)
    table, num_pages = page_tables(rng, lengths, max_pages, page, case["table"])
    return Layout(page_size=page, num_pages=num_pages, page_table=table,
                  cache_seqlens=lengths.astype(np.int32), **kw)


# ---------------------------------------------------------------------------------------------------------
# Inputs and the three computations

def random_array(key, shape, dtype, scale=1.0):
    return np.asarray((scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype))


def make_inputs(case, layout, seed=0):
    """Random q, k_cache, v_cache as numpy; every page random (unused ones and the tails of partly filled
    pages too), so a kernel that reads a key it should not gets a wrong answer rather than a lucky zero."""
    d, dv = case["head_dims"]
    hq, hk = case["heads"]
    dtype = jnp.dtype(case["dtype"])
    keys = jax.random.split(jax.random.key(seed), 3)
    # With softcap, scale q and k so that many logits land far above the cap (|s| up to ~100 vs cap 30).
    scale = 4.0 if case["softcap"] else 1.0
    pool = (layout.num_pages, layout.page_size, hk)
    return (random_array(keys[0], layout.query_shape(hq, d), dtype, scale),
            random_array(keys[1], (*pool, d), dtype, scale),
            random_array(keys[2], (*pool, dv), dtype))


STATIC = ("max_seqlen_q", "causal", "window", "softcap", "num_splits")


def attention_fn(q, k_cache, v_cache, page_table, cache_seqlens, cu_q, *, max_seqlen_q, causal, window, softcap,
                 num_splits):
    """Ours: paged_attention with implementation=IMPL, (out, lse)."""
    return jax_flash.paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q=cu_q,
                                     max_seqlen_q=max_seqlen_q, causal=causal, window=window, softcap=softcap,
                                     num_splits=num_splits, return_lse=True, implementation=IMPL)


attention = jax.jit(attention_fn, static_argnames=STATIC)


def run_ours(case, layout, inputs, *, num_splits="case", step=attention):
    """Ours on the host: (out, lse) as numpy. num_splits: the case's unless given."""
    splits = case["num_splits"] if num_splits == "case" else num_splits
    return jax.device_get(step(*inputs, layout.page_table, layout.cache_seqlens, layout.cu_q,
                               max_seqlen_q=layout.max_seqlen_q, causal=case["causal"], window=case["window"],
                               softcap=case["softcap"], num_splits=splits))


@functools.partial(jax.jit, static_argnames=("causal", "window", "softcap"))
def _reference_and_naive(q, k_cache, v_cache, page_table, cache_seqlens, cu_q, *, causal, window, softcap):
    kw = dict(cu_seqlens_q=cu_q, causal=causal, window=window, softcap=softcap, return_lse=True)
    f32 = [x.astype(jnp.float32) for x in (q, k_cache, v_cache)]
    ref = reference.paged_attention(*f32, page_table, cache_seqlens, **kw)
    naive = reference.naive_paged_attention(q, k_cache, v_cache, page_table, cache_seqlens, **kw)
    return ref, naive


def reference_and_naive(case, layout, inputs):
    """(ref, naive), each (out, lse) as numpy."""
    return jax.device_get(_reference_and_naive(*inputs, layout.page_table, layout.cache_seqlens, layout.cu_q,
                                               causal=case["causal"], window=case["window"],
                                               softcap=case["softcap"]))


# ---------------------------------------------------------------------------------------------------------
# Checks

def check_case(ours, ref, naive, layout, case):
    """The oracle rule on out and lse (no NaN, -inf exactly where the reference has it), then the exact
    rules: the rows the layout says see no key (padding rows included) have out 0 and lse -inf."""
    blind = layout.blind_rows(case["causal"], case["window"])
    ref_blind = np.isneginf(np.asarray(ref[1]))  # (B, Hq, Sq) or (Hq, Tq)
    expected = np.broadcast_to(blind[:, None, :] if not layout.packed else blind[None, :], ref_blind.shape)
    assert np.array_equal(ref_blind, expected), \
        "harness or reference bug: the reference's -inf rows differ from the layout's blind rows"
    for i, name in enumerate(("out", "lse")):
        check_oracle(name, ours[i], ref[i], naive[i])
    out, lse = (np.asarray(x) for x in ours)
    rows = np.moveaxis(expected, -2, -1)  # (B, Sq, Hq) or (Tq, Hq), like out without Dv
    assert_zero("out on rows that see no key", out[rows])
    assert np.all(np.isneginf(lse[expected])), "lse must be -inf on rows that see no key"
    if layout.packed:
        pad = layout.padding_rows()
        assert_zero("out on padding rows", out[pad])
        assert np.all(np.isneginf(lse[:, pad])), "lse on padding rows must be -inf"


def assert_zero(what, x):
    bad = np.asarray(x, np.float32) != 0  # NaN counts as not 0
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.size} elements are not exactly 0"


def assert_bitwise(a, b, what):
    gpu_harness.assert_bitwise(("out", "lse"), a, b, what)


def run_case(case, seed=0):
    layout = case_layout(case)
    inputs = make_inputs(case, layout, seed)
    poison_device_memory()
    ours = run_ours(case, layout, inputs)
    ref, naive = reference_and_naive(case, layout, inputs)
    check_case(ours, ref, naive, layout, case)
    return ours, ref
