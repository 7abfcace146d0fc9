"""Dense attention on the GPU against the fp32 reference by the oracle rule (DESIGN.md); the grid under every
kernel variant the machine can run (gpu_harness.GRID_VARIANTS)."""

import jax
import numpy as np
import pytest

import jax_flash
from cases import case_id, pairwise_cases
from gpu_harness import (GRID_VARIANTS, forward_and_grads, make_inputs, poison_device_memory,
                         reference_and_naive, run_case, variant_or_skip)
from oracle import check_oracle, oracle_bound

pytestmark = pytest.mark.gpu

CASES = pairwise_cases()


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("variant", GRID_VARIANTS)
def test_grid(variant, case):
    pin, deterministic = variant_or_skip(variant, case["dtype"], *case["head_dims"], seqlen_k=case["seqlens"][1])
    run_case(case, variant=pin, deterministic=deterministic)


# Gradients through the lse as well as the output (a random lse cotangent: delta = rowsum(dout * out) - dlse in
# the backward's first kernel), at each head-dim tile's threads per row of that kernel, in both dQ modes (the
# deterministic one sums into blocks behind semaphores that the same kernel zeroes). No row is fully masked.
LSE_COTANGENT_CASES = [  # (d, dv), (hq, hk), (sq, sk), causal
    ((64, 64), (4, 4), (300, 300), True),
    ((96, 96), (7, 1), (129, 257), False),
    ((128, 128), (6, 2), (513, 1000), True),
    ((192, 128), (4, 2), (257, 300), True),
    ((256, 256), (2, 1), (200, 333), False),
]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("head_dims, heads, seqlens, causal", LSE_COTANGENT_CASES)
def test_gradients_with_an_lse_cotangent(head_dims, heads, seqlens, causal, deterministic):
    pin, deterministic = variant_or_skip("deterministic" if deterministic else "auto", "bfloat16", *head_dims,
                                         seqlen_k=seqlens[1])
    case = dict(dtype="bfloat16", head_dims=head_dims, causal=causal, heads=heads, seqlens=seqlens, softcap=None,
                window=None)
    q, k, v, dout = make_inputs(case, seed=3)
    dlse = jax.random.normal(jax.random.key(4), (q.shape[0], heads[0], seqlens[0]), np.float32)
    kw = dict(causal=causal, window=None, softcap=None)
    poison_device_memory()
    ours = jax.device_get(forward_and_grads(q, k, v, dout, dlse, impl="ours", deterministic=deterministic,
                                            variant=pin, **kw))
    ref, naive = jax.device_get(reference_and_naive(q, k, v, dout, dlse, **kw))
    assert not np.isneginf(ref[1]).any(), "the cases have no fully masked row"
    for i, name in enumerate(["out", "lse", "dq", "dk", "dv"]):
        check_oracle(name, ours[i], ref[i], naive[i], factor=2.0)


# Forward grids with more tiles than an H100 / H200 has SMs (132): D256's dense grids without a causal mask run on
# the persistent CTA (one per SM, each walking several tiles; tile_size.h kPersistentDense), D128's on the
# overlapped tile with P in shared memory, in bf16 and fp16; a window that leaves rows without keys, softcap
# with logits far above the cap, GQA. Gradients by the oracle rule; the forward bitwise equal on a second run.
LARGE_GRID_CASES = [  # dtype, (d, dv), (hq, hk), (sq, sk), window, softcap
    ("bfloat16", (256, 256), (16, 4), (2100, 2100), None, None),   # 17 x 16 = 272 tiles
    ("float16", (256, 256), (12, 3), (2100, 1500), (16, 16), None),  # rows before key 600 - 16 see none
    ("bfloat16", (256, 256), (14, 14), (1900, 2000), None, 30.0),
    ("float16", (128, 128), (14, 2), (2100, 2100), None, None),    # GQA 7
    ("bfloat16", (128, 128), (12, 3), (2100, 1500), (16, 16), 30.0),
]


@pytest.mark.parametrize("dtype, head_dims, heads, seqlens, window, softcap", LARGE_GRID_CASES)
def test_forward_grids_larger_than_the_sms(dtype, head_dims, heads, seqlens, window, softcap):
    pin, deterministic = variant_or_skip("auto", dtype, *head_dims, seqlen_k=seqlens[1])
    case = dict(dtype=dtype, head_dims=head_dims, causal=False, heads=heads, seqlens=seqlens, window=window,
                softcap=softcap)
    ours, ref = run_case(case, variant=pin, deterministic=deterministic)
    if window is not None:
        assert np.isneginf(ref[1]).any(), "the window case has rows without keys"
    q, k, v, _ = make_inputs(case)
    poison_device_memory()
    again = jax.device_get(jax_flash.flash_attention(q, k, v, window=window, softcap=softcap, return_lse=True,
                                                     implementation="cuda", _variant=pin))
    for name, a, b in zip(["out", "lse"], ours[:2], again):
        assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)), f"{name} differs"


def test_deterministic_gradients_are_bitwise_repeatable():
    case = dict(dtype="bfloat16", head_dims=(128, 128), causal=True, heads=(28, 4),
                seqlens=(1000, 4097), softcap=None, window=None)
    q, k, v, dout = make_inputs(case)
    kw = dict(causal=True, window=None, softcap=None, deterministic=True)
    first = jax.device_get(forward_and_grads(q, k, v, dout, impl="ours", **kw))
    poison_device_memory()
    second = jax.device_get(forward_and_grads(q, k, v, dout, impl="ours", **kw))
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


@pytest.mark.large
@pytest.mark.parametrize("seqlen", [16384, 32768])
def test_long_context_causal(seqlen):
    case = dict(dtype="bfloat16", head_dims=(128, 128), causal=True, heads=(2, 1),
                seqlens=(seqlen, seqlen), softcap=None, window=None)
    ours, ref = run_case(case, check_grads=False)
    out, want = (np.asarray(x, np.float64)[0] for x in (ours[0], ref[0]))  # (S, H, D)
    cos = np.sum(out * want, -1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(want, axis=-1))
    for band, rows in (("first 1k", slice(0, 1024)), ("middle", slice(seqlen // 2 - 512, seqlen // 2 + 512)),
                       ("last 1k", slice(seqlen - 1024, seqlen))):
        assert cos[rows].min() >= 0.9999, f"{band}: min per-row cosine {cos[rows].min()}"


# Lengths cuDNN accepts through jax.nn (its backward rejects 255 and 4097).
CUDNN_CASES = [(d, causal, s) for d in (64, 128) for causal in (False, True) for s in (256, 1000, 4096)]


@pytest.mark.large
@pytest.mark.parametrize("d, causal, seqlen", CUDNN_CASES)
def test_matches_cudnn(d, causal, seqlen):
    case = dict(dtype="bfloat16", head_dims=(d, d), causal=causal, heads=(8, 2),
                seqlens=(seqlen, seqlen), softcap=None, window=None)
    q, k, v, dout = make_inputs(case, batch=2)
    kw = dict(causal=causal, window=None, softcap=None)
    ours = forward_and_grads(q, k, v, dout, impl="ours", **kw)
    ref, naive = reference_and_naive(q, k, v, dout, **kw)

    def cudnn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

    cudnn_out, vjp = jax.vjp(jax.jit(cudnn), q, k, v)
    cudnn_all = (cudnn_out, *vjp(dout))
    for name, i, j in (("out", 0, 0), ("dq", 2, 1), ("dk", 3, 2), ("dv", 4, 3)):
        # Ours and cuDNN may differ by no more than the oracle allows either of them.
        bound, _ = oracle_bound(ref[i], naive[i])
        diff = np.abs(np.asarray(ours[i], np.float64) - np.asarray(cudnn_all[j], np.float64)).max()
        assert diff <= bound, f"{name}: max|ours - cudnn| = {diff:.3g} > {bound:.3g}"
        check_oracle(name, ours[i], ref[i], naive[i])
