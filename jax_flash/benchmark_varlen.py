"""Packed (varlen) attention benchmark: useful-FLOP throughput of flash_attention_varlen on a packed batch,
beside the dense kernel at the mean document length and cuDNN on the documents padded one per row.

    python -m jax_flash.benchmark_varlen                                # 16k tokens, bf16, 16 heads, D 128
    python -m jax_flash.benchmark_varlen --smoke --implementation xla   # tiny sizes, runs on a CPU

Packings of --tokens tokens: "longtail" draws document lengths log-uniformly in [--min-len, --max-len] with a
fixed seed until the tokens are filled (the last document takes the remainder, so it may be shorter);
"equal" cuts them into documents of --equal-len.

Useful FLOPs count only the (query, key) pairs a document's mask lets through: sum of L^2 over documents, or
L (L + 1) / 2 each when causal, times the per-pair cost of jax_flash.benchmark (4 * H * D forward, 3.5x that
for forward + backward). Every column uses this count for the documents it runs, so TFLOP/s compare how well
each spends its time on the same work:
  ours        flash_attention_varlen on the packing (Tq = Tk = tokens)
  dense@mean  flash_attention with B = tokens // S rows of S = the mean document length (same tokens)
  cudnn-pad   jax.nn.dot_product_attention(implementation="cudnn"), one document per row (B = documents,
              S = the longest, rounded up to 64), query/key lengths = the document lengths

jax and jax_flash's kernels are imported only once the arguments are parsed, so --help works anywhere.
"""

from __future__ import annotations

import argparse
import numpy as np

from jax_flash.benchmark import (DTYPES, add_timing_arguments, attention_flops, make_inputs, print_errors,
                                 short_error, time_ms, timed_fn, write_json)

BASELINES = ("dense", "cudnn")
# cuDNN rejects some sequence lengths (odd ones in its backward); padding to a multiple of 64 avoids that and
# changes no useful FLOP, since the padded keys are masked by the document lengths.
CUDNN_SEQ_MULTIPLE = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jax_flash.benchmark_varlen", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=16384, help="tokens in the packed batch (Tq = Tk)")
    p.add_argument("--heads", type=int, default=16, help="query and kv heads (Hq = Hk)")
    p.add_argument("--d", type=int, default=128, help="head dim")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--packings", nargs="+", choices=["longtail", "equal"], default=["longtail", "equal"])
    p.add_argument("--min-len", type=int, default=64, help="shortest longtail document")
    p.add_argument("--max-len", type=int, default=8192, help="longest longtail document")
    p.add_argument("--equal-len", type=int, default=1024, help="document length of the equal packing")
    p.add_argument("--seed", type=int, default=0, help="seed of the longtail lengths")
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--mode", choices=["fwd", "fwdbwd", "both"], default="both")
    p.add_argument("--implementation", default="cuda",
                   help='jax_flash implementation timed as "ours" and as dense@mean (default "cuda")')
    p.add_argument("--no-dense", action="store_true", help="skip the dense kernel at the mean length")
    p.add_argument("--no-cudnn", action="store_true", help="skip cuDNN on the padded documents")
    p.add_argument("--input-sets", type=int, default=3,
                   help="distinct input sets to rotate through, so small shapes do not run out of L2")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes and one short repeat: checks the script runs (e.g. on a CPU with xla)")
    add_timing_arguments(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.tokens, args.heads, args.d = 512, 2, 64
        args.min_len, args.max_len, args.equal_len = 16, 256, 128
        args.repeats, args.iters, args.input_sets = 1, 2, 1
    return args


# ---------------------------------------------------------------------------------------------------------
# Packings and FLOPs

def longtail_lengths(tokens, lo, hi, seed):
    """Log-uniform lengths in [lo, hi] until `tokens` are filled; the last takes the remainder."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < tokens:
        length = int(np.clip(np.exp(rng.uniform(np.log(lo), np.log(hi))), lo, hi))
        lengths.append(min(length, tokens - sum(lengths)))
    return lengths


def equal_lengths(tokens, length):
    lengths = [length] * (tokens // length)
    return lengths + ([tokens % length] if tokens % length else [])


def packing_lengths(args, name):
    if name == "longtail":
        return longtail_lengths(args.tokens, args.min_len, args.max_len, args.seed)
    return equal_lengths(args.tokens, args.equal_len)


def useful_flops(lengths, heads, d, causal, mode):
    """FLOPs of the (query, key) pairs inside documents that the mask keeps."""
    pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lengths)
    # attention_flops of one query and one key: the per-pair cost of `mode`, as jax_flash.benchmark counts.
    return pairs * attention_flops(1, 1, heads, d, False, mode)


def dense_shape(tokens, lengths):
    """(B, S): rows of the mean document length holding the same tokens."""
    seqlen = max(1, round(tokens / len(lengths)))
    return max(1, tokens // seqlen), seqlen


# ---------------------------------------------------------------------------------------------------------
# The functions under test: (q, k, v) -> out, with the inputs each one takes

def varlen_fn(lengths, causal, implementation):
    import jax.numpy as jnp

    import jax_flash

    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lengths)]), jnp.int32)
    longest = int(max(lengths))
    return lambda q, k, v: jax_flash.flash_attention_varlen(q, k, v, cu, cu, longest, longest, causal=causal,
                                                            implementation=implementation)


def dense_fn(causal, implementation):
    import jax_flash

    return lambda q, k, v: jax_flash.flash_attention(q, k, v, causal=causal, implementation=implementation)


def cudnn_padded_fn(lengths, causal):
    import jax
    import jax.numpy as jnp

    # Causal in cuDNN is top-left aligned; with as many keys as queries per document that is the same mask.
    lens = jnp.asarray(lengths, jnp.int32)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lens,
                                                        key_value_seq_lengths=lens, implementation="cudnn")


def packed_inputs(key, n_sets, tokens, heads, d, dtype):
    """Input sets of (Tq, H, D) tensors: jax_flash.benchmark's (1, T, H, D) without the batch axis."""
    return [tuple(x[0] for x in s) for s in make_inputs(key, n_sets, 1, tokens, heads, d, dtype)]


def cudnn_seqlen(lengths):
    return -(-max(lengths) // CUDNN_SEQ_MULTIPLE) * CUDNN_SEQ_MULTIPLE


# ---------------------------------------------------------------------------------------------------------
# Running and reporting

def measure(attend, mode, inputs, docs, causal, args):
    """{ms, tflops, error} of one cell; an error is recorded, so one failing backend does not end the table."""
    import jax

    try:
        ms = time_ms(timed_fn(attend, mode), inputs, args.repeats, args.iters)
        return dict(ms=ms, tflops=useful_flops(docs, args.heads, args.d, causal, mode) / ms / 1e9, error=None)
    except Exception as err:
        return dict(ms=None, tflops=None, error=short_error(err))
    finally:
        jax.clear_caches()


def run_packing(args, name, key, dtype):
    """Times ours and the baselines on one packing; returns the records and prints a table."""
    lengths = packing_lengths(args, name)
    batch, seqlen = dense_shape(args.tokens, lengths)
    pad_len = cudnn_seqlen(lengths)
    h, d, n_sets = args.heads, args.d, args.input_sets
    print(f"\n{name}: {len(lengths)} documents, lengths {min(lengths)}..{max(lengths)}, mean "
          f"{args.tokens / len(lengths):.0f}; dense@mean B={batch} S={seqlen}; cudnn-pad B={len(lengths)} "
          f"S={pad_len}")
    print_header()
    # backend -> (its documents for the FLOP count, its input sets); skipped backends have none.
    setups = {"ours": (lengths, packed_inputs(key, n_sets, args.tokens, h, d, dtype))}
    if not args.no_dense:
        setups["dense"] = ([seqlen] * batch, make_inputs(key, n_sets, batch, seqlen, h, d, dtype))
    if not args.no_cudnn:
        setups["cudnn"] = (lengths, make_inputs(key, n_sets, len(lengths), pad_len, h, d, dtype))
    records = []
    for causal in {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]:
        fns = {"ours": varlen_fn(lengths, causal, args.implementation),
               "dense": dense_fn(causal, args.implementation), "cudnn": cudnn_padded_fn(lengths, causal)}
        for mode in ("fwd", "fwdbwd") if args.mode == "both" else (args.mode,):
            row = {}
            for backend, attend in fns.items():
                row[backend] = dict(packing=name, documents=len(lengths), causal=causal, mode=mode,
                                    backend=backend, tokens=args.tokens, heads=h, d=d, dtype=args.dtype)
                if backend in setups:
                    docs, inputs = setups[backend]
                    row[backend].update(measure(attend, mode, inputs, docs, causal, args))
                else:
                    row[backend].update(ms=None, tflops=None, error=f"skipped (--no-{backend})")
            print_row(causal, mode, row)
            records += row.values()
    return records


def run(args):
    import jax
    import jax.numpy as jnp

    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, dtype {args.dtype}, "
          f"tokens {args.tokens}, heads {args.heads}, D {args.d}", flush=True)
    dtype = jnp.dtype(DTYPES[args.dtype])
    records = []
    for name in args.packings:
        records += run_packing(args, name, jax.random.PRNGKey(0), dtype)
    print_errors(records)
    return jax.devices()[0].device_kind, records


COLUMNS = "{:<8} {:<7} {:>9} {:>10} {:>11} {:>11} {:>11} {:>11}"


def print_header():
    print(COLUMNS.format("mask", "mode", "ours ms", "ours TF/s", "dense TF/s", "cudnn TF/s", "ours/dense",
                         "ours/cudnn"))


def print_row(causal, mode, row):
    def tf(rec):
        x = rec["tflops"]
        if x is None:
            return "n/a"
        return f"{x:.1f}" if x >= 10 else f"{x:.3g}"  # tiny --smoke numbers still show

    def ratio(other):
        a, b = row["ours"]["tflops"], row[other]["tflops"]
        return f"{a / b:.2f}" if a and b else "n/a"

    ms = row["ours"]["ms"]
    print(COLUMNS.format("causal" if causal else "full", mode, f"{ms:.3f}" if ms is not None else "n/a",
                         tf(row["ours"]), tf(row["dense"]), tf(row["cudnn"]), ratio("dense"), ratio("cudnn")),
          flush=True)


def main(argv=None):
    args = parse_args(argv)
    device, records = run(args)
    if args.json:
        write_json(args.json, device, args, records)


if __name__ == "__main__":
    main()
