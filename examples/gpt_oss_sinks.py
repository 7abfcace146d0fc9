"""A gpt-oss-style decoder stack with attention sinks, trained a few steps: causal layers alternating a sliding
window of 128 tokens with full attention, GQA 64 query heads over 8 kv heads, head dim 64, and a learned sink
logit per query head and layer (jax_flash.flash_attention(..., sinks=)). Before training, each layer kind's
attention is checked against the reference forward and backward (q, k, v and the sinks).

Tiny model and sequence (2 layers, 256 tokens, d_model 128) so that it runs in seconds on a CPU, where the
attention runs on the reference ("xla"); on a GPU with the kernels built it runs on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash
from jax_flash import reference

VOCAB, D_MODEL, N_LAYERS = 64, 128, 2
N_HEADS, N_KV_HEADS, HEAD_DIM = 64, 8, 64
SLIDING_WINDOW = 128  # a query sees itself and the 127 tokens before it
BATCH, SEQ, STEPS, LEARNING_RATE = 2, 256, 8, 3e-3


def layer_window(layer: int):
    """Even layers slide a window of SLIDING_WINDOW tokens, odd ones attend to the whole prefix."""
    return (SLIDING_WINDOW - 1, 0) if layer % 2 == 0 else None


def init_params(key):
    def dense(key, fan_in, fan_out):
        return jax.random.normal(key, (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in)

    keys = iter(jax.random.split(key, 2 + 6 * N_LAYERS))
    layers = []
    for _ in range(N_LAYERS):
        layers.append(dict(
            wq=dense(next(keys), D_MODEL, N_HEADS * HEAD_DIM), wk=dense(next(keys), D_MODEL, N_KV_HEADS * HEAD_DIM),
            wv=dense(next(keys), D_MODEL, N_KV_HEADS * HEAD_DIM), wo=dense(next(keys), N_HEADS * HEAD_DIM, D_MODEL),
            w_up=dense(next(keys), D_MODEL, 4 * D_MODEL), w_down=dense(next(keys), 4 * D_MODEL, D_MODEL),
            sinks=jnp.zeros((N_HEADS,), jnp.float32)))
    return dict(embed=jax.random.normal(next(keys), (VOCAB, D_MODEL)) * 0.02,
                unembed=dense(next(keys), D_MODEL, VOCAB), layers=layers)


def rms_norm(x):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def attention(layer_params, x, layer: int):
    b, s, _ = x.shape
    h = rms_norm(x)
    q = (h @ layer_params["wq"]).reshape(b, s, N_HEADS, HEAD_DIM).astype(jnp.bfloat16)
    k = (h @ layer_params["wk"]).reshape(b, s, N_KV_HEADS, HEAD_DIM).astype(jnp.bfloat16)
    v = (h @ layer_params["wv"]).reshape(b, s, N_KV_HEADS, HEAD_DIM).astype(jnp.bfloat16)
    out = jax_flash.flash_attention(q, k, v, causal=True, window=layer_window(layer), sinks=layer_params["sinks"])
    return out.reshape(b, s, N_HEADS * HEAD_DIM).astype(jnp.float32) @ layer_params["wo"]


def loss_fn(params, tokens):
    x = params["embed"][tokens[:, :-1]]
    for layer, layer_params in enumerate(params["layers"]):
        x = x + attention(layer_params, x, layer)
        x = x + jax.nn.gelu(rms_norm(x) @ layer_params["w_up"]) @ layer_params["w_down"]
    logits = rms_norm(x) @ params["unembed"]
    targets = tokens[:, 1:]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1))


@jax.jit
def train_step(params, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads), loss


def check_attention_against_reference(layer: int, key):
    """flash_attention with sinks against the float32 reference on the same bfloat16 inputs: out and the
    gradients of q, k, v and the sinks within twice the error of plain bfloat16 attention (plus 2e-3 of the
    magnitude)."""
    kq, kk, kv, ks, kd = jax.random.split(key, 5)
    q = jax.random.normal(kq, (1, SEQ, N_HEADS, HEAD_DIM)).astype(jnp.bfloat16)
    k = jax.random.normal(kk, (1, SEQ, N_KV_HEADS, HEAD_DIM)).astype(jnp.bfloat16)
    v = jax.random.normal(kv, (1, SEQ, N_KV_HEADS, HEAD_DIM)).astype(jnp.bfloat16)
    sinks = jax.random.normal(ks, (N_HEADS,))
    dout = jax.random.normal(kd, (1, SEQ, N_HEADS, HEAD_DIM)).astype(jnp.bfloat16)
    kw = dict(causal=True, window=layer_window(layer))

    def forward_and_grads(attend, q, k, v):
        out, vjp = jax.vjp(lambda q, k, v, s: attend(q, k, v, sinks=s, **kw), q, k, v, sinks)
        return (out, *vjp(dout.astype(out.dtype)))

    ours = jax.jit(lambda q, k, v: forward_and_grads(jax_flash.flash_attention, q, k, v))(q, k, v)
    ref = jax.jit(lambda q, k, v: forward_and_grads(reference.attention, q, k, v))(
        *(x.astype(jnp.float32) for x in (q, k, v)))
    naive = jax.jit(lambda q, k, v: forward_and_grads(reference.naive_attention, q, k, v))(q, k, v)
    for name, a, r, n in zip(("out", "dq", "dk", "dv", "dsinks"), ours, ref, naive):
        a, r, n = (np.asarray(x, np.float64) for x in (a, r, n))
        err, naive_err = np.abs(a - r).max(), np.abs(n - r).max()
        bound = 2 * naive_err + 2e-3 * max(1.0, np.abs(r).max())
        assert np.isfinite(a).all() and err <= bound, f"layer {layer} {name}: {err:.3g} > {bound:.3g}"
    print(f"layer kind {'sliding' if layer % 2 == 0 else 'full'}: attention matches the reference "
          "(out, dq, dk, dv, dsinks)")


def main():
    key = jax.random.PRNGKey(0)
    for layer in range(min(N_LAYERS, 2)):
        check_attention_against_reference(layer, jax.random.fold_in(key, layer))
    params = init_params(key)
    # A learnable pattern: each row repeats a random motif of 8 tokens.
    motifs = jax.random.randint(jax.random.fold_in(key, 99), (BATCH, 8), 0, VOCAB)
    tokens = jnp.tile(motifs, (1, (SEQ + 1) // 8 + 1))[:, :SEQ + 1]
    losses = []
    for step in range(STEPS):
        params, loss = train_step(params, tokens)
        losses.append(float(loss))
        print(f"step {step}: loss {losses[-1]:.4f}")
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    sinks = np.asarray(params["layers"][0]["sinks"])
    assert np.abs(sinks).max() > 0, "the sinks got no gradient"
    print(f"trained: loss {losses[0]:.3f} -> {losses[-1]:.3f}; layer 0 sinks moved to |max| {np.abs(sinks).max():.3g}")


if __name__ == "__main__":
    main()
