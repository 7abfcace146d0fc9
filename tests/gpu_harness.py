"""Running one dense case on the GPU: ours, the fp32 reference and the naive attention, forward and
gradients, in one jitted function per case, checked by the oracle rule. Also what every GPU test file shares:
poisoned memory, bitwise comparisons, a child process under XLA command buffers, and the kernel variants the
grids run under."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference
from jax_flash.ops import _config
from oracle import check_oracle


def poison_device_memory(nbytes: int = 1 << 30):
    """Fill freed device memory with NaN so buffers a kernel forgets to write show up as NaN."""
    junk = jnp.full((nbytes // 4,), jnp.nan, jnp.float32)
    junk.block_until_ready()
    del junk


def assert_bitwise(names, a, b, what):
    """The arrays of `a` and `b` (named `names`, in order) are bitwise equal."""
    for name, x, y in zip(names, a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"{what}: {name} shapes {x.shape} vs {y.shape}"
        differ = x.view(f"u{x.itemsize}") != y.view(f"u{y.itemsize}")
        count = int(differ.sum())
        gap = float(np.abs(x[differ].astype(np.float64) - y[differ].astype(np.float64)).max()) if count else 0.0
        assert count == 0, f"{what}: {name} differs in {count} of {x.size} elements (max |diff| {gap:.3g})"


# The kernel variants a grid runs under: the default kernels ("auto": on a Hopper the warp-specialized forward
# with the atomic backward), each pinned forward + atomic backward family, and the deterministic backward (after
# the "auto" forward; under a pin of the whole suite, the pin's). On an H100: the sm90_ws, sm80 and sm90
# forwards, the sm80, sm90 and sm90_ws atomic dK/dV, and the deterministic backward (the sm90_ws kernel's
# ordered dQ sums; the dq kernel where head_dim != head_dim_v up to 128).
GRID_VARIANTS = ("auto", "sm80", "sm90", "sm90_ws", "deterministic")


def _environment_pin():
    """The variant JAX_FLASH_KERNEL_VARIANT pins for the whole suite (scripts/gpu_cycle.sh pinned), or "auto"."""
    return os.environ.get(_config.VARIANT_ENV) or "auto"


def _variant_kernels(variant, dtype, head_dim, head_dim_v, seqlen_k=None):
    """(pin, deterministic, the kernels both directions run) of a grid variant, or None where this machine
    cannot run it. seqlen_k: the case's keys (the automatic choice depends on them at some tiles); None: long.
    The deterministic variant runs the deterministic backward of the environment's pin (else of "auto")."""
    if variant == "deterministic":
        pin, deterministic = _environment_pin(), True
    else:
        pin, deterministic = variant, False
    try:
        kernels = [sorted(_ffi.kernel_choice(feature, dtype, head_dim, head_dim_v, pin, seqlen_k).items())
                   for feature in ("fwd", "bwd_deterministic" if deterministic else "bwd")]
    except ValueError:
        return None
    return pin, deterministic, kernels


def variant_or_skip(variant, dtype, head_dim, head_dim_v, seqlen_k=None):
    """(pin, deterministic) to run a case under the grid variant `variant`. Skips where the machine cannot run
    it, or where an earlier variant of GRID_VARIANTS runs the same kernels (on a Hopper "auto" runs the sm90_ws
    kernels; at D64 up to 1024 keys its forward is the sm80 one).

    Under a pin of the whole suite (JAX_FLASH_KERNEL_VARIANT) the grids run only their deterministic variant,
    with that pin's deterministic backward: the others name their kernels explicitly, so they would repeat
    exactly the cases of the unpinned suite (which runs every variant by name)."""
    if _environment_pin() != "auto" and variant != "deterministic":
        pytest.skip(f"grid variant {variant} runs by name in the unpinned suite (pinned: {_environment_pin()})")
    this = _variant_kernels(variant, dtype, head_dim, head_dim_v, seqlen_k)
    if this is None:
        pin = _environment_pin()
        pinned = f" under the {pin} pin" if variant == "deterministic" and pin != "auto" else ""
        pytest.skip(f"kernel variant {variant}{pinned} cannot run {dtype} D={head_dim}/{head_dim_v} here")
    for earlier in GRID_VARIANTS[:GRID_VARIANTS.index(variant)]:
        other = _variant_kernels(earlier, dtype, head_dim, head_dim_v, seqlen_k)
        if other is not None and other[2] == this[2]:
            pytest.skip(f"variant {variant} runs the kernels of {earlier} here")
    return this[0], this[1]


COMMAND_BUFFER_FLAGS = "--xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1"


def run_under_command_buffers(script, out_path, args=()):
    """Runs tests/<script> <out_path> <args> in a child process with XLA command buffers (CUDA graphs) on, and
    returns the arrays it saved ({name: array})."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS=COMMAND_BUFFER_FLAGS, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    child = subprocess.run([sys.executable, os.path.join(here, script), str(out_path), *args], env=env, cwd=here,
                           capture_output=True, text=True)
    assert child.returncode == 0, f"child failed:\n{child.stdout[-4000:]}\n{child.stderr[-4000:]}"
    return dict(np.load(out_path))


def assert_same_bits_under_command_buffers(script, out_path, without):
    """The arrays tests/<script> saves under command buffers are bitwise the `without` ({name: array})
    computed here without them."""
    with_graphs = run_under_command_buffers(script, out_path)
    assert set(with_graphs) == set(without)
    for name, want in without.items():
        assert np.array_equal(with_graphs[name].view(np.uint8), want.view(np.uint8)), name


def make_inputs(case, seed=0, batch=None):
    d, dv = case["head_dims"]
    (hq, hk), (sq, sk) = case["heads"], case["seqlens"]
    batch = batch or (2 if sq * sk <= 255 * 255 else 1)
    dtype = jnp.dtype(case["dtype"])
    keys = jax.random.split(jax.random.key(seed), 4)
    # With softcap, scale q so that many logits land far above the cap (|s| up to ~100 vs cap 30).
    q_scale = 4.0 if case["softcap"] else 1.0
    q = (q_scale * jax.random.normal(keys[0], (batch, sq, hq, d), jnp.float32)).astype(dtype)
    k = (q_scale * jax.random.normal(keys[1], (batch, sk, hk, d), jnp.float32)).astype(dtype)
    v = jax.random.normal(keys[2], (batch, sk, hk, dv), jnp.float32).astype(dtype)
    dout = jax.random.normal(keys[3], (batch, sq, hq, dv), jnp.float32).astype(dtype)
    return q, k, v, dout


@functools.partial(jax.jit, static_argnames=("impl", "causal", "window", "softcap", "deterministic", "variant"))
def forward_and_grads(q, k, v, dout, dlse=None, *, impl, causal, window, softcap, deterministic=False,
                      variant=None):
    """variant: the kernel variant pin of "ours" (None: JAX_FLASH_KERNEL_VARIANT, else auto). dlse: the lse
    cotangent, (B, Hq, Sq) float32 (None: zeros)."""
    return _forward_and_grads(q, k, v, dout, dlse, impl=impl, causal=causal, window=window, softcap=softcap,
                              deterministic=deterministic, variant=variant)


@functools.partial(jax.jit, static_argnames=("causal", "window", "softcap"))
def reference_and_naive(q, k, v, dout, dlse=None, *, causal, window, softcap):
    """forward_and_grads of "ref" and of "naive" in one compiled program (compiles dominate the grid)."""
    kw = dict(causal=causal, window=window, softcap=softcap)
    return (_forward_and_grads(q, k, v, dout, dlse, impl="ref", **kw),
            _forward_and_grads(q, k, v, dout, dlse, impl="naive", **kw))


def _forward_and_grads(q, k, v, dout, dlse=None, *, impl, causal, window, softcap, deterministic=False,
                       variant=None):
    """(out, lse, dq, dk, dv) of `impl`: "ours", "ref" (fp32 reference) or "naive" (input dtype)."""
    def attn(q, k, v):
        kw = dict(causal=causal, window=window, softcap=softcap)
        if impl == "ours":
            return jax_flash.flash_attention(q, k, v, return_lse=True, deterministic=deterministic,
                                             implementation="cuda", _variant=variant, **kw)
        if impl == "ref":
            f32 = [x.astype(jnp.float32) for x in (q, k, v)]
            return reference.attention(*f32, return_lse=True, **kw)
        return reference.naive_attention(q, k, v, return_lse=True, **kw)

    (out, lse), vjp = jax.vjp(attn, q, k, v)
    grads = vjp((dout.astype(out.dtype), jnp.zeros_like(lse) if dlse is None else dlse))
    return (out, lse, *grads)


def run_case(case, seed=0, check_grads=True, variant=None, deterministic=False):
    q, k, v, dout = make_inputs(case, seed)
    kw = dict(causal=case["causal"], window=case["window"], softcap=case["softcap"])
    poison_device_memory()
    ours = jax.device_get(forward_and_grads(q, k, v, dout, impl="ours", deterministic=deterministic,
                                            variant=variant, **kw))
    ref, naive = jax.device_get(reference_and_naive(q, k, v, dout, **kw))
    grad_factor = 3.0 if case["softcap"] else 2.0
    names = ["out", "lse", "dq", "dk", "dv"] if check_grads else ["out", "lse"]
    for i, name in enumerate(names):
        check_oracle(name, ours[i], ref[i], naive[i], factor=2.0 if i < 2 else grad_factor)
    # Rows that see no key: output exactly 0 and lse -inf, zero query gradient.
    masked = np.isneginf(ref[1])  # (B, Hq, Sq)
    if masked.any():
        rows = np.moveaxis(masked, 1, 2)  # (B, Sq, Hq)
        assert np.all(np.asarray(ours[0])[rows] == 0), "fully masked rows must output 0"
        assert np.all(np.isneginf(ours[1][masked])), "fully masked rows must have lse -inf"
        assert np.all(np.asarray(ours[2])[rows] == 0), "fully masked rows must have dq = 0"
    return ours, ref
