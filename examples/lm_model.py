"""A small decoder-only transformer LM in plain JAX whose attention is jax_flash.flash_attention.

Parameters are a nested dict of arrays (a pytree); nothing beyond jax is needed. The pieces are separate
functions (embed, qkv, attention output, mlp, logits) so that other examples, e.g. a server with a KV cache,
can reuse them around a different attention call.

Shapes: tokens (B, S) int32; activations (B, S, d_model); q (B, S, n_heads, head_dim),
k/v (B, S, n_kv_heads, head_dim) -- the BSHD layout jax_flash takes, with grouped-query attention.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

import jax_flash


class Config(NamedTuple):
    vocab: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 256
    max_seq: int = 64  # longest sequence served (sizes a KV cache); rotary positions need no table
    attn_dtype: str = "bfloat16"  # flash attention takes fp16/bf16; the rest of the model is float32

    @property
    def head_dim(self):
        return self.d_model // self.n_heads


def init_params(key, cfg: Config):
    """Random parameters: {"embed", "layers": [...], "norm", "unembed"}."""
    if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"need d_model % n_heads == 0 and n_heads % n_kv_heads == 0, got {cfg}")
    keys = iter(jax.random.split(key, 2 + 6 * cfg.n_layers))

    def dense(fan_in, fan_out):
        return jax.random.normal(next(keys), (fan_in, fan_out), jnp.float32) / jnp.sqrt(fan_in)

    kv_width = cfg.n_kv_heads * cfg.head_dim
    layers = [
        {
            "attn_norm": jnp.ones((cfg.d_model,)),
            "wq": dense(cfg.d_model, cfg.d_model),
            "wk": dense(cfg.d_model, kv_width),
            "wv": dense(cfg.d_model, kv_width),
            "wo": dense(cfg.d_model, cfg.d_model) / jnp.sqrt(2.0 * cfg.n_layers),
            "mlp_norm": jnp.ones((cfg.d_model,)),
            "w_in": dense(cfg.d_model, cfg.d_ff),
            "w_out": dense(cfg.d_ff, cfg.d_model) / jnp.sqrt(2.0 * cfg.n_layers),
        }
        for _ in range(cfg.n_layers)
    ]
    return {
        "embed": jax.random.normal(next(keys), (cfg.vocab, cfg.d_model)),
        "layers": layers,
        "norm": jnp.ones((cfg.d_model,)),
        # small output weights: the initial loss starts near log(vocab)
        "unembed": dense(cfg.d_model, cfg.vocab) * 0.01,
    }


def rms_norm(x, weight, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def embed(params, tokens):
    """tokens (B, S) int -> (B, S, d_model). Positions enter through rotary embeddings in qkv()."""
    return params["embed"][tokens]


def rope(x, positions, base=10000.0):
    """Rotary position embedding of x (B, S, H, hd) at positions (S,) or (B, S)."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs  # (.., S, half)
    angles = jnp.broadcast_to(angles, x.shape[:2] + (half,))[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def qkv(layer, x, positions, cfg: Config):
    """x (B, S, d_model), positions (S,) or (B, S) -> q (B, S, n_heads, hd), k and v (B, S, n_kv_heads, hd).

    q and k carry rotary position embeddings; all three are cast to cfg.attn_dtype.
    """
    b, s, _ = x.shape
    h = rms_norm(x, layer["attn_norm"])
    q = rope((h @ layer["wq"]).reshape(b, s, cfg.n_heads, cfg.head_dim), positions)
    k = rope((h @ layer["wk"]).reshape(b, s, cfg.n_kv_heads, cfg.head_dim), positions)
    v = (h @ layer["wv"]).reshape(b, s, cfg.n_kv_heads, cfg.head_dim)
    return tuple(t.astype(cfg.attn_dtype) for t in (q, k, v))


def attention_output(layer, x, attn):
    """Residual add of the attention result attn (B, S, n_heads, hd) projected back to d_model."""
    b, s = attn.shape[:2]
    return x + attn.reshape(b, s, -1).astype(x.dtype) @ layer["wo"]


def mlp(layer, x):
    h = rms_norm(x, layer["mlp_norm"])
    return x + jax.nn.gelu(h @ layer["w_in"]) @ layer["w_out"]


def logits(params, x):
    """(B, S, d_model) -> (B, S, vocab)."""
    return rms_norm(x, params["norm"]) @ params["unembed"]


def forward(params, tokens, cfg: Config, *, implementation=None, attend=None):
    """tokens (B, S) -> logits (B, S, vocab) under causal self-attention.

    attend(q, k, v) -> out replaces the attention call; by default it is
    jax_flash.flash_attention(q, k, v, causal=True, implementation=implementation).
    """
    if attend is None:
        attend = functools.partial(_flash_causal, implementation=implementation)
    positions = jnp.arange(tokens.shape[1])
    x = embed(params, tokens)
    for layer in params["layers"]:
        x = attention_output(layer, x, attend(*qkv(layer, x, positions, cfg)))
        x = mlp(layer, x)
    return logits(params, x)


def _flash_causal(q, k, v, *, implementation):
    return jax_flash.flash_attention(q, k, v, causal=True, implementation=implementation)


def loss_fn(params, tokens, loss_mask, cfg: Config, *, implementation=None):
    """Mean next-token cross entropy over positions where loss_mask (B, S-1) is true."""
    out = forward(params, tokens[:, :-1], cfg, implementation=implementation)
    logp = jax.nn.log_softmax(out, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1)
