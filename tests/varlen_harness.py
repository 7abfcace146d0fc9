"""Running one packed (varlen) case: ours, the fp32 reference and the naive attention, forward and gradients,
checked by the oracle rule (tests/oracle.py) and by the exact rules for padding (DESIGN.md "Semantics").

The op under test runs with implementation=IMPL, "cuda" unless JAX_FLASH_TEST_IMPL says otherwise: with
JAX_FLASH_TEST_IMPL=xla the same tests exercise this harness on any machine, the reference standing in for the
kernels.

A packing is built on the host (numpy), so the tests know every row's role independently of the code under
test. The reference runs on chunks of whole sequences: its (Hq, Tq, Tk) scores would not fit in memory for a
long packing, and sequences do not interact, so the chunks' results side by side are the whole packing's.
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
from gpu_harness import poison_device_memory
from jax_flash import reference
from oracle import check_oracle

IMPL = os.environ.get("JAX_FLASH_TEST_IMPL", "cuda")
NAMES = ("out", "lse", "dq", "dk", "dv")

# Elements of one (heads, rows_q, rows_k) float32 score tensor in one reference program (256 MiB): a dozen
# test processes share one GPU. A single sequence larger than this still runs whole.
REFERENCE_BUDGET = 1 << 26


# ---------------------------------------------------------------------------------------------------------
# Packings

@dataclasses.dataclass
class Packing:
    """Sequence i owns rows [cu[i], cu[i + 1]) and uses the first used[i] of them; every other row is
    padding. pass_seqused=False: the op gets seqused=None, which is only right when used == the spans."""

    cu_q: np.ndarray  # (N + 1,) int32
    cu_k: np.ndarray
    used_q: np.ndarray  # (N,) int32
    used_k: np.ndarray
    total_q: int
    total_k: int
    pass_seqused: bool

    @property
    def n(self) -> int:
        return len(self.used_q)

    def max_seqlen(self) -> tuple[int, int]:
        """The static bounds passed to the op: the longest span (>= the longest used length)."""
        return int(np.diff(self.cu_q).max()), int(np.diff(self.cu_k).max())

    def seqused(self):
        if not self.pass_seqused:
            return None, None
        return self.used_q, self.used_k

    def rows(self, i) -> tuple[slice, slice]:
        """The used query and key rows of sequence i."""
        q0, k0 = int(self.cu_q[i]), int(self.cu_k[i])
        return slice(q0, q0 + int(self.used_q[i])), slice(k0, k0 + int(self.used_k[i]))

    def used_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(Tq,), (Tk,) bool: rows inside some sequence's used rows."""
        q, k = np.zeros(self.total_q, bool), np.zeros(self.total_k, bool)
        for i in range(self.n):
            rows_q, rows_k = self.rows(i)
            q[rows_q], k[rows_k] = True, True
        return q, k

    def keys_without_queries(self) -> np.ndarray:
        """(Tk,) bool: used key rows of sequences that have no query, so no query ever sees them."""
        k = np.zeros(self.total_k, bool)
        for i in np.flatnonzero(self.used_q == 0):
            k[self.rows(i)[1]] = True
        return k


def pack(lengths_q, lengths_k, *, gaps_q=None, gaps_k=None, lead=(0, 0), tail=(0, 0)) -> Packing:
    """Sequences of the given used lengths in order. gaps: spare rows after each sequence's used rows
    (inside its span, so seqused is passed); lead/tail: (q, k) rows before cu_seqlens[0] and after
    cu_seqlens[-1]."""
    used_q, used_k = np.asarray(lengths_q, np.int32), np.asarray(lengths_k, np.int32)
    pass_seqused = gaps_q is not None or gaps_k is not None
    spans_q = used_q + (0 if gaps_q is None else np.asarray(gaps_q, np.int32))
    spans_k = used_k + (0 if gaps_k is None else np.asarray(gaps_k, np.int32))
    cu_q = (int(lead[0]) + np.concatenate([[0], np.cumsum(spans_q)])).astype(np.int32)
    cu_k = (int(lead[1]) + np.concatenate([[0], np.cumsum(spans_k)])).astype(np.int32)
    return Packing(cu_q, cu_k, used_q, used_k, int(cu_q[-1]) + int(tail[0]), int(cu_k[-1]) + int(tail[1]),
                   pass_seqused)


def pad(lengths_q, lengths_k, padding: str, rng) -> Packing:
    """"none": sequences back to back; "tail": plus rows after cu_seqlens[-1]; "gaps": plus rows before
    cu_seqlens[0] and spare rows inside each span (seqused smaller than the span)."""
    n = len(lengths_q)
    if padding == "none":
        return pack(lengths_q, lengths_k)
    if padding == "tail":
        return pack(lengths_q, lengths_k, tail=rng.integers(1, 100, 2))
    if padding == "gaps":
        return pack(lengths_q, lengths_k, gaps_q=rng.integers(0, 70, n), gaps_k=rng.integers(0, 70, n),
                    lead=rng.integers(1, 40, 2), tail=rng.integers(1, 100, 2))
    raise ValueError(f"unknown padding {padding!r}")


EDGE_LENGTHS = (0, 1, 127, 128, 129)


def _same(lengths):
    """Self-attention documents: as many keys as queries."""
    return [int(x) for x in lengths], [int(x) for x in lengths]


def _with_zeros(lengths, rng, count):
    lengths = np.array(lengths)
    lengths[rng.choice(len(lengths), count, replace=False)] = 0
    return lengths


def _sparse(rng, slots, filled, longest):
    """`slots` sequences of which only `filled` are non-empty: N larger than the documents."""
    lengths = np.zeros(slots, int)
    lengths[rng.choice(slots, filled, replace=False)] = rng.integers(1, longest, filled)
    return _same(lengths)


# Document lengths (queries, keys) per packing name, drawn from the case's own generator.
DOCUMENTS = {
    "n1-self": lambda rng: _same(rng.integers(600, 1300, 1)),
    "n1-cross": lambda rng: ([int(rng.integers(1, 300))], [int(rng.integers(700, 1300))]),
    "n3-edge": lambda rng: (list(rng.choice(EDGE_LENGTHS, 3)), list(rng.choice(EDGE_LENGTHS, 3))),
    "n3-mid": lambda rng: _same(rng.integers(300, 1800, 3)),
    "n17-edge": lambda rng: (list(rng.choice(EDGE_LENGTHS, 17)), list(rng.choice(EDGE_LENGTHS, 17))),
    "n17-self": lambda rng: _same(_with_zeros(rng.integers(1, 700, 17), rng, 2)),
    "n64-mixed": lambda rng: (list(_with_zeros(rng.integers(1, 250, 64), rng, 6)),
                              list(_with_zeros(rng.integers(1, 250, 64), rng, 6))),
    "n64-sparse": lambda rng: _sparse(rng, 64, 5, 1200),
    # Long documents: only in the `large` tests.
    "long-mixed": lambda rng: ([8192, 129, 0, 3001], [8192, 129, 17, 3001]),
    "long-cross": lambda rng: ([1, 8191, 64], [8192, 8190, 0]),
    "long-single": lambda rng: ([8192], [8192]),
}


def case_packing(case) -> Packing:
    """The case's packing, reproducible from its id alone."""
    rng = np.random.default_rng(zlib.crc32(case_id(case).encode()))
    lengths_q, lengths_k = DOCUMENTS[case["packing"]](rng)
    return pad(lengths_q, lengths_k, case["padding"], rng)


# ---------------------------------------------------------------------------------------------------------
# The grid

FACTORS = {
    "dtype": ["bfloat16", "float16"],
    "head_dims": [(64, 64), (128, 128), (256, 256), (192, 128)],
    "heads": [(2, 2), (4, 1), (28, 4)],  # (Hq, Hk): MHA, MQA, GQA 7-way
    "causal": [False, True],
    "softcap": [None, 30.0],
    "window": [None, (64, 0), (128, 128)],
    "packing": ["n1-self", "n1-cross", "n3-edge", "n3-mid", "n17-edge", "n17-self", "n64-mixed",
                "n64-sparse"],
    "padding": ["none", "tail", "gaps"],
}


def pairwise_cases(factors=FACTORS, total: int = 80, seed: int = 0) -> list[dict]:
    """The grid: covering.pairwise_cases over `factors`."""
    return covering.pairwise_cases(factors, case_id, total, seed)


def case_id(case) -> str:
    d, dv = case["head_dims"]
    hq, hk = case["heads"]
    window = "full" if case["window"] is None else "w{}_{}".format(*case["window"])
    return (f"{'bf16' if case['dtype'] == 'bfloat16' else 'fp16'}-d{d}" + (f"x{dv}" if dv != d else "")
            + f"-h{hq}_{hk}-{case['packing']}-{case['padding']}-{'causal' if case['causal'] else 'full'}"
            + f"-{window}" + ("-cap" if case["softcap"] else ""))


# ---------------------------------------------------------------------------------------------------------
# Inputs and the three computations

def make_inputs(case, total_q, total_k, seed=0):
    """Random q (Tq, Hq, D), k, v (Tk, Hk, D/Dv), dout (Tq, Hq, Dv) as numpy; padding rows random too, so
    a kernel that reads them gets a wrong answer rather than a lucky zero."""
    d, dv = case["head_dims"]
    hq, hk = case["heads"]
    dtype = jnp.dtype(case["dtype"])
    keys = jax.random.split(jax.random.key(seed), 4)
    # With softcap, scale q and k so that many logits land far above the cap (|s| up to ~100 vs cap 30).
    scale = 4.0 if case["softcap"] else 1.0
    shapes = [(total_q, hq, d), (total_k, hk, d), (total_k, hk, dv), (total_q, hq, dv)]
    scales = [scale, scale, 1.0, 1.0]
    return tuple(np.asarray((s * jax.random.normal(key, shape, jnp.float32)).astype(dtype))
                 for key, shape, s in zip(keys, shapes, scales))


def with_grads(attn, q, k, v, dout):
    """(out, lse, dq, dk, dv) of attn: (q, k, v) -> (out, lse), for cotangents (dout, 0)."""
    (out, lse), vjp = jax.vjp(attn, q, k, v)
    return (out, lse, *vjp((dout.astype(out.dtype), jnp.zeros_like(lse))))


STATIC = ("max_seqlen_q", "max_seqlen_k", "causal", "window", "softcap", "deterministic", "variant")


def forward_and_grads_fn(q, k, v, dout, cu_q, cu_k, used_q, used_k, *, max_seqlen_q, max_seqlen_k, causal,
                         window, softcap, deterministic=False, variant=None):
    """Ours: flash_attention_varlen with implementation=IMPL, forward and gradients; variant: the kernel
    variant pin (None: JAX_FLASH_KERNEL_VARIANT, else auto)."""
    def attn(q, k, v):
        return jax_flash.flash_attention_varlen(
            q, k, v, cu_q, cu_k, max_seqlen_q, max_seqlen_k, seqused_q=used_q, seqused_k=used_k,
            causal=causal, window=window, softcap=softcap, return_lse=True, deterministic=deterministic,
            implementation=IMPL, _variant=variant)
    return with_grads(attn, q, k, v, dout)


forward_and_grads = jax.jit(forward_and_grads_fn, static_argnames=STATIC)


def run_ours(case, packing, inputs, *, deterministic=False, max_seqlen=None, step=forward_and_grads,
             variant=None):
    """Ours on the host: (out, lse, dq, dk, dv) as numpy. max_seqlen: (q, k) bounds other than the
    packing's own."""
    used_q, used_k = packing.seqused()
    max_q, max_k = max_seqlen or packing.max_seqlen()
    return jax.device_get(step(*inputs, packing.cu_q, packing.cu_k, used_q, used_k, max_seqlen_q=max_q,
                               max_seqlen_k=max_k, causal=case["causal"], window=case["window"],
                               softcap=case["softcap"], deterministic=deterministic, variant=variant))


@functools.partial(jax.jit, static_argnames=("causal", "window", "softcap"))
def _reference_and_naive_chunk(q, k, v, dout, cu_q, cu_k, used_q, used_k, *, causal, window, softcap):
    kw = dict(seqused_q=used_q, seqused_k=used_k, causal=causal, window=window, softcap=softcap,
              return_lse=True)
    # The reference differentiates float32 inputs, so its gradients are not rounded to the input dtype.
    f32 = [x.astype(jnp.float32) for x in (q, k, v, dout)]
    ref = with_grads(lambda q, k, v: reference.attention_varlen(q, k, v, cu_q, cu_k, **kw), *f32)
    naive = with_grads(lambda q, k, v: reference.naive_attention_varlen(q, k, v, cu_q, cu_k, **kw),
                        q, k, v, dout)
    return ref, naive


def reference_chunks(packing, heads_q, budget=REFERENCE_BUDGET):
    """Splits all rows into runs of whole sequences: yields (q rows, k rows, first, end sequence). The
    first run starts at row 0 and the last ends at T, so rows outside every sequence are covered too."""
    n = packing.n

    def bounds(a, b):
        q = slice(0 if a == 0 else int(packing.cu_q[a]), packing.total_q if b == n else int(packing.cu_q[b]))
        k = slice(0 if a == 0 else int(packing.cu_k[a]), packing.total_k if b == n else int(packing.cu_k[b]))
        return q, k

    def cost(a, b):
        q, k = bounds(a, b)
        return heads_q * (q.stop - q.start) * (k.stop - k.start)

    a = 0
    while a < n:
        b = a + 1
        while b < n and cost(a, b + 1) <= budget:
            b += 1
        yield (*bounds(a, b), a, b)
        a = b


def reference_and_naive(case, packing, inputs):
    """(ref, naive), each (out, lse, dq, dk, dv) as numpy over the whole packing."""
    q, k, v, dout = inputs
    parts = []
    for rows_q, rows_k, a, b in reference_chunks(packing, q.shape[1]):
        cu_q = packing.cu_q[a:b + 1] - rows_q.start
        cu_k = packing.cu_k[a:b + 1] - rows_k.start
        parts.append(jax.device_get(_reference_and_naive_chunk(
            q[rows_q], k[rows_k], v[rows_k], dout[rows_q], cu_q, cu_k, packing.used_q[a:b],
            packing.used_k[a:b], causal=case["causal"], window=case["window"], softcap=case["softcap"])))
    return tuple(_concatenate([part[which] for part in parts]) for which in (0, 1))


def _concatenate(results):
    """Joins per-chunk (out, lse, dq, dk, dv) along the row axis (lse is (Hq, rows))."""
    return tuple(np.concatenate([r[i] for r in results], axis=1 if i == 1 else 0) for i in range(5))


# ---------------------------------------------------------------------------------------------------------
# Checks

def check_case(ours, ref, naive, packing, *, softcap):
    """The oracle rule on every output, then the exact rules for padding and rows that see no key."""
    grad_factor = 3.0 if softcap else 2.0
    for i, name in enumerate(NAMES):
        check_oracle(name, ours[i], ref[i], naive[i], factor=2.0 if i < 2 else grad_factor)
    check_exact_zeros(ours, ref, packing)


def check_exact_zeros(ours, ref, packing):
    out, lse, dq, dk, dv = (np.asarray(x) for x in ours)
    used_q, used_k = packing.used_rows()
    pad_q = ~used_q
    _assert_zero("out on padding query rows", out[pad_q])
    _assert_zero("dq on padding query rows", dq[pad_q])
    assert np.all(np.isneginf(lse[:, pad_q])), "lse on padding query rows must be -inf"
    unseen_k = ~used_k | packing.keys_without_queries()
    _assert_zero("dk on padding key rows and keys no query sees", dk[unseen_k])
    _assert_zero("dv on padding key rows and keys no query sees", dv[unseen_k])
    blind = np.isneginf(np.asarray(ref[1])).T  # (Tq, Hq): rows that see no key, padding included
    _assert_zero("out on rows that see no key", out[blind])
    _assert_zero("dq on rows that see no key", dq[blind])


def _assert_zero(what, x):
    bad = np.asarray(x, np.float32) != 0  # NaN counts as not 0
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.size} elements are not exactly 0"


def run_case(case, seed=0, variant=None, deterministic=False):
    packing = case_packing(case)
    inputs = make_inputs(case, packing.total_q, packing.total_k, seed)
    poison_device_memory()
    ours = run_ours(case, packing, inputs, deterministic=deterministic, variant=variant)
    ref, naive = reference_and_naive(case, packing, inputs)
    check_case(ours, ref, naive, packing, softcap=case["softcap"])
    return ours, ref
