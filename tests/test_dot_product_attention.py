"""jax_flash.dot_product_attention against jax.nn.dot_product_attention(implementation="xla").

CPU: every call the kernels can express is translated (top-left masks shifted or reversed, lengths as packed
sequences) and run on jax_flash's reference ops; output, residual and gradients must match jax.nn by the
oracle rule of DESIGN.md (ref: jax.nn in float32, naive: jax.nn in bfloat16). Calls the kernels cannot express
(bias, mask, float32, other head dims, negative window sides) must give jax.nn's own results, bias gradient
included. GPU: the same translated cases on the kernels, with the jax_flash custom call in the program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi
from jax_flash.ops import nn_compat
from oracle import check_oracle

BATCH = 2
MASKED = 1e30  # residuals beyond this are jax.nn's value for a row that sees no key


def case(t, s, layout, *, heads=(4, 2), causal=False, window=None, lengths=None, scale=None, rank=4):
    """One call: T queries, S keys, (N, K) heads; lengths None, "q", "kv", "both" or "same" (one array for
    both); layout is the plan the kernels use for it."""
    return dict(t=t, s=s, layout=layout, heads=heads, causal=causal, window=window, lengths=lengths,
                scale=scale, rank=rank)


KERNEL_CASES = {
    "plain": case(12, 12, "dense"),
    "plain-T<S": case(9, 14, "dense"),
    "plain-T>S-mha": case(14, 9, "dense", heads=(4, 4)),
    "causal": case(12, 12, "dense", causal=True),
    "causal-T<S": case(9, 14, "dense", causal=True),  # keys past T are sliced off
    "causal-T>S-mqa": case(14, 9, "dense", causal=True, heads=(4, 1)),
    "window-int": case(12, 12, "dense", window=3),
    "window-T<S": case(9, 14, "dense", window=(4, 1)),
    "window-T>S-rows-without-keys": case(14, 9, "flipped", window=3),  # last rows: jax.nn's mean of value
    "window-left-unbounded": case(12, 12, "dense", window=(20, 2)),
    "causal-window-T>S": case(14, 9, "dense", causal=True, window=(6, 5)),
    "causal-window-T<S": case(9, 14, "dense", causal=True, window=(2, 5)),
    "scale": case(12, 12, "dense", causal=True, scale=0.3),
    "rank3-causal-T<S": case(9, 14, "dense", causal=True, rank=3),
    "q-lengths-causal": case(12, 12, "flipped", causal=True, lengths="q"),
    "kv-lengths-causal-T<S": case(9, 14, "flipped", causal=True, lengths="kv"),
    "lengths-window-T>S": case(14, 9, "flipped", window=(3, 1), lengths="both"),
    "lengths-causal-window-T<S": case(9, 14, "flipped", causal=True, window=(2, 0), lengths="both"),
    "same-lengths-causal": case(12, 12, "packed", causal=True, lengths="same"),
    "same-lengths-window-gqa3": case(12, 12, "packed", window=(2, 1), lengths="same", heads=(6, 2)),
    "lengths-no-mask": case(9, 14, "packed", lengths="both"),
    "kv-lengths-no-mask-T>S": case(14, 9, "packed", lengths="kv"),
    "rank3-lengths-causal": case(12, 12, "flipped", causal=True, lengths="both", rank=3),
}


def make_inputs(c, *, head_dim=16, dtype=jnp.bfloat16, seed=0):
    """q, k, v, a cotangent for the output, and the keyword arguments of the call."""
    rng = np.random.default_rng(seed)
    (n, k), t, s = c["heads"], c["t"], c["s"]
    lead = (BATCH,) if c["rank"] == 4 else ()
    q, key, v, dout = (jnp.asarray(rng.standard_normal(lead + shape), dtype) for shape in
                       ((t, n, head_dim), (s, k, head_dim), (s, k, head_dim), (t, n, head_dim)))
    batch = BATCH if c["rank"] == 4 else 1
    # Query lengths past T, and a key length of 0 (its rows see no key), as jax.nn allows.
    q_lengths = jnp.asarray([t - 3, t + 2][:batch], jnp.int32)
    kv_lengths = jnp.asarray([s - 4, 0][:batch] if batch == 2 else [s - 2], jnp.int32)
    kw = dict(is_causal=c["causal"], local_window_size=c["window"], scale=c["scale"])
    if c["lengths"] in ("q", "both"):
        kw["query_seq_lengths"] = q_lengths
    if c["lengths"] in ("kv", "both"):
        kw["key_value_seq_lengths"] = kv_lengths
    if c["lengths"] == "same":
        kw["query_seq_lengths"] = kw["key_value_seq_lengths"] = q_lengths
    return q, key, v, dout, kw


def _jax_nn(q, k, v, kw):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla", return_residual=True, **kw)


def _on_reference_ops(q, k, v, kw):
    arrays, plan = nn_compat.plan_call(q, k, v, **kw)
    return nn_compat.run_plan(plan, *arrays, implementation="xla", out_shape=q.shape, return_residual=True)


def _on_kernels(q, k, v, kw):
    return jax_flash.dot_product_attention(q, k, v, implementation="cuda", return_residual=True, **kw)


def _forward_and_grads(attention, q, k, v, dout, kw):
    """(out, residual, dq, dk, dv) of attention(q, k, v, kw) -> (out, residual), for the cotangent dout."""
    out, vjp, residual = jax.vjp(lambda q, k, v: attention(q, k, v, kw), q, k, v, has_aux=True)
    return (out, residual, *vjp(dout))


def check_against_jax_nn(attention, q, k, v, dout, kw):
    """attention's output, residual and gradients against jax.nn's by the oracle rule (one compiled program
    computes all three)."""
    def run(q, k, v, dout):
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        return (_forward_and_grads(attention, q, k, v, dout, kw),
                _forward_and_grads(_jax_nn, f32(q), f32(k), f32(v), f32(dout), kw),
                _forward_and_grads(_jax_nn, q, k, v, dout, kw))

    with jax.default_matmul_precision("highest"):  # the float32 jax.nn is the reference (no TF32 on GPUs)
        ours, ref, naive = jax.jit(run)(q, k, v, dout)
    names = ("out", "residual", "dq", "dk", "dv")
    for name, o, r, n in zip(names, ours, ref, naive):
        o, r, n = (np.asarray(x, np.float64) for x in (o, r, n))
        if name == "residual":
            masked = np.abs(n) > MASKED
            assert np.array_equal(o[masked], n[masked]), "residual of rows without keys differs from jax.nn"
            o, r, n = o[~masked], r[~masked], n[~masked]
        check_oracle(name, o, r, n)
    if "query_seq_lengths" in kw:
        rows = np.arange(q.shape[-3]) >= np.asarray(kw["query_seq_lengths"])[:, None]
        out = np.asarray(ours[0], np.float32).reshape((-1, q.shape[-3]) + q.shape[-2:])
        assert rows.any() and np.all(out[rows] == 0), "rows past query_seq_lengths must be 0"


@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_translation_matches_jax_nn(name):
    c = KERNEL_CASES[name]
    q, k, v, dout, kw = make_inputs(c)
    _, plan = nn_compat.plan_call(q, k, v, **kw)
    assert isinstance(plan, nn_compat.KernelPlan) and plan.layout == c["layout"], plan
    check_against_jax_nn(_on_reference_ops, q, k, v, dout, kw)


def _bias_and_mask_inputs(t=10, s=13, heads=(4, 2)):
    q, k, v, dout, _ = make_inputs(case(t, s, None, heads=heads))
    rng = np.random.default_rng(1)
    return q, k, v, dout, rng


FALLBACK_CASES = {
    # name: (arguments beyond q, k, v, given the inputs' rng; the reason the kernels cannot take them)
    "bias-full": (lambda rng: dict(bias=rng.standard_normal((BATCH, 4, 10, 13))), "bias"),
    "bias-broadcast": (lambda rng: dict(bias=rng.standard_normal((1, 1, 10, 13))), "bias"),
    "bias-rank3-causal": (lambda rng: dict(bias=rng.standard_normal((4, 10, 13)), is_causal=True), "bias"),
    "mask-broadcast": (lambda rng: dict(mask=rng.random((BATCH, 1, 10, 13)) < 0.7), "mask"),
    "mask-rank2-lengths": (lambda rng: dict(mask=rng.random((10, 13)) < 0.7, is_causal=True,
                                            query_seq_lengths=jnp.asarray([7, 10], jnp.int32)), "mask"),
    "negative-window-side": (lambda rng: dict(local_window_size=(3, -1)), "below 0"),
    "causal-negative-left": (lambda rng: dict(local_window_size=(-1, 4), is_causal=True), "below 0"),
}


@pytest.mark.parametrize("name", list(FALLBACK_CASES))
def test_calls_the_kernels_cannot_express_are_jax_nn(name):
    q, k, v, dout, rng = _bias_and_mask_inputs()
    make_kw, reason = FALLBACK_CASES[name]
    kw = make_kw(rng)
    if "bias" in kw:
        kw["bias"] = jnp.asarray(kw["bias"], jnp.bfloat16)
    if "mask" in kw:
        kw["mask"] = jnp.asarray(kw["mask"])
    _, plan = nn_compat.plan_call(q, k, v, **kw)
    assert isinstance(plan, str) and reason in plan
    bias = kw.pop("bias", None)

    def outputs(attention):
        def run(q, k, v, bias):
            out, vjp = jax.vjp(lambda q, k, v, bias: attention(q, k, v, bias, **kw), q, k, v, bias)
            return (out, *vjp(dout))
        return jax.jit(run)(q, k, v, bias)

    ours = outputs(jax_flash.dot_product_attention)
    want = outputs(lambda *a, **kw: jax.nn.dot_product_attention(*a, implementation="xla", **kw))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="implementation='cuda' cannot express this call"):
        jax_flash.dot_product_attention(q, k, v, bias, implementation="cuda", **kw)


@pytest.mark.parametrize("dtype, head_dim, reason", [(jnp.float32, 16, "dtype float32"),
                                                     (jnp.bfloat16, 12, "head dim 12")])
def test_dtypes_and_head_dims_without_kernels_are_jax_nn(dtype, head_dim, reason):
    q, k, v, _, kw = make_inputs(case(9, 14, None, causal=True, lengths="q"), head_dim=head_dim, dtype=dtype)
    _, plan = nn_compat.plan_call(q, k, v, **kw)
    assert isinstance(plan, str) and reason in plan
    ours = jax_flash.dot_product_attention(q, k, v, **kw)
    want = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
    assert ours.dtype == want.dtype and np.array_equal(np.asarray(ours), np.asarray(want))


def test_implementation_choice(monkeypatch):
    q, k, v, _, kw = make_inputs(KERNEL_CASES["causal"])
    calls = []
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw["implementation"]))
    for implementation in ("xla", "cudnn"):  # passed to jax.nn as they are
        jax_flash.dot_product_attention(q, k, v, implementation=implementation, **kw)
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: "no GPU in this test")
    jax_flash.dot_product_attention(q, k, v, **kw)  # None where the kernels cannot run: jax.nn's XLA path
    assert calls == ["xla", "cudnn", "xla"]
    with pytest.raises(ValueError, match="implementation='cuda' cannot run: no GPU in this test"):
        jax_flash.dot_product_attention(q, k, v, implementation="cuda", **kw)
    with pytest.raises(ValueError, match="implementation must be None, 'cuda', 'xla' or 'cudnn'"):
        jax_flash.dot_product_attention(q, k, v, implementation="triton")


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v, kw: (q, k[..., :8], v, kw), "value must have key's shape"),
    (lambda q, k, v, kw: (q[..., :8], k, v, kw), "query must have shape"),
    (lambda q, k, v, kw: (q[:, :, :3], k, v, kw), r"query heads \(3\) must be a multiple"),
    (lambda q, k, v, kw: (q, k, v, dict(kw, query_seq_lengths=jnp.ones((BATCH,), jnp.float32))),
     "query_seq_lengths must have shape"),
    (lambda q, k, v, kw: (q, k, v, dict(kw, key_value_seq_lengths=jnp.ones((3,), jnp.int32))),
     "key_value_seq_lengths must have shape"),
    (lambda q, k, v, kw: (q, k, v, dict(kw, mask=jnp.ones((9, 14), jnp.float32))), "mask must be a boolean"),
])
def test_bad_arguments_are_errors_as_in_jax_nn(change, message):
    q, k, v, _, kw = make_inputs(case(9, 14, None))
    q, k, v, kw = change(q, k, v, kw)
    with pytest.raises(ValueError):
        jax.nn.dot_product_attention(q, k, v, **kw)
    with pytest.raises(ValueError, match=message):
        jax_flash.dot_product_attention(q, k, v, **kw)


GPU_SIZE = 20  # T and S of the GPU cases: 20x the CPU ones plus 1, so tiles are partly filled


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(KERNEL_CASES))
def test_kernels_match_jax_nn(name):
    c = KERNEL_CASES[name]
    c = dict(c, t=c["t"] * GPU_SIZE + 1, s=c["s"] * GPU_SIZE + 1)
    q, k, v, dout, kw = make_inputs(c, head_dim=64)
    program = jax.jit(lambda q, k, v: jax_flash.dot_product_attention(q, k, v, **kw)).lower(q, k, v).as_text()
    assert "jax_flash_attn" in program, "implementation=None did not take the kernel path"
    check_against_jax_nn(_on_kernels, q, k, v, dout, kw)


@pytest.mark.gpu
def test_bias_runs_on_xla_on_a_gpu():
    q, k, v, _, rng = _bias_and_mask_inputs()
    bias = jnp.asarray(rng.standard_normal((1, 1, 10, 13)), jnp.bfloat16)
    program = jax.jit(lambda q, k, v: jax_flash.dot_product_attention(q, k, v, bias)).lower(q, k, v).as_text()
    assert "jax_flash_attn" not in program
