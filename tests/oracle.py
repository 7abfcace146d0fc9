"""The one comparison rule of DESIGN.md, shared by every test.

For the same random inputs: `ref` is the reference in float32, `naive` the plain attention in the input
dtype. `ours` passes when, element-wise over the whole tensor,
    max |ours - ref| <= factor * max |naive - ref| + atol
and nothing is NaN.
"""

from __future__ import annotations

import numpy as np

ATOL = {"bfloat16": 2e-3, "float16": 1e-3, "float32": 1e-5}


def check_oracle(name, ours, ref, naive, *, factor=2.0, atol=None):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    naive = np.asarray(naive, dtype=np.float64)
    assert ours.shape == ref.shape == naive.shape, (name, ours.shape, ref.shape, naive.shape)
    assert not np.isnan(ours).any(), f"{name}: NaN in {int(np.isnan(ours).sum())} elements"
    # -inf (LSE of fully masked rows) must match exactly; compare the finite rest.
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(ours), inf) and np.array_equal(ours[inf], ref[inf]), \
        f"{name}: infinities differ from the reference"
    ours, ref, naive = ours[~inf], ref[~inf], naive[~inf]
    if ours.size == 0:
        return
    err = float(np.abs(ours - ref).max())
    bound, naive_err = oracle_bound(ref, naive, factor=factor, atol=atol)
    assert err <= bound, (f"{name}: max|ours-ref| = {err:.3g} > {factor} * max|naive-ref| "
                          f"({naive_err:.3g}) + atol")


def oracle_bound(ref, naive, *, factor=2.0, atol=None):
    """(factor * max|naive - ref| + atol, max|naive - ref|), atol scaled by the tensor's magnitude
    (gradients are not of unit scale)."""
    ref = np.asarray(ref, dtype=np.float64)
    naive = np.asarray(naive, dtype=np.float64)
    finite = np.isfinite(ref)
    ref, naive = ref[finite], naive[finite]
    if ref.size == 0:
        return 0.0, 0.0
    atol = ATOL["bfloat16"] if atol is None else atol
    scale = max(1.0, float(np.abs(ref).max()))
    naive_err = float(np.nan_to_num(np.abs(naive - ref), nan=0.0).max())
    return factor * naive_err + atol * scale, naive_err
