"""Static argument checks and the normalized, hashable configuration every attention op carries.

All checks run at trace time on shapes and Python values and raise ValueError/TypeError that name
the argument, its shape and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax.numpy as jnp

from jax_flash._ffi import KERNEL_VARIANTS

SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
MAX_HEAD_DIM = 256


# Pins the kernel variant of every config built while it is set (read at trace time: an executable already
# compiled keeps its variant). Private, for tests and benchmarks; see check_variant.
VARIANT_ENV = "JAX_FLASH_KERNEL_VARIANT"


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Scores s = scale * q.k, capped by softcap; keys visible in [p - window_left, p + window_right]
    around the bottom-right aligned position p of each query (-1 = unbounded). variant: the kernel family the
    CUDA path runs, "auto" (the kernel choice's pick for the device) or a pinned one (check_variant); part of
    the config, hence of the compile key. Left out, it is read from JAX_FLASH_KERNEL_VARIANT when the config
    is built."""

    scale: float
    softcap: float | None
    window_left: int
    window_right: int
    variant: str = dataclasses.field(default_factory=lambda: check_variant(None))

    @property
    def window(self) -> tuple[int, int]:
        return (self.window_left, self.window_right)


def shape_of(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def check_window(window, causal: bool) -> tuple[int, int]:
    """(left, right) with -1 for unbounded; causal=True bounds the right side at 0."""
    if window is None:
        left, right = -1, -1
    else:
        if not (isinstance(window, (tuple, list)) and len(window) == 2):
            raise ValueError(f"window must be None or a pair (left, right), got {window!r}")
        left, right = (-1 if w is None else w for w in window)
        for name, w in (("window[0] (left)", left), ("window[1] (right)", right)):
            if isinstance(w, bool) or not isinstance(w, int):
                raise TypeError(f"{name} must be an int or None, got {type(w).__name__}")
            if w < -1:
                raise ValueError(f"{name} must be >= -1 (-1 means unbounded), got {w}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal:
        right = 0 if right == -1 else min(right, 0)
    return left, right


def check_softcap(softcap) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a positive float or None, got {type(softcap).__name__}")
    if not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be a finite value > 0, got {softcap}")
    return float(softcap)


def check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        # The kernels' running max assumes scores keep their order (scale > 0).
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    return float(scale)


def check_variant(variant) -> str:
    """The kernel variant of a call: `variant` (the ops' private `_variant=` argument) if given, else the
    JAX_FLASH_KERNEL_VARIANT environment variable, else "auto".

    "sm80" pins the portable mma.sync kernels (forward; backward with atomic dQ up to head dim 128), "sm90" the
    Hopper ones (wgmma forward at head dim 128, wgmma dK/dV with atomic dQ, TMA paged decode) where they exist,
    "sm90_ws" the warp-specialized Hopper kernels (the forward at every head dim; dK/dV at every head-dim tile,
    with head_dim == head_dim_v up to 128); the deterministic backward is the
    `deterministic` flag. A pinned variant that cannot
    serve a call (no such kernel for its head dims in this build, not a Hopper) is an error, never a fallback.
    The reference (implementation="xla") ignores it.
    """
    if variant is None:
        name, value = VARIANT_ENV, os.environ.get(VARIANT_ENV) or "auto"
    else:
        name, value = "_variant", variant
    if value not in KERNEL_VARIANTS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, KERNEL_VARIANTS))}, got {value!r}")
    return value


def check_flags(**flags) -> None:
    """Boolean keyword arguments (return_lse, deterministic) must be real bools."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_dtypes(**arrays) -> jnp.dtype:
    dtypes = {name: jnp.dtype(x.dtype) for name, x in arrays.items()}
    first_name, first = next(iter(dtypes.items()))
    for name, dtype in dtypes.items():
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} must be bfloat16 or float16, got {dtype}")
        if dtype != first:
            raise TypeError(f"q, k and v must share one dtype: {first_name} is {first}, {name} is {dtype}")
    return first


def check_head_dims(head_dim: int, head_dim_v: int, shapes: str) -> None:
    for name, d in (("head dim D of q/k", head_dim), ("head dim Dv of v", head_dim_v)):
        if d <= 0 or d % 8 or d > MAX_HEAD_DIM:
            raise ValueError(f"{name} must be a multiple of 8 in [8, {MAX_HEAD_DIM}], got {d} ({shapes})")


def check_dense(q, k, v, *, causal, window, softcap, scale, variant=None) -> AttentionConfig:
    """Checks BSHD q (B, Sq, Hq, D), k (B, Sk, Hk, D), v (B, Sk, Hk, Dv); variant as in check_variant."""
    shapes = f"q {shape_of(q)}, k {shape_of(k)}, v {shape_of(v)}"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(shape_of(x)) != 4:
            raise ValueError(f"{name} must have rank 4 (batch, seq, heads, head_dim), got shape {shape_of(x)}")
    (b, _, _, _), (bk, sk, hk, _), (bv, skv, hkv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv):
        raise ValueError(f"q, k and v must have the same batch size: {shapes}")
    if sk != skv:
        raise ValueError(f"k and v must have the same sequence length: {shapes}")
    if hk != hkv:
        raise ValueError(f"k and v must have the same number of heads: {shapes}")
    return _check_heads_and_attributes(q, k, v, shapes, causal=causal, window=window, softcap=softcap,
                                       scale=scale, variant=variant)


def _check_heads_and_attributes(q, k, v, shapes, *, causal, window, softcap, scale,
                                variant=None) -> AttentionConfig:
    """What dense and packed layouts share: the last two axes are (heads, head_dim)."""
    check_dtypes(q=q, k=k, v=v)
    (hq, d), (hk, dk), dv = q.shape[-2:], k.shape[-2:], v.shape[-1]
    if d != dk:
        raise ValueError(f"q and k must have the same head dim: {shapes}")
    if hk == 0 or hq % hk:
        raise ValueError(f"query heads ({hq}) must be a multiple of kv heads ({hk}): {shapes}")
    check_head_dims(d, dv, shapes)
    left, right = check_window(window, causal)
    return AttentionConfig(scale=check_scale(scale, d), softcap=check_softcap(softcap),
                           window_left=left, window_right=right, variant=check_variant(variant))


def _check_index_array(name, x, length=None):
    if x is None:
        return
    shape = shape_of(x)
    if len(shape) != 1 or (length is not None and shape[0] != length):
        want = f"({length},)" if length is not None else "rank 1"
        raise ValueError(f"{name} must have shape {want}, got {shape}")
    if jnp.dtype(x.dtype) != jnp.dtype(jnp.int32):
        raise TypeError(f"{name} must be int32, got {jnp.dtype(x.dtype)}")


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, seqused_q,
                 seqused_k, causal, window, softcap, scale, variant=None) -> AttentionConfig:
    """Checks packed q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv) and the (N + 1,) / (N,) int32
    index arrays; max_seqlen_* are static (Python int) upper bounds; variant as in check_variant."""
    shapes = f"q {shape_of(q)}, k {shape_of(k)}, v {shape_of(v)}"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if len(shape_of(x)) != 3:
            raise ValueError(f"{name} must have rank 3 (total_tokens, heads, head_dim), got shape {shape_of(x)}")
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k and v must agree on (total_tokens, heads): {shapes}")
    config = _check_heads_and_attributes(q, k, v, shapes, causal=causal, window=window, softcap=softcap,
                                         scale=scale, variant=variant)
    _check_index_array("cu_seqlens_q", cu_seqlens_q)
    _check_index_array("cu_seqlens_k", cu_seqlens_k)
    n1 = shape_of(cu_seqlens_q)[0]
    if n1 < 2 or shape_of(cu_seqlens_k)[0] != n1:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both have shape (N + 1,) with N >= 1, got "
                         f"{shape_of(cu_seqlens_q)} and {shape_of(cu_seqlens_k)}")
    _check_index_array("seqused_q", seqused_q, n1 - 1)
    _check_index_array("seqused_k", seqused_k, n1 - 1)
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise TypeError(f"{name} must be a static Python int >= 0 (an upper bound), got {m!r}")
        if m > 2**31 - 1:
            raise ValueError(f"{name} must fit in int32, got {m}")
    return config


MAX_PAGE_SIZE = 256
MAX_NUM_SPLITS = 256


def _check_static_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a static Python int in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_cache(k_cache, v_cache) -> str:
    """k_cache (P, page_size, Hk, D) and v_cache (P, page_size, Hk, Dv) agree; returns their shapes."""
    shapes = f"k_cache {shape_of(k_cache)}, v_cache {shape_of(v_cache)}"
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if len(shape_of(x)) != 4:
            raise ValueError(f"{name} must have rank 4 (num_pages, page_size, heads, head_dim), got shape "
                             f"{shape_of(x)}")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"k_cache and v_cache must agree on (num_pages, page_size, heads): {shapes}")
    page_size = k_cache.shape[1]
    if page_size % 8 or not 8 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size (axis 1 of k_cache) must be a multiple of 8 in [8, {MAX_PAGE_SIZE}], "
                         f"got {page_size} ({shapes})")
    return shapes


def _check_page_table(page_table, cache_seqlens, batch: int | None) -> int:
    """page_table (B, max_pages) and cache_seqlens (B,) int32; batch None takes B from the page table
    (packed q). Returns B."""
    shape = shape_of(page_table)
    if len(shape) != 2 or (batch is not None and shape[0] != batch):
        want = "(B, max_pages)" if batch is None else f"(B, max_pages) = ({batch}, max_pages)"
        raise ValueError(f"page_table must have shape {want}, got {shape}")
    if jnp.dtype(page_table.dtype) != jnp.dtype(jnp.int32):
        raise TypeError(f"page_table must be int32, got {jnp.dtype(page_table.dtype)}")
    _check_index_array("cache_seqlens", cache_seqlens, shape[0])
    return shape[0]


def _check_cu_seqlens(name, cu_seqlens, batch: int) -> None:
    if batch < 1:
        raise ValueError(f"page_table must have at least one row (sequence) with {name}, got {batch} rows")
    _check_index_array(name, cu_seqlens, batch + 1)


def check_paged(q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, max_seqlen_q, num_splits, *,
                causal, window, softcap, scale) -> AttentionConfig:
    """Checks q (B, Sq, Hq, D) or packed (Tq, Hq, D) with cu_seqlens_q (B + 1,) int32 and a static
    max_seqlen_q; k_cache (P, page_size, Hk, D), v_cache (P, page_size, Hk, Dv); page_table (B, max_pages)
    and cache_seqlens (B,) int32; num_splits None or a static int."""
    packed = cu_seqlens_q is not None
    if packed != (max_seqlen_q is not None):
        raise ValueError("cu_seqlens_q and max_seqlen_q go together: give both for packed q (Tq, Hq, D), "
                         f"neither for dense q (B, Sq, Hq, D); got cu_seqlens_q "
                         f"{'None' if cu_seqlens_q is None else shape_of(cu_seqlens_q)}, max_seqlen_q "
                         f"{max_seqlen_q!r}")
    rank = 3 if packed else 4
    if len(shape_of(q)) != rank:
        layout = "(total_tokens, heads, head_dim) with cu_seqlens_q" if packed else "(batch, seq, heads, head_dim)"
        raise ValueError(f"q must have rank {rank} {layout}, got shape {shape_of(q)}")
    shapes = f"q {shape_of(q)}, " + _check_cache(k_cache, v_cache)
    check_dtypes(q=q, k_cache=k_cache, v_cache=v_cache)  # before the shared check, which says k and v
    config = _check_heads_and_attributes(q, k_cache, v_cache, shapes, causal=causal, window=window,
                                         softcap=softcap, scale=scale)
    batch = _check_page_table(page_table, cache_seqlens, None if packed else q.shape[0])
    if packed:
        _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, batch)
        _check_static_int("max_seqlen_q", max_seqlen_q, 0, 2**31 - 1)
    if num_splits is not None:
        _check_static_int("num_splits", num_splits, 1, MAX_NUM_SPLITS)
    return config


def check_paged_update(k_cache, v_cache, k_new, v_new, page_table, cache_seqlens, cu_seqlens_new) -> None:
    """Checks the caches as check_paged does, new tokens (B, S_new, Hk, D/Dv) or packed (T_new, Hk, D/Dv)
    with cu_seqlens_new (B + 1,) int32, all four arrays of one dtype."""
    _check_cache(k_cache, v_cache)
    if jnp.dtype(k_cache.dtype) != jnp.dtype(v_cache.dtype):
        raise TypeError(f"k_cache and v_cache must share one dtype, got {jnp.dtype(k_cache.dtype)} and "
                        f"{jnp.dtype(v_cache.dtype)}")
    packed = cu_seqlens_new is not None
    rank = 3 if packed else 4
    for name, x, cache in (("k_new", k_new, k_cache), ("v_new", v_new, v_cache)):
        shape = shape_of(x)
        if len(shape) != rank:
            layout = "(total_tokens, heads, head_dim) with cu_seqlens_new" if packed else \
                "(batch, seq, heads, head_dim)"
            raise ValueError(f"{name} must have rank {rank} {layout}, got shape {shape}")
        cache_name = "k_cache" if name == "k_new" else "v_cache"
        if shape[-2:] != cache.shape[-2:]:
            raise ValueError(f"{name} must end in (heads, head_dim) = {cache.shape[-2:]} like {cache_name}, "
                             f"got shape {shape}")
        if jnp.dtype(x.dtype) != jnp.dtype(cache.dtype):
            raise TypeError(f"{name} must have {cache_name}'s dtype {jnp.dtype(cache.dtype)}, got "
                            f"{jnp.dtype(x.dtype)}")
    if k_new.shape[:-1] != v_new.shape[:-1]:
        raise ValueError(f"k_new and v_new must agree on all but the head dim: k_new {shape_of(k_new)}, "
                         f"v_new {shape_of(v_new)}")
    batch = _check_page_table(page_table, cache_seqlens, None if packed else k_new.shape[0])
    if packed:
        _check_cu_seqlens("cu_seqlens_new", cu_seqlens_new, batch)
