"""The dense GPU test grid: every value of every factor, and every pair of values, then random fill."""

from __future__ import annotations

import itertools
import random

FACTORS = {
    "dtype": ["bfloat16", "float16"],
    "head_dims": [(64, 64), (80, 80), (96, 96), (128, 128), (192, 192), (256, 256), (192, 128)],
    "causal": [False, True],
    "heads": [(4, 4), (4, 2), (28, 4), (4, 1)],  # (Hq, Hk): group 1, 2, 7, MQA
    "seqlens": [(1, 1), (1, 4097), (17, 255), (255, 17), (17, 1000), (1000, 1000), (1000, 4097),
                (4097, 1000), (255, 255), (17, 1)],
    "softcap": [None, 30.0],
    "window": [None, (64, 0), (128, 128)],
}


def _pairs(case):
    names = list(FACTORS)
    return {((a, repr(case[a])), (b, repr(case[b]))) for a, b in itertools.combinations(names, 2)}


def pairwise_cases(total: int = 320, seed: int = 0) -> list[dict]:
    """Greedy all-pairs covering array over FACTORS, topped up with random cases to `total`."""
    rng = random.Random(seed)
    names = list(FACTORS)
    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        for va in FACTORS[a]:
            for vb in FACTORS[b]:
                uncovered.add(((a, repr(va)), (b, repr(vb))))
    cases = []
    while uncovered:
        candidates = [{n: rng.choice(FACTORS[n]) for n in names} for _ in range(60)]
        # Seed one candidate from an uncovered pair so progress is guaranteed.
        (a, va), (b, vb) = next(iter(sorted(uncovered)))
        seeded = {n: rng.choice(FACTORS[n]) for n in names}
        seeded[a] = next(v for v in FACTORS[a] if repr(v) == va)
        seeded[b] = next(v for v in FACTORS[b] if repr(v) == vb)
        candidates.append(seeded)
        best = max(candidates, key=lambda c: len(_pairs(c) & uncovered))
        uncovered -= _pairs(best)
        cases.append(best)
    seen = {case_id(c) for c in cases}
    while len(cases) < total:
        case = {n: rng.choice(FACTORS[n]) for n in names}
        if case_id(case) not in seen:
            seen.add(case_id(case))
            cases.append(case)
    return cases


def case_id(case: dict) -> str:
    d, dv = case["head_dims"]
    (hq, hk), (sq, sk) = case["heads"], case["seqlens"]
    window = "full" if case["window"] is None else "w{}_{}".format(*case["window"])
    return (f"{'bf16' if case['dtype'] == 'bfloat16' else 'fp16'}-d{d}"
            + (f"x{dv}" if dv != d else "")
            + f"-h{hq}_{hk}-s{sq}_{sk}-{'causal' if case['causal'] else 'full'}-{window}"
            + ("-cap" if case["softcap"] else ""))
