"""Packed (varlen) attention on the GPU against the fp32 reference by the oracle rule (DESIGN.md), with the
exact rules for padding rows, under command buffers, bitwise across packings, and through segment_ids. The grid
runs under every kernel variant the machine can run (gpu_harness.GRID_VARIANTS).

JAX_FLASH_TEST_IMPL=xla runs the same code with the reference standing in for the kernels (see
varlen_harness.py); the `gpu` marker still decides whether a test runs.
"""

import jax
import numpy as np
import pytest

import jax_flash
from gpu_harness import (GRID_VARIANTS, assert_bitwise, assert_same_bits_under_command_buffers,
                         poison_device_memory, variant_or_skip)
from gpu_subprocess_varlen import run as run_trials
from varlen_harness import (DOCUMENTS, EDGE_LENGTHS, FACTORS, IMPL, Packing, case_id, case_packing, check_case,
                            make_inputs, pack, pairwise_cases, reference_and_naive, run_case, run_ours,
                            with_grads)

gpu = pytest.mark.gpu

CASES = pairwise_cases()


@gpu
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("variant", GRID_VARIANTS)
def test_grid(variant, case):
    pin, deterministic = variant_or_skip(variant, case["dtype"], *case["head_dims"])
    run_case(case, variant=pin, deterministic=deterministic)


LARGE_CASES = [
    dict(dtype="bfloat16", head_dims=(128, 128), heads=(4, 1), causal=True, softcap=None, window=None,
         packing="long-mixed", padding="gaps"),
    dict(dtype="float16", head_dims=(64, 64), heads=(2, 2), causal=False, softcap=30.0, window=(128, 128),
         packing="long-cross", padding="tail"),
    dict(dtype="bfloat16", head_dims=(256, 256), heads=(4, 2), causal=False, softcap=None, window=None,
         packing="long-single", padding="none"),
    dict(dtype="bfloat16", head_dims=(192, 128), heads=(2, 1), causal=True, softcap=None, window=(64, 0),
         packing="long-mixed", padding="tail"),
]


@gpu
@pytest.mark.large
@pytest.mark.parametrize("case", LARGE_CASES, ids=[case_id(c) for c in LARGE_CASES])
def test_long_documents(case):
    run_case(case)


def test_grid_covers_the_issue():
    """The grid holds what issue #3 asks for (checked on the host, so it runs everywhere)."""
    assert 60 <= len(CASES) <= 120
    for name, values in FACTORS.items():
        assert {repr(c[name]) for c in CASES} == {repr(v) for v in values}, name
    packings = [case_packing(c) for c in CASES]
    assert {p.n for p in packings} == {1, 3, 17, 64}
    for side in ("q", "k"):
        lengths = set(np.concatenate([getattr(p, f"used_{side}") for p in packings]).tolist())
        assert set(EDGE_LENGTHS) <= lengths, side
    docs = np.concatenate([np.stack([p.used_q, p.used_k], 1) for p in packings])
    assert ((docs[:, 0] == 0) & (docs[:, 1] > 0)).any() and ((docs[:, 0] > 0) & (docs[:, 1] == 0)).any()
    assert ((docs[:, 0] == 0) & (docs[:, 1] == 0)).any()
    assert any(p.n > np.count_nonzero(p.used_q) for p in packings)
    assert any(p.pass_seqused and (np.diff(p.cu_q) > p.used_q).any() for p in packings)
    assert any(p.total_q > p.cu_q[-1] for p in packings) and any(p.cu_q[0] > 0 for p in packings)
    odd = [p for p in packings if p.total_q % 64 and p.total_k % 64]
    assert len(odd) >= 0.8 * len(packings)
    assert max(max(p.max_seqlen()) for p in (case_packing(c) for c in LARGE_CASES)) >= 8192
    assert all(c["packing"] in DOCUMENTS for c in CASES + LARGE_CASES)


# ---------------------------------------------------------------------------------------------------------
# Command buffers: new cu_seqlens every call, one executable; a new max_seqlen, a new executable

@gpu
def test_command_buffers_with_new_cu_seqlens_every_call(tmp_path):
    # The child checks every call against the reference and the executable count (see its docstring);
    # deterministic=True: bitwise equal, whatever launches the kernels.
    assert_same_bits_under_command_buffers("gpu_subprocess_varlen.py", tmp_path / "varlen_cmdbuf.npz",
                                           run_trials(check=False))


# ---------------------------------------------------------------------------------------------------------
# The same documents in another order and padding: bitwise the same per document

DOCUMENT_CASE = dict(dtype="bfloat16", head_dims=(128, 128), heads=(8, 2), causal=True, softcap=None,
                     window=None)
# (query, key) lengths: empty sides, 1-row sides, tile edges, Sq != Sk both ways.
DOCUMENT_LENGTHS = [(300, 300), (1, 129), (129, 1), (1000, 777), (0, 50), (64, 0), (128, 128), (513, 513)]


def _documents(case, lengths, seed):
    """Per-document (q, k, v, dout) numpy arrays."""
    return [make_inputs(case, lq, lk, seed=seed + i) for i, (lq, lk) in enumerate(lengths)]


def _place(case, documents, slots, packing, seed):
    """Packed inputs whose sequence j holds documents[slots[j]] (None: an empty sequence); the other rows
    are random."""
    packed = [np.array(x) for x in make_inputs(case, packing.total_q, packing.total_k, seed=seed)]
    for j, doc in enumerate(slots):
        if doc is not None:
            rows_q, rows_k = packing.rows(j)
            for x, part, rows in zip(packed, documents[doc], (rows_q, rows_k, rows_k, rows_q)):
                x[rows] = part
    return tuple(packed)


def _per_document(results, slots, packing):
    """{document: (out, lse, dq, dk, dv) restricted to its rows}."""
    out, lse, dq, dk, dv = (np.asarray(x) for x in results)
    docs = {}
    for j, doc in enumerate(slots):
        if doc is not None:
            rows_q, rows_k = packing.rows(j)
            docs[doc] = (out[rows_q], lse[:, rows_q], dq[rows_q], dk[rows_k], dv[rows_k])
    return docs


def _assert_bitwise(a, b, what):
    assert_bitwise(("out", "lse", "dq", "dk", "dv"), a, b, what)


@gpu
def test_documents_are_bitwise_independent_of_order_and_padding():
    case = DOCUMENT_CASE
    documents = _documents(case, DOCUMENT_LENGTHS, seed=100)
    plain_slots = list(range(len(DOCUMENT_LENGTHS)))
    plain = pack(*zip(*DOCUMENT_LENGTHS))
    # Reversed, with empty sequences between documents, gaps inside spans, rows before and after.
    other_slots = [None, 7, 6, None, 5, 4, 3, None, None, 2, 1, 0, None]
    lengths = [DOCUMENT_LENGTHS[d] if d is not None else (0, 0) for d in other_slots]
    rng = np.random.default_rng(3)
    other = pack(*zip(*lengths), gaps_q=rng.integers(0, 90, len(lengths)),
                 gaps_k=rng.integers(0, 90, len(lengths)), lead=(5, 77), tail=(3, 130))
    # One static bound for both packings: only the documents' positions differ.
    bound = max(*plain.max_seqlen(), *other.max_seqlen())
    plain_inputs = _place(case, documents, plain_slots, plain, seed=1)
    other_inputs = _place(case, documents, other_slots, other, seed=2)
    results = []
    for packing, inputs in ((plain, plain_inputs), (plain, plain_inputs), (other, other_inputs)):
        poison_device_memory()
        results.append(run_ours(case, packing, inputs, deterministic=True, max_seqlen=(bound, bound)))
    _assert_bitwise(results[0], results[1], "a second run of the same packing")
    # The oracle on the plain packing, so equal-but-wrong results cannot pass.
    ref, naive = reference_and_naive(case, plain, plain_inputs)
    check_case(results[0], ref, naive, plain, softcap=case["softcap"])
    first = _per_document(results[0], plain_slots, plain)
    second = _per_document(results[2], other_slots, other)
    assert sorted(first) == sorted(second) == plain_slots
    for doc in plain_slots:
        _assert_bitwise(first[doc], second[doc], f"document {doc} {DOCUMENT_LENGTHS[doc]}")


# ---------------------------------------------------------------------------------------------------------
# flash_attention(..., segment_ids=...) on the kernels

SEGMENT_CASES = [
    dict(dtype="bfloat16", head_dims=(128, 128), heads=(8, 2), causal=True, softcap=None, window=None),
    dict(dtype="float16", head_dims=(64, 64), heads=(4, 1), causal=False, softcap=30.0, window=(64, 0)),
]


def _segment_ids(rng, batch, seq):
    """(B, S) ids: row 0 random documents and padding runs (it starts with padding), row 1 one document,
    the last row all padding. Neighbouring documents may touch (different ids, no padding between)."""
    ids = np.zeros((batch, seq), np.int32)
    next_id, pos = 1, int(rng.integers(1, 30))
    while pos < seq:
        length = int(rng.integers(1, 400))
        ids[0, pos:pos + length] = next_id
        next_id += 1
        pos += length + int(rng.choice([0, 0, rng.integers(1, 40)]))
    ids[1] = next_id
    return ids


def _segment_packing(ids) -> Packing:
    """The packed view of the flattened rows, found on the host: one sequence per run of equal nonzero ids,
    spanning to the next run's start, its used rows the run."""
    flat = ids.reshape(-1)
    starts, lengths = [], []
    for b, row in enumerate(ids):
        for i in range(len(row)):
            if row[i] != 0 and (i == 0 or row[i - 1] != row[i]):
                starts.append(b * len(row) + i)
                lengths.append(0)
            if row[i] != 0:
                lengths[-1] += 1
    cu = np.array(starts + [flat.size], np.int32)
    used = np.array(lengths, np.int32)
    return Packing(cu, cu, used, used, flat.size, flat.size, pass_seqused=True)


@gpu
@pytest.mark.parametrize("case", SEGMENT_CASES, ids=[
    f"{c['dtype']}-d{c['head_dims'][0]}-{'causal' if c['causal'] else 'full'}" for c in SEGMENT_CASES])
def test_segment_ids(case):
    rng = np.random.default_rng(0)
    batch, seq = 3, 1000
    ids = _segment_ids(rng, batch, seq)
    packing = _segment_packing(ids)
    max_segments = int(max(len(set(row[row != 0].tolist())) for row in ids)) + 2  # some slots stay empty
    flat = make_inputs(case, batch * seq, batch * seq, seed=7)
    poison_device_memory()
    ours = jax.device_get(_segment_step(case, max_segments)(
        *(x.reshape(batch, seq, *x.shape[1:]) for x in flat), ids))
    out, lse, dq, dk, dv = (np.asarray(x) for x in ours)
    hq = lse.shape[1]
    ours = (out.reshape(flat[3].shape), lse.transpose(1, 0, 2).reshape(hq, batch * seq), dq.reshape(flat[0].shape),
            dk.reshape(flat[1].shape), dv.reshape(flat[2].shape))
    ref, naive = reference_and_naive(case, packing, flat)
    check_case(ours, ref, naive, packing, softcap=case["softcap"])


def _segment_step(case, max_segments):
    def step(q, k, v, dout, ids):
        def attn(q, k, v):
            return jax_flash.flash_attention(
                q, k, v, causal=case["causal"], window=case["window"], softcap=case["softcap"],
                segment_ids=ids, max_segments=max_segments, return_lse=True, implementation=IMPL)
        return with_grads(attn, q, k, v, dout)
    return jax.jit(step)


# ---------------------------------------------------------------------------------------------------------
# Device data out of range: offsets and used lengths are clamped on the device; max_seqlen is never trusted

@gpu
def test_out_of_range_offsets_are_clamped_and_max_seqlen_is_only_a_bound():
    """cu_seqlens outside [0, T], seqused negative or past the span, and a max_seqlen far below the real
    lengths give exactly the clamped packing's answer (DESIGN.md); `scripts/gpu_cycle.sh memcheck` runs this
    test under compute-sanitizer, which shows no access leaves the tensors."""
    case = dict(dtype="bfloat16", head_dims=(64, 64), heads=(6, 2), causal=True, softcap=None, window=None)
    raw = Packing(cu_q=np.array([-50, 100, 250, 400], np.int32), cu_k=np.array([0, 120, 120, 10**9], np.int32),
                  used_q=np.array([-3, 1000, 40], np.int32), used_k=np.array([100, 7, 2**31 - 1], np.int32),
                  total_q=300, total_k=300, pass_seqused=True)
    clamped = Packing(cu_q=np.array([0, 100, 250, 300], np.int32), cu_k=np.array([0, 120, 120, 300], np.int32),
                      used_q=np.array([0, 150, 40], np.int32), used_k=np.array([100, 0, 180], np.int32),
                      total_q=300, total_k=300, pass_seqused=True)
    inputs = make_inputs(case, 300, 300, seed=3)
    poison_device_memory()
    ours = run_ours(case, raw, inputs, max_seqlen=(16, 16))
    ref, naive = reference_and_naive(case, clamped, inputs)
    check_case(ours, ref, naive, clamped, softcap=None)
