"""Variable-length packed (THD) attention: argument checks and implementation choice.

Only the reference implementation exists so far; the CUDA kernels take packed sequences in a later
step (their SeqlenInfo has the hook), and asking for them is an error until then.
"""

from __future__ import annotations

from jax_flash import reference
from jax_flash.ops._config import check_flags, check_varlen

_CUDA_NOT_YET = "the CUDA kernels do not take packed (varlen) sequences yet; use implementation='xla'"


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                           seqused_q=None, seqused_k=None, causal=False, window=None, softcap=None,
                           scale=None, return_lse=False, deterministic=False, implementation=None):
    """Attention over sequences packed along one token axis (THD layout).

    Args:
      q: (Tq, Hq, D); k: (Tk, Hk, D); v: (Tk, Hk, Dv); bfloat16 or float16, Hq a multiple of Hk.
      cu_seqlens_q, cu_seqlens_k: (N + 1,) int32 device arrays: sequence i owns query rows
        [cu_seqlens_q[i], cu_seqlens_q[i + 1]) and key rows likewise.
      max_seqlen_q, max_seqlen_k: Python ints, static upper bounds on the sequence lengths.
      seqused_q, seqused_k: optional (N,) int32: rows of sequence i actually used, counted from
        cu_seqlens[i]; the rest of its span is padding.
      causal, window, softcap, scale, deterministic: as in flash_attention, per sequence (masks are
        bottom-right aligned with each sequence's used lengths).
      return_lse: also return lse (Hq, Tq) float32.
      implementation: "xla" (the reference) or None; "cuda" is not available for packed input yet.

    Returns:
      out (Tq, Hq, Dv) [, lse]. Padding rows, rows after cu_seqlens_q[-1] and rows with no visible key
      get out 0, lse -inf and zero gradients.
    """
    config = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          seqused_q=seqused_q, seqused_k=seqused_k, causal=causal, window=window,
                          softcap=softcap, scale=scale)
    check_flags(return_lse=return_lse, deterministic=deterministic)
    if implementation == "cuda":
        raise ValueError(f"implementation='cuda' cannot run: {_CUDA_NOT_YET}")
    if implementation not in (None, "xla"):
        raise ValueError(f"implementation must be None, 'cuda' or 'xla', got {implementation!r}")
    out, lse = reference.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_q=seqused_q,
                                          seqused_k=seqused_k, window=config.window,
                                          softcap=config.softcap, scale=config.scale, return_lse=True)
    return (out, lse) if return_lse else out
