"""The kernels give the same results inside XLA command buffers (CUDA graphs) as outside."""

import numpy as np
import pytest

from gpu_harness import assert_same_bits_under_command_buffers, run_under_command_buffers
from gpu_subprocess_cases import CASES, built, run

pytestmark = pytest.mark.gpu


def test_same_results_under_command_buffers(tmp_path):
    cases = built(CASES)
    if not cases:
        pytest.skip("this build has none of the cases' head dims")
    # deterministic=True: bitwise equal, whatever launches the kernels.
    assert_same_bits_under_command_buffers("gpu_subprocess_cases.py", tmp_path / "cmdbuf.npz", run(cases))


def test_default_backward_under_command_buffers(tmp_path):
    """The default backward (deterministic=False: the dK/dV kernel sums dQ into a zeroed workspace accumulator
    in any order, then a kernel converts it) inside command buffers: the forward bitwise as outside, the
    gradients within the rounding of the summation order."""
    cases = built(CASES)
    if not cases:
        pytest.skip("this build has none of the cases' head dims")
    without = run(cases, deterministic=False)
    with_graphs = run_under_command_buffers("gpu_subprocess_cases.py", tmp_path / "default.npz",
                                            ["--default-backward"])
    assert set(with_graphs) == set(without)
    for name, want in without.items():
        got, want = with_graphs[name], np.asarray(want)
        if name.endswith(("_out", "_lse")):
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name
        else:
            # (The subprocess's .npz keeps bfloat16 as raw 2-byte records: view them as the dtype they are.)
            got, want = got.view(want.dtype).astype(np.float32), want.astype(np.float32)
            assert np.isfinite(got).all(), name
            np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * float(np.abs(want).max()), err_msg=name)
