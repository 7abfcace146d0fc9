"""jax.nn.dot_product_attention's signature and semantics, on the jax_flash kernels where they express the call.

jax.nn aligns its causal and window masks top-left (query i sits at key position i whatever T and S are) and
treats sequence lengths as right padding; the kernels align bottom-right per sequence (query i of a sequence
with sq queries and sk keys sits at key i + sk - sq). A call is translated into one kernel call (a plan):

- "dense": no lengths. A top-left mask is a bottom-right one shifted by a constant: the keys no query can see
  are sliced off and the window moved by the offset that remains.
- "packed": lengths as used rows of packed sequences (cu_seqlens / seqused), when the alignment needs no
  per-sequence shift: no causal or window mask, or one lengths array for queries and keys alike with T == S.
- "flipped": the other masked calls: causal or window masks with lengths, and windows whose left side leaves
  the last queries past the last key (T > S). Reversing both sequence axes turns top-left alignment into
  bottom-right with the window's sides swapped, for any lengths; each sequence's used rows then end its slab
  and are addressed by offsets. Costs a reversed copy of query, key, value and the output.

Rows where jax.nn masks every key get jax.nn's value there: its masked logits are a large finite negative, so
the softmax is uniform and the row is the mean of all S value rows (zero beyond query_seq_lengths).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jax_flash.ops._config import MAX_HEAD_DIM, SUPPORTED_DTYPES
from jax_flash.ops._implementation import choose_implementation
from jax_flash.ops.dense import flash_attention
from jax_flash.ops.varlen import flash_attention_varlen

# jax.nn's logit for a masked position with float32 logits (bf16 / fp16 inputs): -0.7 * float32 max.
_MASKED_LOGIT = np.float32(-0.7 * np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """How one call runs on the kernels.

    layout: "dense", "packed" or "flipped" (module docstring).
    window: the kernels' bottom-right aligned (left, right), -1 = unbounded.
    keys: "dense" only: the prefix of the S keys the kernel reads (the rest no query sees).
    left: jax.nn's left window side after causal / clipping (None = unbounded), for the rows that see no key.
    scale: the score scale.
    """

    layout: str
    window: tuple[int, int]
    keys: int
    left: int | None
    scale: float


def dot_product_attention(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False,
                          query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
                          implementation=None, return_residual=False):
    """A drop-in for jax.nn.dot_product_attention: the same arguments, shapes and results, on the jax_flash
    kernels wherever they can express the call, and on jax.nn's XLA path otherwise.

    B batch, T queries, S keys, N query heads, K kv heads (N a multiple of K), H head dim.

    Args:
      query: (B, T, N, H) or (T, N, H). Kernels: bfloat16 / float16, H a multiple of 8 up to 256 with a
        built tile. Other dtypes (float32, ...) and head dims run on XLA.
      key: (B, S, K, H) or (S, K, H), query's dtype. Query head n reads kv head n // (N // K), on the
        kernels as in jax.nn.
      value: key's shape and dtype.
      bias: added to the scores, broadcastable to (B, N, T, S) (rank < 4 gets leading axes). Not on the
        kernels: a call with a bias runs on XLA (gradient with respect to it included).
      mask: boolean, True = attend, broadcastable like bias. Not on the kernels: runs on XLA.
      scale: score scale, default 1 / sqrt(H). Kernels: a positive finite Python or numpy number; a traced
        or non-positive scale runs on XLA.
      is_causal: query i sees keys j <= i, top-left aligned as in jax.nn (for T != S too). Kernels.
      query_seq_lengths: (B,) int32; query rows at or beyond it are right padding, with output 0 (as in
        jax.nn). Kernels: the packed path (each batch row a sequence, its length the used rows).
      key_value_seq_lengths: (B,) int32; keys at or beyond it are never seen. Kernels, as above.
      local_window_size: int w (= (w, w)) or (left, right): query i sees keys j with
        i - left <= j <= i + right, top-left aligned as in jax.nn, combined with is_causal. Kernels when
        both sides are >= 0 (after causal); a side below 0 runs on XLA.
      implementation: None: the kernels where the call is expressible and they can run here (a CUDA GPU,
        the extension built for this dtype and head dim), else jax.nn's XLA path. "cuda": the kernels, or
        ValueError saying why they cannot run the call. "xla": jax.nn's XLA path. "cudnn": passed to
        jax.nn.dot_product_attention(implementation="cudnn") unchanged (its rules and errors).
      return_residual: also return the log-sum-exp of the masked scores, (B, T, N) or (T, N) in key's
        dtype, as jax.nn does (a row that sees no key gets jax.nn's value there). No gradient flows
        through it.

    Returns:
      The attention output, query's shape and dtype [, the residual].

    Rows with no visible key follow jax.nn: inside query_seq_lengths, the mean of all S value rows (jax.nn
    masks with a large finite negative, so its softmax is uniform); beyond it, 0. Calls on the kernels need
    O(T + S) memory and skip masked key blocks. Causal or window masks combined with lengths (unless one
    array is passed as both lengths and T == S), and windows whose left side leaves queries past the last key,
    run on reversed sequences: one reversed copy of query, key, value and the output each way.
    """
    if implementation not in (None, "cuda", "xla", "cudnn"):
        raise ValueError(f"implementation must be None, 'cuda', 'xla' or 'cudnn', got {implementation!r}")
    jax_nn = functools.partial(jax.nn.dot_product_attention, query, key, value, bias, mask, scale=scale,
                               is_causal=is_causal, query_seq_lengths=query_seq_lengths,
                               key_value_seq_lengths=key_value_seq_lengths,
                               local_window_size=local_window_size, return_residual=return_residual)
    if implementation in ("xla", "cudnn"):
        return jax_nn(implementation=implementation)
    arrays, plan = plan_call(query, key, value, bias, mask, scale=scale, is_causal=is_causal,
                             query_seq_lengths=query_seq_lengths, key_value_seq_lengths=key_value_seq_lengths,
                             local_window_size=local_window_size)
    if isinstance(plan, str):
        if implementation == "cuda":
            raise ValueError(f"implementation='cuda' cannot express this call: {plan}")
        return jax_nn(implementation="xla")
    head_dim = arrays[0].shape[-1]
    if choose_implementation(implementation, arrays[0].dtype, head_dim, head_dim) == "xla":
        return jax_nn(implementation="xla")
    return run_plan(plan, *arrays, implementation="cuda", out_shape=jnp.shape(query),
                    return_residual=return_residual)


def plan_call(query, key, value, bias=None, mask=None, *, scale=None, is_causal=False, query_seq_lengths=None,
              key_value_seq_lengths=None, local_window_size=None):
    """Checks the arguments as jax.nn does and plans the kernel call.

    Returns ((query, key, value, query_seq_lengths, key_value_seq_lengths) as rank-4 / (B,) arrays, plan):
    plan is a KernelPlan, or a string saying why the kernels cannot express the call."""
    same_lengths = query_seq_lengths is not None and query_seq_lengths is key_value_seq_lengths
    query, key, value, bias, mask, q_lengths, kv_lengths = _checked(
        query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths)
    plan = kernel_plan(query.shape, key.shape, query.dtype, has_bias=bias is not None, has_mask=mask is not None,
                       scale=scale, is_causal=is_causal, has_q_lengths=q_lengths is not None,
                       has_kv_lengths=kv_lengths is not None, same_lengths=same_lengths,
                       local_window_size=local_window_size)
    return (query, key, value, q_lengths, kv_lengths), plan


def _to_rank4(x):
    """jax.nn's rule: arrays of rank < 4 get leading axes of size 1."""
    x = jnp.asarray(x)
    return x.reshape((1,) * (4 - x.ndim) + x.shape) if x.ndim < 4 else x


def _checked(query, key, value, bias, mask, query_seq_lengths, key_value_seq_lengths):
    """jax.nn's argument checks (the same conditions, messages naming the argument); arrays at rank 4."""
    query, key, value = _to_rank4(query), _to_rank4(key), _to_rank4(value)
    bias = None if bias is None else _to_rank4(bias)
    mask = None if mask is None else _to_rank4(mask)
    if key.ndim != 4:
        raise ValueError(f"key must have rank 4 (B, S, K, H) or 3 (S, K, H), got shape {key.shape}")
    batch, _, kv_heads, head_dim = key.shape
    if value.shape != key.shape or value.dtype != key.dtype:
        raise ValueError(f"value must have key's shape {key.shape} and dtype {key.dtype}, got {value.shape} "
                         f"{value.dtype}")
    if query.ndim != 4 or query.shape[0] != batch or query.shape[3] != head_dim or query.dtype != key.dtype:
        raise ValueError(f"query must have shape (B, T, N, H) = ({batch}, T, N, {head_dim}) and dtype "
                         f"{key.dtype} to match key {key.shape}, got {query.shape} {query.dtype}")
    if mask is not None and (mask.ndim != 4 or mask.dtype != np.dtype(bool)):
        raise ValueError(f"mask must be a boolean array of rank <= 4, got {mask.shape} {mask.dtype}")
    if bias is not None and bias.ndim != 4:
        raise ValueError(f"bias must have rank <= 4, got shape {bias.shape}")
    lengths = []
    for name, x in (("query_seq_lengths", query_seq_lengths), ("key_value_seq_lengths", key_value_seq_lengths)):
        if x is not None:
            x = jnp.asarray(x)
            if x.shape != (batch,) or x.dtype != np.dtype(np.int32):
                raise ValueError(f"{name} must have shape ({batch},) and dtype int32, got {x.shape} {x.dtype}")
        lengths.append(x)
    if query.shape[2] % kv_heads:
        raise ValueError(f"query heads ({query.shape[2]}) must be a multiple of key/value heads ({kv_heads})")
    return (query, key, value, bias, mask, *lengths)


def _static_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def kernel_plan(query_shape, key_shape, dtype, *, has_bias=False, has_mask=False, scale=None, is_causal=False,
                has_q_lengths=False, has_kv_lengths=False, same_lengths=False, local_window_size=None):
    """The KernelPlan for a call with these rank-4 shapes and static arguments, or a string saying why the
    kernels cannot express it."""
    _, t, _, head_dim = query_shape
    s = key_shape[1]
    if has_bias:
        return "a bias is added to the scores, which the kernels do not take"
    if has_mask:
        return "an arbitrary boolean mask, which the kernels do not take"
    if jnp.dtype(dtype) not in SUPPORTED_DTYPES:
        return f"dtype {jnp.dtype(dtype)} (the kernels take bfloat16 and float16)"
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        return f"head dim {head_dim} (the kernels take multiples of 8 up to {MAX_HEAD_DIM})"
    if t == 0 or s == 0:
        return f"an empty sequence axis (T={t}, S={s})"
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (math.isfinite(scale) and scale > 0):
        return f"scale {scale!r} (the kernels take a static positive finite number)"
    if local_window_size is None:
        left, right = None, None
    elif _static_int(local_window_size):
        left, right = int(local_window_size), int(local_window_size)
    elif (isinstance(local_window_size, (tuple, list)) and len(local_window_size) == 2
          and all(_static_int(w) for w in local_window_size)):
        left, right = (int(w) for w in local_window_size)
    else:
        return f"local_window_size {local_window_size!r} (the kernels take static ints)"
    if is_causal:
        right = 0 if right is None else min(right, 0)
    if (left is not None and left < 0) or (right is not None and right < 0):
        return f"a window side below 0 (left {left}, right {right}): the query's own position is masked"
    # Sides that reach past every key are unbounded (and keep the kernels' window attributes small).
    left = None if left is not None and left >= t - 1 else left
    right = None if right is not None and right >= s - 1 else right
    plan = dict(keys=s, left=left, scale=float(scale))
    lengths = has_q_lengths or has_kv_lengths
    if left is None and right is None:
        return KernelPlan("packed" if lengths else "dense", (-1, -1), **plan)
    # Reversed sequences: jax.nn's right side becomes the kernels' left.
    flipped = KernelPlan("flipped", (-1 if right is None else right, -1 if left is None else left), **plan)
    if lengths:
        if same_lengths and t == s:  # each sequence has as many keys as queries: top-left is bottom-right
            return KernelPlan("packed", (-1 if left is None else left, -1 if right is None else right), **plan)
        return flipped
    # Dense: keys past T - 1 + right are never seen; with `keys` kept, the kernels put query i at key
    # i + offset, so the window moves by -offset.
    keys = s if right is None else min(s, t + right)
    offset = keys - t
    if left is not None and left + offset < 0:
        return flipped
    window = (-1 if left is None else left + offset, -1 if right is None else right - offset)
    return KernelPlan("dense", window, **dict(plan, keys=keys))


def run_plan(plan: KernelPlan, query, key, value, q_lengths, kv_lengths, *, implementation, out_shape,
             return_residual=False):
    """The output (reshaped to out_shape) [and jax.nn's residual] from plan_call's arrays, on jax_flash's ops
    run with `implementation` ("cuda": the kernels; "xla": jax_flash's reference, which is how the CPU
    tests check the translation)."""
    batch, t, heads, head_dim = query.shape
    s = key.shape[1]
    used_q = jnp.full((batch,), t, jnp.int32) if q_lengths is None else jnp.clip(q_lengths, 0, t)
    used_k = jnp.full((batch,), s, jnp.int32) if kv_lengths is None else jnp.clip(kv_lengths, 0, s)
    if plan.layout == "dense":
        keys = slice(0, plan.keys)
        out, lse = flash_attention(query, key[:, keys], value[:, keys], window=plan.window, scale=plan.scale,
                                   return_lse=True, implementation=implementation)
        lse = lse.transpose(0, 2, 1)
    else:
        flip = plan.layout == "flipped"
        rows = lambda x: (x[:, ::-1] if flip else x).reshape((-1, *x.shape[2:]))  # noqa: E731
        out, lse = flash_attention_varlen(
            rows(query), rows(key), rows(value), _offsets(used_q, t, flip), _offsets(used_k, s, flip), t, s,
            seqused_q=used_q, seqused_k=used_k, window=plan.window, scale=plan.scale, return_lse=True,
            implementation=implementation)
        out = out.reshape(query.shape)
        lse = lse.reshape((heads, batch, t)).transpose(1, 2, 0)
        if flip:
            out, lse = out[:, ::-1], lse[:, ::-1]
    if _may_see_no_key(plan, t, s, kv_lengths is not None):
        out = _rows_without_keys_as_jax_nn(out, value, used_q, used_k, plan.left)
    out = out.reshape(out_shape)
    if not return_residual:
        return out
    residual = jnp.where(jnp.isfinite(lse), lse, _MASKED_LOGIT + np.float32(math.log(s)))
    return out, jax.lax.stop_gradient(residual.astype(key.dtype)).reshape(out_shape[:-1])


def _offsets(used, length: int, flip: bool):
    """cu_seqlens of batch rows laid out one slab of `length` rows each: a sequence's used rows start its
    slab, or end it when the slab is reversed."""
    starts = jnp.arange(used.shape[0], dtype=jnp.int32) * length
    if flip:
        starts = starts + length - used
    return jnp.concatenate([starts, jnp.array([used.shape[0] * length], jnp.int32)])


def _may_see_no_key(plan: KernelPlan, t: int, s: int, has_kv_lengths: bool) -> bool:
    """Can a query row inside its length see no key? With a key length of 0, or a left window side that
    leaves the last queries past the last key."""
    return has_kv_lengths or (plan.left is not None and t - 1 - plan.left > s - 1)


def _rows_without_keys_as_jax_nn(out, value, used_q, used_k, left):
    """Rows below their query length that see no key get jax.nn's uniform softmax over all S keys: the mean
    of value per kv head (the kernels give them 0)."""
    t = out.shape[1]
    row = jnp.arange(t)[None, :]
    no_key = used_k[:, None] < 1
    if left is not None:
        no_key = no_key | (row - left > used_k[:, None] - 1)
    no_key = no_key & (row < used_q[:, None])
    groups = out.shape[2] // value.shape[2]
    mean = jnp.repeat(jnp.mean(value.astype(jnp.float32), axis=1), groups, axis=1).astype(out.dtype)
    return jnp.where(no_key[:, :, None, None], mean[:, None], out)
