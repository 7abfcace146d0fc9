"""The kernels give the same results inside XLA command buffers (CUDA graphs) as outside."""

import pytest

from gpu_harness import assert_same_bits_under_command_buffers
from gpu_subprocess_cases import CASES, run

pytestmark = pytest.mark.gpu


def test_same_results_under_command_buffers(tmp_path):
    # deterministic=True: bitwise equal, whatever launches the kernels.
    assert_same_bits_under_command_buffers("gpu_subprocess_cases.py", tmp_path / "cmdbuf.npz", run(CASES))
