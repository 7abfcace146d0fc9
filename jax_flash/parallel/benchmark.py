"""Context-parallel benchmark: ring attention on all visible devices against its compute alone and against
the single-device kernel.

    python -m jax_flash.parallel.benchmark            # 16k tokens per device, 16 heads, D 128, bf16
    python -m jax_flash.parallel.benchmark --smoke    # tiny shapes on 4 CPU host devices: checks it runs

Reported, for P = the visible devices and the sequence P * tokens-per-device long (batch 1):
  * ring forward time, full and causal, beside the same per-step attention calls with the K/V transfers
    taken out (ring.COMMUNICATE = False: identical calls and shapes, a wrong result): the ratio is the
    cost of communication that compute does not hide. Also with the per-step optimization barrier off.
  * zigzag causal forward + backward per-device TFLOP/s (the causal FLOPs of the whole sequence / P),
    beside jax_flash.flash_attention on one device doing as much causal work: sequence n * sqrt(P).
FLOPs as jax_flash.benchmark: 4 * B * H * S^2 * D forward, half for causal, forward + backward 3.5x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jax_flash.parallel.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--tokens-per-device", type=int, default=16384)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--layout", choices=["zigzag", "contiguous", "striped"], default="zigzag")
    p.add_argument("--implementation", default="cuda", help='"cuda", "xla" or "auto" (default "cuda")')
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=None, help="calls per repeat (default: about 50 ms of work)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on 4 CPU host devices (implementation auto)")
    p.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    args = p.parse_args(argv)
    if args.smoke:
        # One call at a time: CPU collectives can starve for threads with many executions in flight.
        args.tokens_per_device, args.heads, args.d, args.implementation = 64, 2, 16, "auto"
        args.repeats, args.iters = 2, 1
    args.kv_heads = args.kv_heads or args.heads
    args.implementation = None if args.implementation == "auto" else args.implementation
    return args


def main(argv=None):
    args = parse_args(argv)
    import jax

    if args.smoke:  # before the first use of a backend, which reads XLA_FLAGS
        if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
        jax.config.update("jax_platforms", "cpu")

    from jax_flash.benchmark import attention_flops, time_ms

    devices = jax.devices()
    size, n = len(devices), args.tokens_per_device
    print(f"{size} x {devices[0].device_kind}, jax {jax.__version__}; {n} tokens per device, heads "
          f"{args.heads}/{args.kv_heads}, D {args.d}, {args.dtype}, layout {args.layout}, implementation "
          f"{args.implementation or 'auto'}", flush=True)
    inputs = _inputs(jax, args, size)
    records = []

    def record(name, ms, flops=None):
        per_device = None if flops is None else flops / size / ms / 1e9
        records.append(dict(name=name, ms=ms, tflops_per_device=per_device))
        tf = "" if per_device is None else f"{per_device:8.1f} TFLOP/s per device"
        print(f"  {name:<44} {ms:9.3f} ms {tf}", flush=True)

    def ring_ms(causal, mode, **knobs):
        return time_ms(_ring_step(args, inputs, causal, mode, **knobs), [inputs], args.repeats, args.iters)

    seq = size * n
    for causal in (False, True):
        label = "causal" if causal else "full"
        ring = ring_ms(causal, "fwd")
        record(f"ring forward, {label}", ring, attention_flops(1, seq, args.heads, args.d, causal, "fwd"))
        loose = ring_ms(causal, "fwd", barrier=False)
        record(f"ring forward, {label}, no step barrier", loose)
        alone = ring_ms(causal, "fwd", communicate=False)
        record(f"same calls without transfers, {label}", alone)
        print(f"  ring / compute-only forward, {label}: {ring / alone:.3f} (no barrier: {loose / alone:.3f})")

    flops = attention_flops(1, seq, args.heads, args.d, True, "fwdbwd")
    ring = ring_ms(True, "fwdbwd")
    record("ring forward+backward, causal", ring, flops)
    alone = ring_ms(True, "fwdbwd", communicate=False)
    record("same calls without transfers, causal", alone, flops)

    single_seq = max(256, round(n * math.sqrt(size) / 256) * 256) if not args.smoke else n * 2
    single_inputs = _inputs(jax, args, 1, seq=single_seq, devices=devices[:1])
    single = time_ms(_single_step(args), [single_inputs], args.repeats, args.iters)
    single_tflops = attention_flops(1, single_seq, args.heads, args.d, True, "fwdbwd") / single / 1e9
    ring_tflops = flops / size / ring / 1e9
    print(f"  single device flash_attention forward+backward, causal, S={single_seq}: {single:.3f} ms, "
          f"{single_tflops:.1f} TFLOP/s")
    print(f"  ring per-device throughput / single device: {ring_tflops / single_tflops:.3f}")
    records.append(dict(name="single device forward+backward causal", seq=single_seq, ms=single,
                        tflops_per_device=single_tflops))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"devices": size, "device_kind": devices[0].device_kind, "args": vars(args),
                       "results": records}, f, indent=1)
        print(f"results written to {args.json}")
    return 0


def _inputs(jax, args, size, seq=None, devices=None):
    """q, k, v and a cotangent, (1, seq, H, D), the sequence sharded over the devices."""
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    seq = seq or size * args.tokens_per_device
    mesh = Mesh(np.array(devices or jax.devices()), ("cp",))
    sharding = NamedSharding(mesh, P(None, "cp"))
    keys = jax.random.split(jax.random.key(0), 4)
    heads = (args.heads, args.kv_heads, args.kv_heads, args.heads)
    dtype = jnp.dtype(DTYPES[args.dtype])
    return tuple(jax.device_put(jax.random.normal(key, (1, seq, h, args.d), dtype), sharding)
                 for key, h in zip(keys, heads))


def _ring_step(args, inputs, causal, mode, *, barrier=True, communicate=True):
    """The ring step (forward, or forward + backward) compiled for `inputs` with the given ring knobs."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from jax_flash.benchmark import timed_fn
    from jax_flash.parallel import ring
    from jax_flash.parallel.api import context_parallel_attention

    mesh = Mesh(np.array(jax.devices()), ("cp",))

    def attend(q, k, v):
        return context_parallel_attention(q, k, v, mesh=mesh, axis="cp", layout=args.layout, causal=causal,
                                          implementation=args.implementation)

    saved = ring.STEP_BARRIER, ring.COMMUNICATE
    ring.STEP_BARRIER, ring.COMMUNICATE = barrier, communicate
    try:  # the knobs are read while tracing
        return timed_fn(attend, mode).lower(*inputs).compile()
    finally:
        ring.STEP_BARRIER, ring.COMMUNICATE = saved


def _single_step(args):
    import jax_flash
    from jax_flash.benchmark import timed_fn

    impl = args.implementation
    return timed_fn(lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=True, implementation=impl),
                    "fwdbwd")


if __name__ == "__main__":
    sys.exit(main())
