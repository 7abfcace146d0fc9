"""Dense (BSHD) attention: argument checks, implementation choice, and the CUDA path's custom_vjp."""

from __future__ import annotations

import functools

import jax

from jax_flash import _ffi, reference
from jax_flash.ops import _sinks
from jax_flash.ops._config import AttentionConfig, check_dense, check_flags
from jax_flash.ops._implementation import choose_implementation
from jax_flash.ops._partition import batch_head_partitioned, fold_vmap
from jax_flash.ops.segments import segmented_attention


def flash_attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
                    return_lse=False, deterministic=False, implementation=None, segment_ids=None,
                    max_segments=None, sinks=None, _variant=None):
    """Multi-head attention softmax(scale * q k^T [capped, masked]) v, FlashAttention style.

    Args:
      q: (B, Sq, Hq, D) bfloat16 or float16.
      k: (B, Sk, Hk, D), same dtype; Hq must be a multiple of Hk (GQA/MQA: query head h reads
        kv head h // (Hq // Hk)).
      v: (B, Sk, Hk, Dv). D and Dv: multiples of 8 up to 256.
      causal: mask keys after each query's position. Masks are bottom-right aligned: query i sits at
        key position i + Sk - Sq.
      window: (left, right) keeps keys in [p - left, p + right] around that position; None or -1 on
        a side means unbounded. Combined with causal, right is at most 0.
      softcap: if set, scores become softcap * tanh(scores / softcap) (forward and backward).
      scale: score scale, default 1 / sqrt(D).
      return_lse: also return the log-sum-exp of the scores, (B, Hq, Sq) float32.
      deterministic: bitwise-repeatable gradients.
      implementation: "cuda" (the kernels; an error where they cannot run), "xla" (the pure-JAX
        reference), or None (cuda when available, else xla).
      segment_ids: documents packed along each row: (B, S) int32 ids (0 = padding) for q and kv alike
        (Sq == Sk), or a pair (q ids (B, Sq), kv ids (B, Sk)). A token attends only inside its own
        document (its run of equal ids), with causal/window applied per document. Runs on the packed
        (varlen) kernels, per device under sharded jit (batch and/or heads split), as one call under
        vmap. See segment_ids_to_varlen.
      max_segments: static bound on documents per row, required with segment_ids; documents beyond it
        are treated as padding (output 0).
      sinks: None or (Hq,) float: attention sinks (gpt-oss), one logit per query head, an extra score
        column that is not scaled or capped, in the softmax normaliser with no value; lse includes it.
        Differentiable (d sinks summed over batch and rows, in sinks' dtype). The forward kernels add the
        sink column in their final normalisation (ops/_sinks.py).
      _variant: private, for tests: pins the CUDA kernel variant ("auto", "sm80", "sm90", "sm90_ws";
        default: the JAX_FLASH_KERNEL_VARIANT environment variable, read at trace time). See
        _config.check_variant.

    Returns:
      out (B, Sq, Hq, Dv) in q's dtype, and lse if asked. A query with no visible key gets out = 0,
      lse = -inf (with sinks: sinks[h]) and zero gradients.
    """
    config = check_dense(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale, variant=_variant)
    _sinks.check_sinks(sinks, q.shape[2])
    if segment_ids is not None:
        return segmented_attention(q, k, v, segment_ids, max_segments, causal=causal, window=window,
                                   softcap=softcap, scale=scale, return_lse=return_lse,
                                   deterministic=deterministic, implementation=implementation,
                                   sinks=sinks, _variant=_variant)
    if max_segments is not None:
        raise ValueError("max_segments is only meaningful with segment_ids")
    check_flags(return_lse=return_lse, deterministic=deterministic)
    impl = choose_implementation(implementation, q.dtype, q.shape[-1], v.shape[-1])
    if impl == "xla":
        out, lse = reference.attention(q, k, v, window=config.window, softcap=config.softcap,
                                       scale=config.scale, return_lse=True, sinks=sinks)
    elif sinks is None:
        out, lse = _cuda_attention(q, k, v, config, deterministic)
    else:
        out, lse = _sinks.attention_with_sinks(_sink_kernels(config, deterministic), sinks, (q, k, v))
    return (out, lse) if return_lse else out


def _fwd_call(q, k, v, config: AttentionConfig):
    return tuple(_ffi.attn_fwd(q, k, v, config))


def _fwd_sinks_call(q, k, v, sinks, config: AttentionConfig):
    return tuple(_ffi.attn_fwd(q, k, v, config, sinks=sinks))


def _bwd_call(q, k, v, out, lse, dout, dlse, static):
    config, deterministic = static
    return tuple(_ffi.attn_bwd(q, k, v, out, lse, dout, dlse, config, deterministic))


_fwd_sharded = fold_vmap(batch_head_partitioned(_fwd_call, ("q", "k", "v"), ("out", "lse")))
# The sinks operand is lse-shaped (_sinks.sink_rows): it shards and folds like lse.
_fwd_sinks_sharded = fold_vmap(batch_head_partitioned(_fwd_sinks_call, ("q", "k", "v", "lse"), ("out", "lse")))
_bwd_sharded = fold_vmap(batch_head_partitioned(
    _bwd_call, ("q", "k", "v", "out", "lse", "out", "lse"), ("q", "k", "v")))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _cuda_attention(q, k, v, config, deterministic):
    return _fwd_sharded(q, k, v, config)


def _cuda_attention_fwd(q, k, v, config, deterministic):
    out, lse = _fwd_sharded(q, k, v, config)
    return (out, lse), (q, k, v, out, lse)


def _cuda_attention_bwd(config, deterministic, residuals, cotangents):
    q, k, v, out, lse = residuals
    dout, dlse = cotangents
    return _bwd_sharded(q, k, v, out, lse, dout.astype(out.dtype), dlse, (config, deterministic))


_cuda_attention.defvjp(_cuda_attention_fwd, _cuda_attention_bwd)


def _sink_kernels(config, deterministic):
    """The kernels for _sinks.attention_with_sinks: forward with the sinks, backward from out' and lse'."""
    def fwd(sinks, q, k, v):
        batch, sq, hq, _ = q.shape
        return _fwd_sinks_sharded(q, k, v, _sinks.sink_rows(sinks, (batch, hq, sq)), config)

    def bwd(operands, out, lse, dout, dlse):
        return _bwd_sharded(*operands, out, lse, dout.astype(out.dtype), dlse, (config, deterministic))

    return _sinks.Kernels(fwd, bwd, fused=True)
