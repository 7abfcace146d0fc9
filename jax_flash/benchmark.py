"""Attention benchmark: jax_flash beside cuDNN and XLA attention, measured in one process.

    python -m jax_flash.benchmark                      # the standard grid (DESIGN.md "Benchmarks")
    python -m jax_flash.benchmark --d 128 --seqlens 4096 --causal yes --mode fwd
    python -m jax_flash.benchmark --d 64 128 --mode all --deterministic   # fwd, bwd alone, fwd+bwd

Standard grid: 16k tokens per batch and hidden 2048, so heads = 2048 // D and batch = 16384 // S, for
D in 64/128/256, S in 1k/4k/16k, causal and not. FLOPs: 4 * B * H * Sq * Sk * D forward (half for causal),
backward 2.5x forward, forward + backward 3.5x. The backward alone (`--mode bwd`) is timed from the forward's
residuals, computed once outside the timing.

jax and jax_flash's kernels are imported only once the arguments are parsed, so --help works anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

BACKENDS = ("ours", "cudnn", "xla")
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jax_flash.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, nargs="+", default=[64, 128, 256], help="head dims (default 64 128 256)")
    p.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384], help="sequence lengths")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--mode", choices=["fwd", "bwd", "fwdbwd", "both", "all"], default="both",
                   help="both: fwd and fwdbwd; all: fwd, bwd (the backward alone) and fwdbwd")
    p.add_argument("--deterministic", action="store_true",
                   help="jax_flash's bitwise-repeatable backward (deterministic=True); cuDNN's is unchanged")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tokens", type=int, default=16384, help="tokens per batch: batch = tokens // seqlen")
    p.add_argument("--hidden", type=int, default=2048, help="heads = hidden // d")
    p.add_argument("--no-xla", action="store_true", help="skip the XLA (materialised scores) baseline")
    p.add_argument("--xla-max-seqlen", type=int, default=4096,
                   help="skip XLA above this seqlen: its S x S scores run out of memory or time")
    p.add_argument("--no-cudnn", action="store_true", help="skip the cuDNN baseline")
    p.add_argument("--implementation", default="cuda",
                   help='jax_flash implementation timed as "ours" (default "cuda")')
    p.add_argument("--input-sets", type=int, default=3,
                   help="distinct input sets to rotate through, so small shapes do not run out of L2")
    p.add_argument("--plot", metavar="PNG", help="TFLOP/s vs seqlen per head dim, ours vs cudnn (needs matplotlib)")
    add_timing_arguments(p)
    return p.parse_args(argv)


def add_timing_arguments(p):
    """--repeats, --iters and --json: how every jax_flash benchmark times and records its measurements."""
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    p.add_argument("--iters", type=int, default=None,
                   help="calls per repeat (default: enough for about 50 ms of work)")
    p.add_argument("--json", metavar="PATH", help="write every measurement as JSON")


# ---------------------------------------------------------------------------------------------------------
# Shapes and FLOPs

def grid(args):
    """Yields (batch, seqlen, heads, head_dim, causal) in table order."""
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
    for d in args.d:
        heads = max(1, args.hidden // d)
        for s in args.seqlens:
            batch = max(1, args.tokens // s)
            for causal in causals:
                yield batch, s, heads, d, causal


def attention_flops(batch, seqlen, heads, d, causal, mode):
    fwd = 4 * batch * heads * seqlen * seqlen * d * (0.5 if causal else 1.0)
    return fwd * {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}[mode]


# ---------------------------------------------------------------------------------------------------------
# The functions under test: each maps (q, k, v) -> out, layout (B, S, H, D)

def attention_fn(backend, causal, implementation, deterministic=False):
    import jax

    if backend == "ours":
        import jax_flash

        return lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=causal, implementation=implementation,
                                                         deterministic=deterministic)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=backend)


def timed_fn(attend, mode):
    """Jitted step for one mode; its inputs are (q, k, v, cotangent)."""
    import jax

    if mode == "fwd":
        return jax.jit(lambda q, k, v, do: attend(q, k, v))

    def fwd_bwd(q, k, v, do):
        # = jax.grad of sum(out * do) wrt (q, k, v), without the extra elementwise product and reduction
        _, vjp = jax.vjp(attend, q, k, v)
        return vjp(do)

    return jax.jit(fwd_bwd)


def timed_step(attend, mode, input_sets):
    """(jitted step, its input sets) for one mode of attend; input_sets hold (q, k, v, cotangent). The backward
    alone takes (vjp, cotangent): the forward's residuals, made once here, are arguments of the timed step."""
    import jax

    if mode != "bwd":
        return timed_fn(attend, mode), input_sets
    forward = jax.jit(lambda q, k, v: jax.vjp(attend, q, k, v)[1])
    return jax.jit(lambda vjp, do: vjp(do)), [(forward(q, k, v), do) for q, k, v, do in input_sets]


def make_inputs(key, n_sets, batch, seqlen, heads, d, dtype):
    import jax

    shape = (batch, seqlen, heads, d)
    sets = []
    for k in jax.random.split(key, n_sets):
        parts = jax.random.split(k, 4)
        sets.append(tuple(jax.random.normal(p, shape, dtype) for p in parts))  # q, k, v, cotangent
    return sets


def time_ms(step, input_sets, repeats, iters):
    """Median milliseconds per call. Calls are queued back to back and synchronised once per repeat."""
    return time_ms_alternating([(step, input_sets)], repeats, iters)[0]


def time_ms_alternating(steps, repeats, iters):
    """time_ms of each (step, input_sets) of steps, their repeats taken in turn, so that a drift of the
    device over the run weighs on each alike (timed first in a block of its own repeats, the paged decode
    read 0.5-1% slower than in later blocks on an H200, 2026-11-22, while cuDNN did not move)."""
    import jax

    counts = []
    for step, input_sets in steps:
        for inputs in input_sets:  # compile and warm up
            jax.block_until_ready(step(*inputs))
        n = iters
        if n is None:
            t0 = time.perf_counter()
            jax.block_until_ready(step(*input_sets[0]))
            once = time.perf_counter() - t0
            n = int(min(200, max(3, 0.05 / max(once, 1e-6))))
        counts.append(n)
    samples = [[] for _ in steps]
    for _ in range(repeats):
        for (step, input_sets), n, times in zip(steps, counts, samples):
            t0 = time.perf_counter()
            out = None
            for i in range(n):
                out = step(*input_sets[i % len(input_sets)])
            jax.block_until_ready(out)
            times.append((time.perf_counter() - t0) / n * 1e3)
    return [statistics.median(times) for times in samples]


def short_error(err):
    line = (str(err).strip().splitlines() or [""])[0]
    text = f"{type(err).__name__}: {line}"
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------------------------------------------------
# Running and reporting

def backends_for(args, seqlen):
    """(backend, reason it is skipped or None)."""
    out = [("ours", None)]
    out.append(("cudnn", "skipped (--no-cudnn)" if args.no_cudnn else None))
    if args.no_xla:
        out.append(("xla", "skipped (--no-xla)"))
    elif seqlen > args.xla_max_seqlen:
        out.append(("xla", f"skipped (S > {args.xla_max_seqlen})"))
    else:
        out.append(("xla", None))
    return out


def run(args):
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(DTYPES[args.dtype])
    modes = {"both": ("fwd", "fwdbwd"), "all": ("fwd", "bwd", "fwdbwd")}.get(args.mode, (args.mode,))
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, dtype {args.dtype}"
          + (", deterministic backward" if args.deterministic else ""), flush=True)
    print_header()
    records = []
    key = jax.random.PRNGKey(0)
    for batch, seqlen, heads, d, causal in grid(args):
        inputs = make_inputs(key, args.input_sets, batch, seqlen, heads, d, dtype)
        for mode in modes:
            row = {}
            for backend, skip in backends_for(args, seqlen):
                rec = dict(batch=batch, seqlen=seqlen, heads=heads, d=d, causal=causal, mode=mode,
                           dtype=args.dtype, backend=backend, ms=None, tflops=None, error=skip)
                if skip is None:
                    try:
                        attend = attention_fn(backend, causal, args.implementation, args.deterministic)
                        step, step_inputs = timed_step(attend, mode, inputs)
                        rec["ms"] = time_ms(step, step_inputs, args.repeats, args.iters)
                        del step_inputs
                        rec["tflops"] = attention_flops(batch, seqlen, heads, d, causal, mode) / rec["ms"] / 1e9
                    except Exception as err:  # one failing backend must not end the table
                        rec["error"] = short_error(err)
                    jax.clear_caches()
                row[backend] = rec
                records.append(rec)
            print_row(batch, seqlen, heads, d, causal, mode, row)
        del inputs
    print_errors(records)
    return jax.devices()[0].device_kind, records


COLUMNS = "{:<24} {:<6} {:>9} {:>10} {:>10} {:>10} {:>10}"


def print_header():
    print(COLUMNS.format("shape (B,S,H,D)", "mode", "ours ms", "ours TF/s", "cudnn TF/s", "xla TF/s",
                         "ours/cudnn"))


def print_row(batch, seqlen, heads, d, causal, mode, row):
    def tf(backend):
        rec = row[backend]
        return f"{rec['tflops']:.1f}" if rec["tflops"] is not None else "n/a"

    ours, cudnn = row["ours"], row["cudnn"]
    ratio = f"{ours['tflops'] / cudnn['tflops']:.2f}" if ours["tflops"] and cudnn["tflops"] else "n/a"
    ms = f"{ours['ms']:.3f}" if ours["ms"] is not None else "n/a"
    shape = f"{batch},{seqlen},{heads},{d}" + (" causal" if causal else "")
    print(COLUMNS.format(shape, mode, ms, tf("ours"), tf("cudnn"), tf("xla"), ratio), flush=True)


def print_errors(records):
    """One line per distinct reason a cell says n/a (skips included), with the cells it covers."""
    reasons = {}
    for r in records:
        if r["error"]:
            reasons.setdefault((r["backend"], r["error"]), []).append(r)
    if not reasons:
        return
    print("\nn/a:")
    for (backend, error), recs in reasons.items():
        print(f"  {backend}: {error}  [{len(recs)} cell{'s' if len(recs) > 1 else ''}]")


def plot(records, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib; no plot written", file=sys.stderr)
        return
    ds = sorted({r["d"] for r in records})
    seqlens = sorted({r["seqlen"] for r in records})
    fig, axes = plt.subplots(1, len(ds), figsize=(5 * len(ds), 4), squeeze=False)
    for ax, d in zip(axes[0], ds):
        # one colour per (mode, causal); solid = ours, dashed = cudnn
        for color, (mode, causal) in enumerate(sorted({(r["mode"], r["causal"]) for r in records})):
            for backend, style in (("ours", "-"), ("cudnn", "--")):
                pts = sorted((r["seqlen"], r["tflops"]) for r in records
                             if (r["d"], r["mode"], r["causal"], r["backend"]) == (d, mode, causal, backend)
                             and r["tflops"] is not None)
                if pts:
                    label = f"{backend} {mode}{' causal' if causal else ''}"
                    ax.plot(*zip(*pts), style, color=f"C{color}", marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqlens, [f"{x // 1024}k" if x % 1024 == 0 else str(x) for x in seqlens])
        ax.minorticks_off()
        ax.set_title(f"head dim {d}")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def write_json(path, device, args, records):
    """Every measurement, with the device and the command-line arguments that produced it."""
    with open(path, "w") as f:
        json.dump({"device": device, "args": vars(args), "results": records}, f, indent=1)
    print(f"results written to {path}")


def main(argv=None):
    args = parse_args(argv)
    device, records = run(args)
    if args.json:
        write_json(args.json, device, args, records)
    if args.plot:
        plot(records, args.plot)


if __name__ == "__main__":
    main()
