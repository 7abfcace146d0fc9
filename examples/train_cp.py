"""Train the small LM of lm_model.py with every sequence split over all devices (context parallelism).

    python examples/train_cp.py                          # CPU: 8 forced host devices, under a minute
    python examples/train_cp.py --strategy ulysses --devices 4 --layout contiguous
    python examples/train_cp.py --implementation cuda --seq 4096 --steps 200    # on GPUs

Each device holds all parameters and 1/P of every sequence, in the layout's order (zigzag by default:
balanced causal work). Inside shard_map everything but attention is per token; attention is
jax_flash.parallel.ring_attention (or ulysses_attention) over the mesh axis, with rotary positions taken
from the layout (layout_positions). The step is a plain jax.shard_map with its default checks (check_vma):
the loss is summed over the axis (psum), the gradient of the replicated parameters comes out summed already.

The task is train_lm.py's copy task. Before training, the loss of the context-parallel model is checked
against the single-device model (lm_model.loss_fn) on the same batch; exits 1 if they differ or if the
held-out loss does not fall.
"""

from __future__ import annotations

import os
import sys

# Before jax starts: on a CPU-only machine, fake 8 devices so the sequence has something to be split over.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec as P  # noqa: E402

import jax_flash.parallel as cp  # noqa: E402
from lm_model import Config, attention_output, embed, init_params, logits, loss_fn, mlp, qkv  # noqa: E402
from train_lm import adam_init, adam_update, copy_task_batch  # noqa: E402

AXIS = "seq"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence, a multiple of 2 * devices")
    p.add_argument("--period", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--devices", type=int, default=None, help="sequence-parallel devices (default: all)")
    p.add_argument("--strategy", choices=["ring", "ulysses"], default="ring")
    p.add_argument("--layout", choices=list(cp.LAYOUTS), default="zigzag")
    p.add_argument("--implementation", choices=["cuda", "xla"], default=None)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def local_nll(params, inputs, targets, mask, positions, cfg, attend):
    """Sum of the next-token losses of this device's tokens: inputs/targets/mask (B, n), positions (n,)."""
    x = embed(params, inputs)
    for layer in params["layers"]:
        x = attention_output(layer, x, attend(*qkv(layer, x, positions, cfg)))
        x = mlp(layer, x)
    logp = jax.nn.log_softmax(logits(params, x), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask)


def make_loss_and_grads(cfg, mesh, args):
    """(params, tokens (B, S+1), mask (B, S)) -> (mean loss, gradients), the sequence split over AXIS."""
    size = mesh.shape[AXIS]
    attend_fn = cp.ring_attention if args.strategy == "ring" else cp.ulysses_attention
    attend = functools.partial(attend_fn, axis_name=AXIS, causal=True, layout=args.layout,
                               implementation=args.implementation)

    def per_device(params, inputs, targets, mask, positions):
        nll, grads = jax.value_and_grad(local_nll)(params, inputs, targets, mask, positions, cfg, attend)
        count = jax.lax.psum(jnp.sum(mask), AXIS)
        # The parameters are replicated (invariant over AXIS) and the loss varies: under check_vma, JAX
        # transposes their implicit broadcast into a psum, so the gradient is already summed over the devices.
        # Every device's part includes what its keys and values gave the other devices' queries (the ring's
        # backward returns those), so that sum is the full gradient.
        grads = jax.tree_util.tree_map(lambda g: g / count, grads)
        return jax.lax.psum(nll, AXIS) / count, grads

    seq_spec = P(None, AXIS)
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), seq_spec, seq_spec, seq_spec, P(AXIS)),
                           out_specs=(P(), P()))

    def loss_and_grads(params, tokens, mask):
        # Shift in natural order, then put every per-token array into the layout's order.
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        seq = inputs.shape[1]
        to_layout = functools.partial(cp.to_layout, axis_size=size, layout=args.layout)
        positions = cp.layout_positions(seq, size, args.layout)
        return mapped(params, to_layout(inputs), to_layout(targets), to_layout(mask), positions)

    return loss_and_grads


def agrees_with_single_device(loss, grads, want_loss, want_grads) -> bool:
    """Step 0: the context-parallel loss and gradients against lm_model.loss_fn on one device. Attention
    runs in bf16 in both (Config.attn_dtype), so they agree to its rounding, not bitwise."""
    loss, want_loss = float(loss), float(want_loss)
    grad_error = max(float(jnp.abs(g - w).max() / jnp.abs(w).max())
                     for g, w in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads)))
    print(f"step 0 loss: context parallel {loss:.5f}, single device {want_loss:.5f}; gradients differ by "
          f"{grad_error:.1e} of their largest entry")
    if abs(loss - want_loss) <= 2e-3 * max(1.0, abs(want_loss)) and grad_error <= 2e-2:
        return True
    print("FAIL: the context-parallel model differs from the single-device model", file=sys.stderr)
    return False


def main(argv=None):
    args = parse_args(argv)
    size = args.devices or len(jax.devices())
    if args.seq % (2 * size):
        raise SystemExit(f"--seq ({args.seq}) must be a multiple of 2 * devices ({2 * size})")
    mesh = Mesh(np.array(jax.devices()[:size]), (AXIS,))
    cfg = Config(vocab=args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                 n_kv_heads=args.kv_heads, d_ff=4 * args.d_model, max_seq=args.seq)
    key_init, key_eval, key_data = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    params = init_params(key_init, cfg)
    opt_state = adam_init(params)
    batch_fn = lambda key: copy_task_batch(key, args.batch, args.seq, args.period, args.vocab)  # noqa: E731
    loss_and_grads = make_loss_and_grads(cfg, mesh, args)

    @jax.jit
    def train_step(params, opt_state, tokens, mask):
        value, grads = loss_and_grads(params, tokens, mask)
        new_params, opt_state = adam_update(params, grads, opt_state, args.lr)
        return new_params, opt_state, value, grads

    eval_loss = jax.jit(lambda params, tokens, mask: loss_and_grads(params, tokens, mask)[0])
    single_device = jax.jit(jax.value_and_grad(
        lambda params, tokens, mask: loss_fn(params, tokens, mask, cfg, implementation=args.implementation)))
    eval_batch = batch_fn(key_eval)
    print(f"{size} devices ({jax.devices()[0].platform}), {args.strategy} attention, layout {args.layout}; {cfg}")
    initial = float(eval_loss(params, *eval_batch))
    print(f"initial held-out loss {initial:.4f}")

    start = time.perf_counter()
    for step, key in enumerate(jax.random.split(key_data, args.steps), start=1):
        batch = batch_fn(key)
        if step == 1:
            want = single_device(params, *batch)
        params, opt_state, value, grads = train_step(params, opt_state, *batch)
        if step == 1 and not agrees_with_single_device(value, grads, *want):
            return 1
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
