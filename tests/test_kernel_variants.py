"""Kernel variant pinning (private `_variant=` and JAX_FLASH_KERNEL_VARIANT) on any machine: the variant is
checked where the config is built, reaches every FFI call as the `variant` attribute and keys the compiled
program; a variant the extension says cannot run is an error at trace time. The FFI calls are lowered, not run,
with a stand-in for the extension. Where the extension is built, its exports are checked against Python's; on a
Hopper GPU, pinned variants run kernels of their own and a pin no kernel serves fails."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi
from jax_flash.ops import paged
from jax_flash.ops._config import VARIANT_ENV
from gpu_harness import assert_bitwise, run_case

BF16 = jnp.bfloat16


class StandInExtension:
    """What _ffi asks of the nanobind module while tracing: kernel_choice (ValueError for a variant it cannot
    run) and the backward's scratch size."""

    def __init__(self, runnable=("sm80", "sm90", "sm90_ws"), forward_only_above=(("sm90_ws", 128),)):
        self.runnable = runnable
        # A variant with forward kernels only above a head dim (as the extension's warp-specialized kernels were
        # before their split-layout backward at D192 / D256): the Python side's handling of such a pin.
        self.forward_only_above = dict(forward_only_above)

    def kernel_choice(self, feature, dtype, head_dim, head_dim_v, variant):
        if variant != "auto" and (variant not in self.runnable or
                                  (feature != "fwd" and head_dim > self.forward_only_above.get(variant, 256))):
            raise ValueError(f"jax_flash: kernel variant {variant} cannot serve {feature} here")
        return {"variant": variant}

    def bwd_workspace_bytes(self, *shapes):
        return 1024


@pytest.fixture
def extension(monkeypatch):
    """The CUDA path on any machine, up to lowering: the extension replaced by a StandInExtension."""
    stand_in = StandInExtension()
    monkeypatch.setattr(_ffi, "_registered", lambda: stand_in)
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_ffi, "supported", lambda *args: True)
    monkeypatch.delenv(VARIANT_ENV, raising=False)
    # Variant checks run while tracing: traces cached by earlier tests (the real extension, on a GPU) would
    # skip them.
    jax.clear_caches()
    return stand_in


def _dense(**kw):
    return lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=True, implementation="cuda", **kw)


def _varlen(**kw):
    def attn(q, k, v):
        cu = jnp.array([0, 5, 16], jnp.int32)
        return jax_flash.flash_attention_varlen(q[0], k[0], v[0], cu, cu, 11, 11, implementation="cuda", **kw)
    return attn


def _lowered(attn, grads=True, head_dim=64) -> str:
    """StableHLO of attn's forward and (grads=True) its gradients, for (1, 16, 4, head_dim) bfloat16 q, k, v."""
    x = jax.ShapeDtypeStruct((1, 16, 4, head_dim), BF16)

    def loss(q, k, v):
        return attn(q, k, v).astype(jnp.float32).sum()

    fn = jax.grad(loss, argnums=(0, 1, 2)) if grads else attn
    return jax.jit(fn).lower(x, x, x).as_text()


def _variant_attributes(text: str) -> dict:
    """{FFI target: [variant attribute of each of its calls]} in a lowered program."""
    calls = {}
    for target, attributes in re.findall(r"custom_call @(jax_flash_\w+)\(.*?mhlo\.backend_config = \{([^}]*)\}",
                                         text):
        calls.setdefault(target, []).append(int(re.search(r"variant = (-?\d+) : i32", attributes).group(1)))
    return calls


@pytest.mark.parametrize("variant, attribute", [("auto", 0), ("sm80", 1), ("sm90", 2), ("sm90_ws", 3)])
def test_private_argument_reaches_every_call(extension, variant, attribute):
    dense = _variant_attributes(_lowered(_dense(_variant=variant)))
    assert dense == {"jax_flash_attn_fwd": [attribute], "jax_flash_attn_bwd": [attribute]}
    packed = _variant_attributes(_lowered(_varlen(_variant=variant)))
    assert packed == {"jax_flash_attn_varlen_fwd": [attribute], "jax_flash_attn_varlen_bwd": [attribute]}


def test_forward_only_variant_pins_forward_calls_and_refuses_gradients(extension):
    """sm90_ws at head dim 192 under a stand-in with a forward and no backward above 128."""
    assert _variant_attributes(_lowered(_dense(_variant="sm90_ws"), grads=False, head_dim=192)) == {
        "jax_flash_attn_fwd": [3]}
    assert _variant_attributes(_lowered(_varlen(_variant="sm90_ws"), grads=False, head_dim=192)) == {
        "jax_flash_attn_varlen_fwd": [3]}
    with pytest.raises(ValueError, match=r"kernel variant 'sm90_ws' .* cannot serve bwd"):
        _lowered(_dense(_variant="sm90_ws"), head_dim=192)


def test_paged_pin_is_checked_while_tracing_for_the_kernel_the_shapes_get(extension, monkeypatch):
    """paged_attention asks the extension about the kernel its shapes get (kernel_choice.h paged_feature: the
    decode kernel when a dense call's (query, query head) rows of one kv head fit 16, else the prefill one), so
    a pin that cannot serve them is an error at trace time, as for the dense and packed ops."""
    asked = []

    def kernel_choice(feature, dtype, head_dim, head_dim_v, variant):
        asked.append(feature)
        if variant == "sm90" and feature != "paged_decode":
            raise ValueError(f"jax_flash: kernel variant sm90 cannot serve {feature}")
        return {"variant": variant}

    monkeypatch.setattr(extension, "kernel_choice", kernel_choice)
    monkeypatch.setenv(VARIANT_ENV, "sm90")
    cache = jax.ShapeDtypeStruct((16, 64, 2, 128), BF16)
    page_table = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    cache_seqlens = jax.ShapeDtypeStruct((2,), jnp.int32)

    def lower(queries):
        q = jax.ShapeDtypeStruct((2, queries, 8, 128), BF16)
        return jax.jit(lambda *args: jax_flash.paged_attention(*args)).lower(q, cache, cache, page_table,
                                                                            cache_seqlens)

    lower(4)  # 4 queries x 4 query heads per kv head: decode
    assert asked == ["paged_decode"]
    with pytest.raises(ValueError, match="kernel variant 'sm90' .* cannot serve paged"):
        lower(5)  # 20 rows per kv head: the prefill kernel
    assert asked[-1] == "paged"


def test_environment_variable_pins_and_the_argument_wins(extension, monkeypatch):
    monkeypatch.setenv(VARIANT_ENV, "sm90")
    assert _variant_attributes(_lowered(_dense(), grads=False)) == {"jax_flash_attn_fwd": [2]}
    assert _variant_attributes(_lowered(_varlen(), grads=False)) == {"jax_flash_attn_varlen_fwd": [2]}
    assert _variant_attributes(_lowered(_dense(_variant="sm80"), grads=False)) == {"jax_flash_attn_fwd": [1]}
    monkeypatch.setenv(VARIANT_ENV, "")
    assert _variant_attributes(_lowered(_dense(), grads=False)) == {"jax_flash_attn_fwd": [0]}


def test_each_variant_lowers_to_its_own_program(extension):
    programs = {variant: _lowered(_dense(_variant=variant), grads=False) for variant in _ffi.KERNEL_VARIANTS}
    assert len(set(programs.values())) == len(programs)
    # They differ in the variant attribute alone.
    unpinned = {re.sub(r"variant = \d+ : i32", "variant", text) for text in programs.values()}
    assert len(unpinned) == 1


def test_deterministic_backward_carries_the_variant(extension):
    text = _lowered(_dense(_variant="sm80", deterministic=True))
    assert _variant_attributes(text) == {"jax_flash_attn_fwd": [1], "jax_flash_attn_bwd": [1]}
    assert re.search(r"custom_call @jax_flash_attn_bwd.*deterministic = true", text)


@pytest.mark.parametrize("op", ["dense", "varlen", "segments"])
def test_bad_variant_names_raise_naming_the_argument(op):
    q = jnp.zeros((1, 16, 4, 64), BF16)
    cu = jnp.array([0, 16], jnp.int32)
    calls = {
        "dense": lambda **kw: jax_flash.flash_attention(q, q, q, implementation="xla", **kw),
        "varlen": lambda **kw: jax_flash.flash_attention_varlen(q[0], q[0], q[0], cu, cu, 16, 16,
                                                                implementation="xla", **kw),
        "segments": lambda **kw: jax_flash.flash_attention(q, q, q, segment_ids=jnp.ones((1, 16), jnp.int32),
                                                           max_segments=1, implementation="xla", **kw),
    }
    with pytest.raises(ValueError, match="_variant must be one of 'auto', 'sm80', 'sm90', 'sm90_ws', got 'sm75'"):
        calls[op](_variant="sm75")


def test_bad_environment_variable_raises_naming_it(monkeypatch):
    monkeypatch.setenv(VARIANT_ENV, "hopper")
    q = jnp.zeros((1, 16, 4, 64), BF16)
    with pytest.raises(ValueError, match=f"{VARIANT_ENV} must be one of .* got 'hopper'"):
        jax_flash.flash_attention(q, q, q, implementation="xla")


def test_variant_the_extension_cannot_run_is_a_trace_time_error(extension):
    extension.runnable = ("sm80",)
    with pytest.raises(ValueError, match=r"kernel variant 'sm90' .* cannot run here: .*cannot serve fwd"):
        _lowered(_dense(_variant="sm90"), grads=False)
    with pytest.raises(ValueError, match=r"kernel variant 'sm90' .* cannot serve fwd"):
        _lowered(_varlen(_variant="sm90"), grads=False)
    assert "jax_flash_attn_fwd" in _variant_attributes(_lowered(_dense(_variant="sm80"), grads=False))


def test_split_plan_sizes_by_the_exported_paged_tile(monkeypatch):
    shape = dict(batch=2, seqlen_q=128, num_heads_q=8, num_heads_k=2, max_pages=64, page_size=64)
    plans = {}
    for tile in [(64, 64), (128, 64), (64, 256)]:
        monkeypatch.setattr(_ffi, "paged_tile", lambda tile=tile: tile)
        plans[tile] = paged.choose_split_plan(**shape)
    # Twice the rows per CTA halves the CTAs (more splits); four times the keys per block limits the splits.
    assert plans[(128, 64)].num_splits > plans[(64, 64)].num_splits > plans[(64, 256)].num_splits


def _extension():
    module, reason = _ffi._load_module()
    if module is None:
        pytest.skip(reason)
    return module


def test_extension_exports_match_python():
    module = _extension()
    assert tuple(module.kernel_variants) == _ffi.KERNEL_VARIANTS
    assert _ffi.paged_tile() == (module.paged_block_m, module.paged_block_n)
    assert module.paged_decode_max_rows == _ffi._PAGED_DECODE_MAX_ROWS_WITHOUT_EXTENSION
    for dtype in ("bfloat16", "float16"):
        for d in (64, 96, 128, 192, 256):
            if not module.supported(dtype, d, d):
                continue
            choice = module.kernel_choice("paged", dtype, d, d, "sm80")
            assert (choice["block_m"], choice["block_n"]) == _ffi.paged_tile()
            assert "sm80" in module.variants("fwd", dtype, d, d)
            # The wgmma dK/dV kernel sums dQ with atomics only; the warp-specialized one has a mode without dQ.
            with pytest.raises(ValueError, match="cannot serve bwd_deterministic"):
                module.kernel_choice("bwd_deterministic", dtype, d, d, "sm90")


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(BF16)


def _workspace_bytes(delta_floats, accum_floats, semaphores=0):
    align = lambda n: -(-n // 256) * 256
    return align(4 * delta_floats) + align(4 * accum_floats) + align(4 * semaphores)


def test_backward_workspace_holds_either_dq_accumulator_layout():
    """The backward's scratch (kernels/bwd/workspace_layout.h): delta, then an fp32 dq accumulator large enough
    for rows (B, Hq, Sq, D) and, where the build has the warp-specialized dK/dV kernel (sm_90a code), for its
    blocks of 64 queries x the head-dim tile per sequence and head (packed: ceil(Tq / 64) + B blocks per head).
    The deterministic backward has the blocks and one int semaphore per block for its ordered sums where the build
    has them (two copies of each above head dim 128), else nothing (the dq kernel)."""
    module = _extension()
    if not module.supported("bfloat16", 128, 128):
        pytest.skip("this build has no head-dim tile 128 (head dim 120 below runs on it)")
    tile = 128
    # Dense B 2, Sq 1000, Hq 8, D 120 (tile 128): 16 blocks per sequence and head.
    dense = module.bwd_workspace_bytes("bfloat16", 2, False, 1000, 900, 8, 4, 120, 120, False)
    rows, blocks = 2 * 8 * 1000 * 120, 2 * 8 * 16 * 64 * tile
    assert dense in (_workspace_bytes(16000, rows), _workspace_bytes(16000, max(rows, blocks)))
    # Packed: 3 sequences in 1000 tokens: ceil(1000 / 64) + 3 = 19 blocks per head.
    packed = module.bwd_workspace_bytes("bfloat16", 3, True, 1000, 900, 8, 4, 120, 120, False)
    rows, blocks = 8 * 1000 * 120, 8 * 19 * 64 * tile
    assert packed in (_workspace_bytes(8000, rows), _workspace_bytes(8000, max(rows, blocks)))
    # The two agree on whether this build has the blocks layout.
    has_blocks = packed > _workspace_bytes(8000, rows)
    assert (dense > _workspace_bytes(16000, 2 * 8 * 1000 * 120)) == has_blocks
    deterministic = module.bwd_workspace_bytes("bfloat16", 3, True, 1000, 900, 8, 4, 120, 120, True)
    assert deterministic == (_workspace_bytes(8000, blocks, 8 * 19) if has_blocks else _workspace_bytes(8000, 0))
    if _hopper():  # a Hopper build has the warp-specialized kernel at tile 128
        assert packed == _workspace_bytes(8000, blocks)
    # The split layout's tiles (64-query blocks of the tile's head dim D): their ordered sums run as two chains,
    # so the deterministic backward holds two copies of the blocks and of their semaphores (D192 / Dv 128 too).
    for d, dv in ((256, 256), (192, 128)):
        if has_blocks and module.supported("bfloat16", d, dv) and tuple(
                module.kernel_choice("bwd", "bfloat16", d, dv, "sm80")["tile"]) == (d, dv):
            det = module.bwd_workspace_bytes("bfloat16", 3, True, 1000, 900, 8, 4, d, dv, True)
            assert det == _workspace_bytes(8000, 2 * 8 * 19 * 64 * d, 2 * 8 * 19), (d, dv)


def _hopper_variants_or_skip(feature, head_dim):
    if "sm90" not in _ffi.runnable_variants(feature, BF16, head_dim, head_dim):
        pytest.skip(f"no sm90 {feature} kernel here (needs a Hopper and a build with sm_90a code and D{head_dim})")


@pytest.mark.gpu
def test_pinned_dense_variants_run_their_own_kernels():
    _hopper_variants_or_skip("fwd", 128)
    q, k, v, dout = (_random((2, 640, 8, 128), seed) for seed in range(4))

    def forward_and_grads(q, k, v, variant):
        out, vjp = jax.vjp(lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=True, _variant=variant),
                           q, k, v)
        return (out, *vjp(dout))

    sm80, sm90 = (jax.device_get(jax.jit(forward_and_grads, static_argnums=3)(q, k, v, variant))
                  for variant in ("sm80", "sm90"))
    # Different products sum in different orders: equal bits everywhere would mean one kernel ran twice.
    assert not np.array_equal(np.asarray(sm80[0]).view(np.uint16), np.asarray(sm90[0]).view(np.uint16))
    assert not np.array_equal(np.asarray(sm80[1]).view(np.uint16), np.asarray(sm90[1]).view(np.uint16))
    for a, b in zip(sm80, sm90):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=3e-2, rtol=3e-2)
    with pytest.raises(ValueError, match="cannot serve bwd_deterministic"):
        jax.grad(lambda q: jax_flash.flash_attention(q, k, v, deterministic=True, _variant="sm90").astype(
            jnp.float32).sum())(q)


def _hopper():
    module, _ = _ffi._load_module()
    return module is not None and "sm90_ws" in _ffi.runnable_variants("fwd", BF16, 128, 128)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dims", [(64, 64), (96, 96), (128, 128), (192, 128), (192, 192), (256, 256)])
def test_hopper_default_forward_is_warp_specialized(head_dims):
    module = _extension()
    if not _hopper():
        pytest.skip("needs a Hopper and a build with sm_90a code")
    for dtype in ("bfloat16", "float16"):
        # This head-dim tile itself (a build may serve these head dims with a larger tile).
        if (not module.supported(dtype, *head_dims) or
                tuple(module.kernel_choice("fwd", dtype, *head_dims, "sm80")["tile"]) != head_dims):
            continue
        choice = module.kernel_choice("fwd", dtype, *head_dims)
        assert choice["variant"] == "sm90_ws"
        # D64: three consumer warpgroups of 64 rows (tile_size.h); the others two.
        assert (tuple(choice["tile"]), choice["block_m"]) == (head_dims, 192 if head_dims == (64, 64) else 128), choice
        # D64 up to 1024 keys: the mma.sync forward (kernel_table.h auto_min_keys); other tiles at any length.
        short = module.kernel_choice("fwd", dtype, *head_dims, "auto", 1024)["variant"]
        assert short == ("sm80" if head_dims == (64, 64) else "sm90_ws")
        assert module.kernel_choice("fwd", dtype, *head_dims, "auto", 1025)["variant"] == "sm90_ws"
        # The warp-specialized backward: auto takes its tiles D64, D96 and D128 with head_dim == head_dim_v and
        # the split layout's D192, D192 / Dv 128 and D256; it sums dQ as the adds come, or in key-block order when
        # deterministic.
        ws_backward = head_dims[0] == head_dims[1] or head_dims[0] > 128
        expected_dq = {"bwd": "atomic_sums",
                       "bwd_deterministic": "ordered_sums" if ws_backward else "dq_kernel"}
        for feature, dq in expected_dq.items():
            choice = module.kernel_choice(feature, dtype, *head_dims)
            assert (choice["variant"] == "sm90_ws") == ws_backward
            assert choice["dq"] == dq, choice
        assert module.kernel_choice("bwd_deterministic", dtype, *head_dims, "sm80")["dq"] == "dq_kernel"


# A head dim where the warp-specialized forward and the sm80 one step through the keys in tiles of different
# widths (128 vs 64 keys at D128), so their sums round differently. At D256 both take 64-key tiles and gave the
# same bits on an H100 (2026-12-06): no evidence there of which kernel ran; D64's take 128 keys each since the
# 192 x 128 tile (session 21), which may give the same bits too.
@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [128])
def test_pinned_warp_specialized_forward_runs_its_own_kernel(head_dim):
    module = _extension()
    if not _hopper() or not module.supported("bfloat16", head_dim, head_dim):
        pytest.skip(f"needs a Hopper and a build with sm_90a code and D{head_dim}")
    q, k, v = (_random((2, 700, 6, head_dim), seed) for seed in range(3))
    run = jax.jit(lambda q, k, v, variant: jax_flash.flash_attention(q, k, v, causal=True, _variant=variant),
                  static_argnums=3)
    sm80, ws = (np.asarray(jax.device_get(run(q, k, v, variant))) for variant in ("sm80", "sm90_ws"))
    assert not np.array_equal(sm80.view(np.uint16), ws.view(np.uint16))
    np.testing.assert_allclose(sm80.astype(np.float32), ws.astype(np.float32), atol=2e-2, rtol=2e-2)



@pytest.mark.gpu
@pytest.mark.parametrize("head_dims", [(192, 128), (192, 192), (256, 256)])
def test_split_layout_backward_is_the_default(head_dims):
    """kernel_table.h: the warp-specialized backward's split layout (D192, D256) is auto's choice on a Hopper; it
    sums dQ into blocks, in key-block order when deterministic (D256 without the shared dQ block: by the
    consumers' atomics in their turn)."""
    module = _extension()
    if not _hopper():
        pytest.skip("needs a Hopper and a build with sm_90a code")
    if (not module.supported("bfloat16", *head_dims) or
            tuple(module.kernel_choice("fwd", "bfloat16", *head_dims, "sm80")["tile"]) != head_dims):
        pytest.skip(f"this build has no head-dim tile {head_dims}")
    for feature in ("bwd", "bwd_deterministic"):
        assert module.kernel_choice(feature, "bfloat16", *head_dims)["variant"] == "sm90_ws"
    assert module.kernel_choice("bwd", "bfloat16", *head_dims, "sm90_ws")["dq"] == "atomic_sums"
    assert module.kernel_choice("bwd_deterministic", "bfloat16", *head_dims, "sm90_ws")["dq"] == "ordered_sums"

def _ws_backward_case(head_dim, softcap):
    """GQA 3 (each kv head sums three query heads' dK / dV), causal; with softcap also a left window."""
    return dict(dtype="bfloat16", head_dims=(head_dim, head_dim), heads=(6, 2), seqlens=(700, 700), causal=True,
                softcap=softcap, window=(64, 0) if softcap else None)


def _ws_backward_or_skip(feature, head_dim):
    _extension()
    if not _hopper() or "sm90_ws" not in _ffi.runnable_variants(feature, BF16, head_dim, head_dim):
        pytest.skip(f"needs a Hopper and a build with sm_90a code and D{head_dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_pinned_warp_specialized_deterministic_backward(head_dim, softcap):
    """deterministic=True under sm90_ws: the warp-specialized dK/dV kernel with its dQ sums in key-block order
    (D192: the split layout's dq writer warp; D256: its consumers' atomics). By the oracle rule
    (gpu_harness.run_case), and bitwise repeatable."""
    _ws_backward_or_skip("bwd_deterministic", head_dim)
    case = _ws_backward_case(head_dim, softcap)
    first, _ = run_case(case, variant="sm90_ws", deterministic=True)
    second, _ = run_case(case, variant="sm90_ws", deterministic=True)
    assert_bitwise(("out", "lse", "dq", "dk", "dv"), first, second, "sm90_ws deterministic, second run")


@pytest.mark.gpu
@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 192, 256])
def test_pinned_warp_specialized_backward(head_dim, softcap):
    """The warp-specialized dK/dV kernel with atomic dQ, by the oracle rule (gpu_harness.run_case). (Against the
    sm80 kernel the bits are no evidence of which ran: both step through 64 queries per 128-key tile, so dK and
    dV may round alike; the grids run the pinned family too.)"""
    _ws_backward_or_skip("bwd", head_dim)
    run_case(_ws_backward_case(head_dim, softcap), variant="sm90_ws")


@pytest.mark.gpu
def test_automatic_d64_forward_follows_the_key_count():
    """kernel_table.h: at D64 the automatic choice runs the mma.sync forward up to 1024 keys and the
    warp-specialized one above; the launcher passes the call's key count to the choice."""
    module = _extension()
    # module.supported(64) holds for any build with a tile >= 64: the D64 tile itself is what is needed.
    if not _hopper() or tuple(module.kernel_choice("fwd", "bfloat16", 64, 64, "sm80")["tile"]) != (64, 64):
        pytest.skip("needs a Hopper and a build with sm_90a code and the D64 tile")
    run = jax.jit(lambda q, k, v, variant: jax_flash.flash_attention(q, k, v, _variant=variant), static_argnums=3)
    for keys, expected in ((1024, "sm80"), (1100, "sm90_ws")):
        q, k, v = (_random((1, keys, 4, 64), seed) for seed in range(3))
        auto, pinned = (np.asarray(jax.device_get(run(q, k, v, variant))).view(np.uint16)
                        for variant in ("auto", expected))
        np.testing.assert_array_equal(auto, pinned, err_msg=f"{keys} keys")
    # Packed: the choice goes by max_seqlen_k, not by the token total (8 sequences of 512 keys: 4096 tokens).
    cu = jnp.arange(0, 4097, 512, dtype=jnp.int32)
    q, k, v = (_random((4096, 4, 64), seed) for seed in range(3))
    packed = jax.jit(lambda q, k, v, variant: jax_flash.flash_attention_varlen(q, k, v, cu, cu, 512, 512,
                                                                               _variant=variant), static_argnums=3)
    auto, pinned = (np.asarray(jax.device_get(packed(q, k, v, variant))).view(np.uint16)
                    for variant in ("auto", "sm80"))
    np.testing.assert_array_equal(auto, pinned, err_msg="packed, max_seqlen_k 512")


@pytest.mark.gpu
def test_pinned_paged_decode_variants(monkeypatch):
    _hopper_variants_or_skip("paged_decode", 128)
    batch, pages, page_size = 4, 64, 64
    q = _random((batch, 1, 8, 128), 0)  # decode: 1 query x 4 heads per kv head fit one warp's rows
    k_cache, v_cache = (_random((batch * pages, page_size, 2, 128), seed) for seed in (1, 2))
    page_table = jnp.arange(batch * pages, dtype=jnp.int32).reshape(batch, pages)
    cache_seqlens = jnp.array([4096, 1000, 77, 2500], jnp.int32)

    def run(variant, q):
        monkeypatch.setenv(VARIANT_ENV, variant)  # paged_attention has no private argument: read at trace time
        # A new function each time: jax.jit(paged_attention) would reuse the first trace (and its variant).
        paged = jax.jit(lambda *args: jax_flash.paged_attention(*args))
        return jax.device_get(paged(q, k_cache, v_cache, page_table, cache_seqlens))

    sm80, sm90 = run("sm80", q), run("sm90", q)
    assert not np.array_equal(np.asarray(sm80).view(np.uint16), np.asarray(sm90).view(np.uint16))
    np.testing.assert_allclose(np.asarray(sm80, np.float32), np.asarray(sm90, np.float32), atol=2e-2, rtol=2e-2)
    # 64 query rows per kv head: the prefill kernel, which has no Hopper variant.
    with pytest.raises(Exception, match="cannot serve paged"):
        run("sm90", _random((batch, 16, 8, 128), 3))
