"""The CUDA extension: loading it, registering its FFI targets once, and `ffi_call` wrappers.

Everything that knows target names, attribute names and the handlers' buffer order lives here, and the
extension's static facts: its kernel variants and the tiles of its kernel table (cuda/host/kernel_table.h).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash import _vma

FWD_TARGET = "jax_flash_attn_fwd"
BWD_TARGET = "jax_flash_attn_bwd"
VARLEN_FWD_TARGET = "jax_flash_attn_varlen_fwd"
VARLEN_BWD_TARGET = "jax_flash_attn_varlen_bwd"
PAGED_FWD_TARGET = "jax_flash_paged_fwd"
PAGED_VARLEN_FWD_TARGET = "jax_flash_paged_varlen_fwd"

# Kernel variants in the order of their FFI attribute values (KernelVariant, cuda/host/kernel_table.h): "auto"
# lets the kernel choice pick for the device, the others pin a kernel family. The extension exports the same
# tuple (kernel_variants); this copy lets configs be checked and calls be lowered where the extension is absent
# (tests/test_kernel_variants.py holds the two equal where it is present).
KERNEL_VARIANTS = ("auto", "sm80", "sm90", "sm90_ws")

# The paged kernels' cp.async tile: (query, head) rows per CTA after GQA packing, keys per mainloop step. The
# extension exports its kernel table's values (paged_block_m / paged_block_n); these serve only where it is
# absent, where no kernel runs and the split plan is computed for tests alone.
_PAGED_TILE_WITHOUT_EXTENSION = (64, 64)
# The split-key decode kernel's bound on (query, query head) rows per kv head (exported as paged_decode_max_rows).
_PAGED_DECODE_MAX_ROWS_WITHOUT_EXTENSION = 16


@functools.cache
def _load_module():
    """The nanobind module, or the reason it cannot be used."""
    try:
        from jax_flash import _jax_flash_cuda
    except ImportError as e:
        return None, f"the CUDA extension is not built ({e})"
    return _jax_flash_cuda, None


@functools.cache
def _gpu_reason() -> str | None:
    try:
        if not jax.devices("gpu"):
            return "no GPU device is visible to JAX"
    except RuntimeError as e:
        return f"no GPU backend in JAX ({e})"
    return None


def unavailable_reason() -> str | None:
    """None when the CUDA kernels can run here, else why not."""
    module, reason = _load_module()
    return reason or _gpu_reason()


def _module():
    module, reason = _load_module()
    if module is None:
        raise RuntimeError(f"jax_flash: {reason}")
    return module


@functools.cache
def _registered():
    module = _module()
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="CUDA")
    return module


def paged_is_decode(packed: bool, seqlen_q: int, group: int) -> bool:
    """True for the shapes the extension serves with the split-key decode kernel (kernel_choice.h
    paged_feature): dense queries whose (query, query head) rows of one kv head fit its bound."""
    module, _ = _load_module()
    bound = _PAGED_DECODE_MAX_ROWS_WITHOUT_EXTENSION if module is None else module.paged_decode_max_rows
    return not packed and seqlen_q * group <= bound


def paged_tile() -> tuple[int, int]:
    """(rows, keys) of the paged kernels' tile, from the extension's kernel table; used to pick num_splits."""
    module, _ = _load_module()
    if module is None:
        return _PAGED_TILE_WITHOUT_EXTENSION
    return module.paged_block_m, module.paged_block_n


def runnable_variants(feature: str, dtype, head_dim: int, head_dim_v: int) -> list[str]:
    """The kernel variants that can serve `feature` ("fwd", "bwd", "bwd_deterministic", "paged",
    "paged_decode") for the dtype and head dims on the current device; [] without the extension."""
    module, _ = _load_module()
    if module is None:
        return []
    return list(module.variants(feature, jnp.dtype(dtype).name, head_dim, head_dim_v))


def kernel_choice(feature: str, dtype, head_dim: int, head_dim_v: int, variant: str = "auto",
                  seqlen_k: int | None = None) -> dict:
    """The kernel the extension runs for such a call on the current device: {variant, tile, block_m, block_n,
    dq} (dq, how a backward gets dq: "dq_kernel", "atomic_sums" or "ordered_sums"). ValueError saying why when
    none can serve it. seqlen_k: the call's keys (packed: max_seqlen_k); None: a long call (the automatic choice
    of some tiles depends on it, kernel_table.h auto_min_keys)."""
    return _module().kernel_choice(feature, jnp.dtype(dtype).name, head_dim, head_dim_v, variant,
                                   -1 if seqlen_k is None else seqlen_k)


def _check_variant(module, feature: str, dtype, head_dim: int, head_dim_v: int, variant: str) -> None:
    """A pinned variant that cannot serve the call is an error at trace time (the handler checks again when it
    runs, on the device it runs on)."""
    if variant == "auto":
        return
    try:
        module.kernel_choice(feature, jnp.dtype(dtype).name, head_dim, head_dim_v, variant)
    except ValueError as e:
        raise ValueError(f"kernel variant {variant!r} (_variant or JAX_FLASH_KERNEL_VARIANT) cannot run here: "
                         f"{e}") from None


def supported(dtype, head_dim: int, head_dim_v: int) -> bool:
    """True when this build has a kernel for the dtype and head dims (False without the extension)."""
    module, _ = _load_module()
    name = jnp.dtype(dtype).name
    # The kernels take float16 / bfloat16 only; other dtypes are "no kernel", never an error from the module.
    return module is not None and name in ("bfloat16", "float16") and module.supported(name, head_dim, head_dim_v)


def _attributes(config) -> dict:
    """The attributes of every call (AttnAttributes, cuda/ffi/attributes.h). The variant is one of them, so each
    pinned variant compiles its own executable."""
    return dict(scale=np.float32(config.scale), softcap=np.float32(config.softcap or 0.0),
                window_left=np.int32(config.window_left), window_right=np.int32(config.window_right),
                variant=np.int32(KERNEL_VARIANTS.index(config.variant)))


def _sinks_operand(sinks, lse_shape) -> tuple:
    """The forward's sinks operand and has_sinks attribute: None -> an empty float32 array; else sinks, float32
    shaped like lse (each head's sink logit on every row, ops/_sinks.sink_rows), cast to float32."""
    if sinks is None:
        return jnp.zeros((0,), jnp.float32), dict(has_sinks=np.bool_(False))
    if sinks.shape != lse_shape:
        raise ValueError(f"sinks must be shaped like lse {lse_shape}, got {sinks.shape}")
    return sinks.astype(jnp.float32), dict(has_sinks=np.bool_(True))


def attn_fwd(q, k, v, config, sinks=None):
    """out (..., Sq, Hq, Dv) in q.dtype, lse (..., Hq, Sq) float32. Leading dims fold into the batch.

    sinks: None, or the attention sinks shaped like lse (..., Hq, Sq), head h's sink logit on each of its rows:
    the kernels add the sink column to each row's softmax, and out and lse include it."""
    module = _registered()
    _check_variant(module, "fwd", q.dtype, q.shape[-1], v.shape[-1], config.variant)
    *lead, sq, hq, _ = q.shape
    out_types = (jax.ShapeDtypeStruct((*lead, sq, hq, v.shape[-1]), q.dtype),
                 jax.ShapeDtypeStruct((*lead, hq, sq), jnp.float32))
    sinks, sink_attributes = _sinks_operand(sinks, out_types[1].shape)
    call = _vma.ffi_call(FWD_TARGET, out_types, vmap_method="broadcast_all")
    return call(q, k, v, sinks, **_attributes(config), **sink_attributes)


def attn_bwd(q, k, v, out, lse, dout, dlse, config, deterministic: bool):
    """dq, dk, dv in q.dtype; dk/dv are summed over the query heads of each kv head."""
    module = _registered()
    *lead, sq, hq, d = q.shape
    sk, hk, dv = v.shape[-3:]
    _check_variant(module, _bwd_feature(deterministic), q.dtype, d, dv, config.variant)
    batch = math.prod(lead)
    workspace = module.bwd_workspace_bytes(jnp.dtype(q.dtype).name, batch, False, sq, sk, hq, hk, d, dv,
                                           bool(deterministic))
    out_types = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype),
                 jax.ShapeDtypeStruct((max(workspace, 1),), jnp.uint8))
    call = _vma.ffi_call(BWD_TARGET, out_types, vmap_method="broadcast_all")
    dq, dk, dv_, _ = call(q, k, v, out, lse, dout, dlse, deterministic=np.bool_(deterministic),
                          **_attributes(config))
    return dq, dk, dv_


def _bwd_feature(deterministic: bool) -> str:
    return "bwd_deterministic" if deterministic else "bwd"


def _varlen_attributes(config, max_seqlen_q: int, max_seqlen_k: int) -> dict:
    # The kernels never size work by max_seqlen; it is an attribute so that each value compiles its own
    # executable, as the API promises for static arguments.
    return dict(_attributes(config), max_seqlen_q=np.int32(max_seqlen_q), max_seqlen_k=np.int32(max_seqlen_k))


def attn_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, config, max_seqlen_q,
                    max_seqlen_k, sinks=None):
    """Packed (THD) forward: out (Tq, Hq, Dv) in q.dtype, lse (Hq, Tq) float32.

    cu_seqlens_* (N + 1,) and seqused_* (N,) int32 (never None at this level). sinks: None, or shaped like lse
    (Hq, Tq), as attn_fwd's; rows outside every sequence are not read, and their lse stays -inf."""
    module = _registered()
    _check_variant(module, "fwd", q.dtype, q.shape[-1], v.shape[-1], config.variant)
    tq, hq, _ = q.shape
    out_types = (jax.ShapeDtypeStruct((tq, hq, v.shape[-1]), q.dtype),
                 jax.ShapeDtypeStruct((hq, tq), jnp.float32))
    # vmapped here, a packed call runs once per element (a packed batch has no batch axis to fold into);
    # flash_attention_varlen wraps it in a custom_vmap that makes one call of all elements (ops/_partition.py).
    sinks, sink_attributes = _sinks_operand(sinks, out_types[1].shape)
    call = _vma.ffi_call(VARLEN_FWD_TARGET, out_types, vmap_method="sequential")
    return call(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, sinks,
                **_varlen_attributes(config, max_seqlen_q, max_seqlen_k), **sink_attributes)


def attn_varlen_bwd(q, k, v, out, lse, dout, dlse, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, config,
                    deterministic: bool, max_seqlen_q, max_seqlen_k):
    """Packed (THD) backward: dq, dk, dv in q.dtype; padding rows get 0."""
    module = _registered()
    tq, hq, d = q.shape
    tk, hk, dv = v.shape
    _check_variant(module, _bwd_feature(deterministic), q.dtype, d, dv, config.variant)
    workspace = module.bwd_workspace_bytes(jnp.dtype(q.dtype).name, cu_seqlens_q.shape[0] - 1, True, tq, tk, hq,
                                           hk, d, dv, bool(deterministic))
    out_types = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype),
                 jax.ShapeDtypeStruct((max(workspace, 1),), jnp.uint8))
    call = _vma.ffi_call(VARLEN_BWD_TARGET, out_types, vmap_method="sequential")
    dq, dk, dv_, _ = call(q, k, v, out, lse, dout, dlse, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k,
                          deterministic=np.bool_(deterministic),
                          **_varlen_attributes(config, max_seqlen_q, max_seqlen_k))
    return dq, dk, dv_


def paged_fwd(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, config, num_splits: int,
              max_seqlen_q=None, split_halving: bool = False):
    """Attention of new queries over a paged KV cache (forward only).

    q (B, Sq, Hq, D), or (Tq, Hq, D) with cu_seqlens_q (B + 1,) int32; k_cache (P, page_size, Hk, D),
    v_cache (P, page_size, Hk, Dv); page_table (B, max_pages) int32; cache_seqlens (B,) int32.
    num_splits >= 1: the key range of each query tile is split this many ways and combined in fp32, in
    equal parts or, with split_halving (num_splits <= 16), in parts that halve: 1/2, 1/4, ..., the last two
    equal (see PagedFwdParams::split_halving).
    Returns out like q with Dv, lse (B, Hq, Sq) or (Hq, Tq) float32. A pinned config.variant that cannot serve
    the call is an error here (sm90 is the Hopper decode, for decode shapes only).
    """
    module = _registered()
    hq, dv = q.shape[-2], v_cache.shape[-1]
    decode = paged_is_decode(cu_seqlens_q is not None, q.shape[1], hq // k_cache.shape[-2])
    _check_variant(module, "paged_decode" if decode else "paged", q.dtype, q.shape[-1], dv, config.variant)
    if cu_seqlens_q is None:
        batch, sq = q.shape[:2]
        rows = batch * sq
        out_types = [jax.ShapeDtypeStruct((batch, sq, hq, dv), q.dtype),
                     jax.ShapeDtypeStruct((batch, hq, sq), jnp.float32)]
    else:
        rows = q.shape[0]
        out_types = [jax.ShapeDtypeStruct((rows, hq, dv), q.dtype), jax.ShapeDtypeStruct((hq, rows), jnp.float32)]
    # fp32 partial outputs and LSEs of the splits (scratch, from XLA's allocator); a placeholder without splits.
    split = num_splits > 1
    out_types += [jax.ShapeDtypeStruct((num_splits, rows, hq, dv) if split else (1,), jnp.float32),
                  jax.ShapeDtypeStruct((num_splits, rows, hq) if split else (1,), jnp.float32)]
    attributes = dict(_attributes(config), num_splits=np.int32(num_splits), split_halving=np.bool_(split_halving))
    if cu_seqlens_q is None:
        call = _vma.ffi_call(PAGED_FWD_TARGET, out_types, vmap_method="sequential")
        out, lse, _, _ = call(q, k_cache, v_cache, page_table, cache_seqlens, **attributes)
    else:
        # max_seqlen_q never sizes work (the tiles come from Tq); it keys the executable like a static arg.
        call = _vma.ffi_call(PAGED_VARLEN_FWD_TARGET, out_types, vmap_method="sequential")
        out, lse, _, _ = call(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q,
                              max_seqlen_q=np.int32(max_seqlen_q if max_seqlen_q is not None else -1),
                              **attributes)
    return out, lse
