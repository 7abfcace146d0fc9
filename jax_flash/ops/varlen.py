"""Variable-length packed (THD) attention: argument checks, implementation choice, and the CUDA path's
custom_vjp.

The kernels are the dense ones: a packed call only changes where each sequence's rows live and how
CTAs find their tiles (cuda/kernels/block_info.h). Under sharded jit the kernels run per device on the
heads' shards (tokens and offsets whole); under vmap the elements' sequences make one packed call
(ops/_partition.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_flash import _ffi, reference
from jax_flash.ops import _sinks
from jax_flash.ops._config import check_flags, check_varlen
from jax_flash.ops._implementation import choose_implementation
from jax_flash.ops._partition import batch_head_partitioned, concat_vmap


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                           seqused_q=None, seqused_k=None, causal=False, window=None, softcap=None,
                           scale=None, return_lse=False, deterministic=False, implementation=None,
                           sinks=None, _variant=None):
    """Attention over sequences packed along one token axis (THD layout).

    Args:
      q: (Tq, Hq, D); k: (Tk, Hk, D); v: (Tk, Hk, Dv); bfloat16 or float16, Hq a multiple of Hk.
      cu_seqlens_q, cu_seqlens_k: (N + 1,) int32 device arrays, non-decreasing: sequence i owns query
        rows [cu_seqlens_q[i], cu_seqlens_q[i + 1]) and key rows likewise. Values are read on the device
        and clamped to [0, T]; decreasing offsets give unspecified (but memory-safe) results.
      max_seqlen_q, max_seqlen_k: Python ints, static upper bounds on the sequence lengths. A different
        value compiles a different executable; the kernels never rely on it, so a wrong bound cannot
        make them skip rows or read out of bounds.
      seqused_q, seqused_k: optional (N,) int32: rows of sequence i actually used, counted from
        cu_seqlens[i]; the rest of its span is padding.
      causal, window, softcap, scale, deterministic: as in flash_attention, per sequence (masks are
        bottom-right aligned with each sequence's used lengths).
      return_lse: also return lse (Hq, Tq) float32.
      implementation: "cuda", "xla" (the reference) or None (cuda when available), as in flash_attention.
      sinks: None or (Hq,) float attention sinks, as in flash_attention.
      _variant: private, for tests: pins the CUDA kernel variant, as in flash_attention.

    Returns:
      out (Tq, Hq, Dv) [, lse]. Padding rows, rows before cu_seqlens_q[0] or after cu_seqlens_q[-1] and
      rows with no visible key get out 0, lse -inf (with sinks: sinks[h]) and zero gradients; so do key rows
      outside every sequence (zero dk, dv).

    Under vmap the CUDA path makes one kernel call over every element's sequences (tokens concatenated,
    offsets shifted), forward and backward. Under sharded jit with q, k, v split over heads (an even split
    of both head axes) and the offsets replicated, each device runs the kernels on its heads; the token axis
    stays whole on every device.
    """
    config = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          seqused_q=seqused_q, seqused_k=seqused_k, causal=causal, window=window,
                          softcap=softcap, scale=scale, variant=_variant)
    check_flags(return_lse=return_lse, deterministic=deterministic)
    _sinks.check_sinks(sinks, q.shape[1])
    impl = choose_implementation(implementation, q.dtype, q.shape[-1], v.shape[-1])
    if impl == "xla":
        out, lse = reference.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q=seqused_q,
                                              seqused_k=seqused_k, window=config.window,
                                              softcap=config.softcap, scale=config.scale, return_lse=True,
                                              sinks=sinks)
    else:
        # The kernels always take seqused; a sequence's whole span is the same as no seqused.
        used_q = _spans(cu_seqlens_q) if seqused_q is None else seqused_q
        used_k = _spans(cu_seqlens_k) if seqused_k is None else seqused_k
        static = (config, max_seqlen_q, max_seqlen_k, deterministic)
        operands = (q, k, v, cu_seqlens_q, cu_seqlens_k, used_q, used_k)
        if sinks is None:
            out, lse = _cuda_varlen(*operands, static)
        else:
            out, lse = _sinks.attention_with_sinks(_sink_kernels(static), sinks, operands)
    return (out, lse) if return_lse else out


def _spans(cu_seqlens):
    return cu_seqlens[1:] - cu_seqlens[:-1]


_ARGS = ("packed_q", "packed_k", "packed_v", "cu_q", "cu_k", "used_q", "used_k")
_FWD_OUTS = ("packed_out", "packed_lse")
_BWD_ARGS = ("packed_q", "packed_k", "packed_v", "packed_out", "packed_lse", "packed_out", "packed_lse", "cu_q",
             "cu_k", "used_q", "used_k")
_BWD_OUTS = ("packed_q", "packed_k", "packed_v")


def _fwd_call(q, k, v, cu_q, cu_k, used_q, used_k, static):
    config, max_q, max_k = static
    return tuple(_ffi.attn_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k))


def _fwd_sinks_call(q, k, v, cu_q, cu_k, used_q, used_k, sinks, static):
    config, max_q, max_k = static
    return tuple(_ffi.attn_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, config, max_q, max_k, sinks=sinks))


def _bwd_call(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, static):
    config, max_q, max_k, deterministic = static
    return tuple(_ffi.attn_varlen_bwd(q, k, v, out, lse, dout, dlse, cu_q, cu_k, used_q, used_k, config,
                                      deterministic, max_q, max_k))


# Per device under sharded jit (heads split, tokens and offsets whole), one call over all elements under vmap.
_fwd = concat_vmap(batch_head_partitioned(_fwd_call, _ARGS, _FWD_OUTS), _ARGS, _FWD_OUTS)
# The sinks operand is lse-shaped (_sinks.sink_rows): it shards and concatenates like lse.
_SINKS_ARGS = (*_ARGS, "packed_lse")
_fwd_sinks = concat_vmap(batch_head_partitioned(_fwd_sinks_call, _SINKS_ARGS, _FWD_OUTS), _SINKS_ARGS, _FWD_OUTS)
_bwd = concat_vmap(batch_head_partitioned(_bwd_call, _BWD_ARGS, _BWD_OUTS), _BWD_ARGS, _BWD_OUTS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _cuda_varlen(q, k, v, cu_q, cu_k, used_q, used_k, static):
    return _fwd(q, k, v, cu_q, cu_k, used_q, used_k, static[:3])


def _cuda_varlen_fwd(q, k, v, cu_q, cu_k, used_q, used_k, static):
    out, lse = _fwd(q, k, v, cu_q, cu_k, used_q, used_k, static[:3])
    return (out, lse), (q, k, v, out, lse, cu_q, cu_k, used_q, used_k)


def _cuda_varlen_bwd(static, residuals, cotangents):
    q, k, v, out, lse, cu_q, cu_k, used_q, used_k = residuals
    dout, dlse = cotangents
    dq, dk, dv = _bwd(q, k, v, out, lse, dout.astype(out.dtype), dlse.astype(jnp.float32), cu_q, cu_k, used_q,
                      used_k, static)
    # The index arrays are integers: no cotangent.
    return dq, dk, dv, None, None, None, None


_cuda_varlen.defvjp(_cuda_varlen_fwd, _cuda_varlen_bwd)


def _sink_kernels(static):
    """The kernels for _sinks.attention_with_sinks: forward with the sinks, backward from out' and lse'."""
    def fwd(sinks, *operands):
        q = operands[0]
        rows = _sinks.sink_rows(sinks, (q.shape[1], q.shape[0]))
        out, lse = _fwd_sinks(*operands, rows, static[:3])
        # Rows outside every sequence see no key: their lse is the sink, as the reference has it (d sinks then
        # counts their dlse). The kernels' padding fill leaves them -inf; rows inside already hold the sink.
        return out, jnp.where(lse == -jnp.inf, rows, lse)

    def bwd(operands, out, lse, dout, dlse):
        q, k, v, cu_q, cu_k, used_q, used_k = operands
        grads = _bwd(q, k, v, out, lse, dout.astype(out.dtype), dlse.astype(jnp.float32), cu_q, cu_k, used_q,
                     used_k, static)
        return (*grads, None, None, None, None)  # the index arrays are integers: no cotangent

    return _sinks.Kernels(fwd, bwd, fused=True)
