"""The kernels give the same results inside XLA command buffers (CUDA graphs) as outside."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gpu_subprocess_cases import CASES, run

pytestmark = pytest.mark.gpu

COMMAND_BUFFER_FLAGS = "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1"


def test_same_results_under_command_buffers(tmp_path):
    here = os.path.dirname(__file__)
    env = dict(os.environ, XLA_FLAGS=COMMAND_BUFFER_FLAGS, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    out = tmp_path / "cmdbuf.npz"
    subprocess.run([sys.executable, os.path.join(here, "gpu_subprocess_cases.py"), str(out)], env=env,
                   cwd=here, check=True)
    with_graphs = np.load(out)
    without = run(CASES)
    assert set(with_graphs.files) == set(without)
    for name, want in without.items():
        got = with_graphs[name]
        # deterministic=True: bitwise equal, whatever launches the kernels.
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name
