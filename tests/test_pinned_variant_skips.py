"""tests/conftest.py under a pinned kernel variant: a GPU case the pinned family cannot serve is skipped with
the reason; the same error without a pin, in a CPU case, or any other error still fails. A GPU case on head dims
a subset build left out is skipped with or without a pin, a CPU case with that error still fails. The grids
(gpu_harness.variant_or_skip) under a pin run only their deterministic variant, with the pin's backward."""

import os

import pytest

import gpu_harness
from conftest import NOT_IN_THIS_BUILD, PINNED_VARIANT_CANNOT_RUN

pytest_plugins = ["pytester"]

CASES = f'''
import pytest

@pytest.mark.gpu
def test_gpu_unservable():
    raise ValueError("kernel variant 'sm90_ws' {PINNED_VARIANT_CANNOT_RUN}: no backward")

def test_cpu_unservable():
    raise ValueError("kernel variant 'sm90_ws' {PINNED_VARIANT_CANNOT_RUN}: no backward")

@pytest.mark.gpu
def test_gpu_other_error():
    raise ValueError("something else")
'''

# One GPU and one CPU case raising the error of head dims a subset build left out.
NOT_BUILT = "import pytest\n" + "".join(
    f"{marker}\ndef test_{name}_not_built():\n"
    f"    raise ValueError(\"implementation='cuda' cannot run: {NOT_IN_THIS_BUILD} bfloat16, head dims D=192\")\n"
    for name, marker in (("gpu", "@pytest.mark.gpu"), ("cpu", "")))

# The hook under test, taken from the suite's conftest (loaded under another name), without its GPU skip.
CONFTEST = '''
import importlib.util
spec = importlib.util.spec_from_file_location("jax_flash_tests_conftest", {path!r})
suite_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite_conftest)
pytest_runtest_call = suite_conftest.pytest_runtest_call
'''


def _run_cases(pytester, monkeypatch, pin, cases):
    """The test file `cases` run under the suite's hook with JAX_FLASH_KERNEL_VARIANT=pin."""
    monkeypatch.setenv("JAX_FLASH_KERNEL_VARIANT", pin)
    pytester.makeconftest(CONFTEST.format(path=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            "conftest.py")))
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    pytester.makepyfile(cases)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")


@pytest.mark.parametrize("pin, skipped", [("sm90_ws", 1), ("auto", 0), ("", 0)])
def test_unservable_gpu_cases_skip_only_under_a_pin(pytester, monkeypatch, pin, skipped):
    result = _run_cases(pytester, monkeypatch, pin, CASES)
    result.assert_outcomes(skipped=skipped, failed=3 - skipped)
    if skipped:
        result.stdout.fnmatch_lines(["*pinned variant cannot serve this case*"])


@pytest.mark.parametrize("pin", ["sm80", ""])
def test_gpu_cases_on_head_dims_not_built_skip(pytester, monkeypatch, pin):
    result = _run_cases(pytester, monkeypatch, pin, NOT_BUILT)
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*not in this build*"])


def _fake_kernel_choice(calls):
    """A stand-in for _ffi.kernel_choice: every variant can run, and each (feature, pin) picks its own kernel."""
    def kernel_choice(feature, dtype, head_dim, head_dim_v, variant, seqlen_k):
        calls.append((feature, variant))
        return {"variant": variant, "feature": feature}
    return kernel_choice


@pytest.mark.parametrize("variant", ["auto", "sm80", "sm90", "sm90_ws"])
def test_grid_variants_by_name_skip_under_a_pin(monkeypatch, variant):
    calls = []
    monkeypatch.setattr(gpu_harness._ffi, "kernel_choice", _fake_kernel_choice(calls))
    monkeypatch.setenv("JAX_FLASH_KERNEL_VARIANT", "sm80")
    with pytest.raises(pytest.skip.Exception, match="runs by name in the unpinned suite"):
        gpu_harness.variant_or_skip(variant, "bfloat16", 128, 128)
    monkeypatch.setenv("JAX_FLASH_KERNEL_VARIANT", "")
    assert gpu_harness.variant_or_skip(variant, "bfloat16", 128, 128) == (variant, False)


@pytest.mark.parametrize("pin", ["sm80", "sm90_ws", "", "auto"])
def test_grid_deterministic_variant_runs_the_pins_backward(monkeypatch, pin):
    calls = []
    monkeypatch.setattr(gpu_harness._ffi, "kernel_choice", _fake_kernel_choice(calls))
    monkeypatch.setenv("JAX_FLASH_KERNEL_VARIANT", pin)
    want = pin or "auto"
    assert gpu_harness.variant_or_skip("deterministic", "bfloat16", 128, 128) == (want, True)
    assert ("bwd_deterministic", want) in calls
