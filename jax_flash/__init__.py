"""jax_flash: FlashAttention-class CUDA kernels for JAX, with a pure-JAX reference everywhere else.

Public API (see README.md and each function's docstring for shapes and semantics):
  flash_attention(q, k, v, ...)      dense BSHD attention, forward and backward
  flash_attention_varlen(...)        packed (THD) sequences, forward and backward
  paged_attention(q, k_cache, ...)   attention over a paged KV cache (decode, chunked prefill), forward only
  paged_kv_update(k_cache, ...)      write new tokens into a paged cache (in place when the caches are donated)
  segment_ids_to_varlen(ids, n)      (B, S) segment ids -> cu_seqlens / seqused of the flattened rows
  dot_product_attention(...)         jax.nn.dot_product_attention's signature and semantics, on the kernels
  reference                          the pure-JAX definition of every op (CPU/TPU path, test oracle)
  parallel                           context parallelism on shard_map: ring and all-to-all (Ulysses) attention
  cuda_available()                   can the kernels run here?
"""

from jax_flash import reference
from jax_flash._ffi import unavailable_reason as _unavailable_reason
from jax_flash.ops import (flash_attention, flash_attention_varlen, paged_attention, paged_kv_update,
                           segment_ids_to_varlen)
from jax_flash.ops.nn_compat import dot_product_attention
from jax_flash import parallel  # noqa: E402  (after ops: it builds on them)

__all__ = ["flash_attention", "flash_attention_varlen", "paged_attention", "paged_kv_update",
           "segment_ids_to_varlen", "dot_product_attention", "reference", "parallel", "cuda_available"]
__version__ = "0.1.0"


def cuda_available() -> bool:
    """True when the CUDA extension is built and a GPU is visible to JAX."""
    return _unavailable_reason() is None
