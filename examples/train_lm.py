"""Train the small LM of lm_model.py on a synthetic copy task, attention through jax_flash.

    python examples/train_lm.py                      # 100 steps, well under a minute on 2 CPU cores
    python examples/train_lm.py --implementation cuda --steps 300 --seq 512

Each sequence is a random block of `period` tokens repeated to fill the sequence. The first block cannot be
predicted; every later token equals the one `period` positions back, which causal attention can learn to
copy. The loss is taken over the predictable positions only, so it starts near log(vocab) and falls as the
model learns to attend. Exits 1 if the final held-out loss is not below the initial one.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from lm_model import Config, init_params, loss_fn


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64, help="tokens the model sees per sequence")
    p.add_argument("--period", type=int, default=8, help="length of the repeated block")
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--implementation", choices=["cuda", "xla"], default=None,
                   help="jax_flash implementation (default: cuda where built and on a GPU, else xla)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def copy_task_batch(key, batch, seq, period, vocab):
    """tokens (batch, seq + 1) int32 and loss mask (batch, seq) over the predictable targets."""
    block = jax.random.randint(key, (batch, period), 0, vocab, dtype=jnp.int32)
    reps = -(-(seq + 1) // period)
    tokens = jnp.tile(block, (1, reps))[:, : seq + 1]
    target_pos = jnp.arange(1, seq + 1)
    mask = jnp.broadcast_to(target_pos >= period, (batch, seq)).astype(jnp.float32)
    return tokens, mask


def adam_init(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"step": jnp.zeros((), jnp.int32), "m": zeros, "v": zeros}


def adam_update(params, grads, state, lr, b1=0.9, b2=0.99, eps=1e-8):
    """One Adam step; returns (params, state)."""
    step = state["step"] + 1
    m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    c1, c2 = 1 - b1 ** step, 1 - b2 ** step

    def apply(p, m, v):
        return p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps)

    params = jax.tree_util.tree_map(apply, params, m, v)
    return params, {"step": step, "m": m, "v": v}


def make_train_step(cfg: Config, *, batch, seq, period, lr, implementation=None):
    """Jitted (params, opt_state, key) -> (params, opt_state, loss): one Adam step on a fresh copy-task batch."""

    def train_step(params, opt_state, key):
        tokens, mask = copy_task_batch(key, batch, seq, period, cfg.vocab)
        value, grads = jax.value_and_grad(loss_fn)(params, tokens, mask, cfg, implementation=implementation)
        params, opt_state = adam_update(params, grads, opt_state, lr)
        return params, opt_state, value

    return jax.jit(train_step)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config(vocab=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                 n_kv_heads=args.kv_heads, d_ff=4 * args.d_model, max_seq=args.seq)
    key_init, key_eval, key_data = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    params = init_params(key_init, cfg)
    opt_state = adam_init(params)
    batch_fn = lambda key: copy_task_batch(key, args.batch, args.seq, args.period, args.vocab)
    loss = lambda params, tokens, mask: loss_fn(params, tokens, mask, cfg, implementation=args.implementation)
    train_step = make_train_step(cfg, batch=args.batch, seq=args.seq, period=args.period, lr=args.lr,
                                 implementation=args.implementation)
    eval_loss = jax.jit(loss)
    eval_batch = batch_fn(key_eval)
    initial = float(eval_loss(params, *eval_batch))
    print(f"devices {jax.devices()}; implementation {args.implementation or 'auto'}; {cfg}")
    print(f"initial held-out loss {initial:.4f}")

    start = time.perf_counter()
    for step, key in enumerate(jax.random.split(key_data, args.steps), start=1):
        params, opt_state, value = train_step(params, opt_state, key)
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:5d}  train loss {float(value):.4f}  ({time.perf_counter() - start:.1f} s)")

    final = float(eval_loss(params, *eval_batch))
    print(f"final held-out loss {final:.4f} (initial {initial:.4f})")
    if not final < initial:
        print("FAIL: the loss did not decrease", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
