"""Pairwise covering arrays for the packed and paged GPU grids: every value of every factor, and every pair
of values of two factors, in few cases, then distinct random cases up to a total."""

from __future__ import annotations

import itertools
import random


def pairwise_cases(factors: dict, case_id, total: int, seed: int = 0) -> list[dict]:
    """Greedy all-pairs covering array over `factors` ({name: [values]}), topped up with random cases whose
    case_id(case) is new until there are `total`."""
    rng = random.Random(seed)
    names = list(factors)

    def pairs(case):
        return {(a, repr(case[a]), b, repr(case[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = {(a, repr(va), b, repr(vb)) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b]}
    cases = []
    while uncovered:
        candidates = [{n: rng.choice(factors[n]) for n in names} for _ in range(60)]
        # One candidate holds an uncovered pair, so every round makes progress.
        a, va, b, vb = min(uncovered)
        seeded = {n: rng.choice(factors[n]) for n in names}
        seeded[a] = next(v for v in factors[a] if repr(v) == va)
        seeded[b] = next(v for v in factors[b] if repr(v) == vb)
        best = max(candidates + [seeded], key=lambda c: len(pairs(c) & uncovered))
        uncovered -= pairs(best)
        cases.append(best)
    seen = {case_id(c) for c in cases}
    while len(cases) < total:
        case = {n: rng.choice(factors[n]) for n in names}
        if case_id(case) not in seen:
            seen.add(case_id(case))
            cases.append(case)
    return cases
