"""Paged KV cache decode benchmark: paged_attention's bandwidth beside the device's copy bandwidth and cuDNN
on the same cache laid out contiguously, measured in one process.

    python -m jax_flash.benchmark_paged                     # B 1/8/32/128 x cache 1k/8k/32k/128k x page 16/128
    python -m jax_flash.benchmark_paged --key-shape         # B=32, 32k keys, page 128 alone
    python -m jax_flash.benchmark_paged --smoke --implementation xla   # tiny sizes, runs on a CPU

Decode: one new query per sequence, q (B, 1, Hq, D), every sequence's cache full (cache_seqlens = S), pages
of each sequence scattered over the pool in random order. A decode step streams the keys and values once,
so it is bound by memory bandwidth; GB/s counts the keys and values read, B * S * Hk * (D + Dv) * bytes per
element / time (q, out and the page table are noise beside them). Columns:
  ours       paged_attention, its split plan chosen from static shapes (the "splits" column: 4 equal
             parts, or 7h: 7 halving ones)
  copy       the device's copy bandwidth: an elementwise op over --copy-gib GiB, read + write bytes / time
  cudnn      jax.nn.dot_product_attention(q, k, v, implementation="cudnn") with k, v (B, S, Hk, D)
             contiguous: the same shapes and bytes, no page table
  ours/copy  the fraction of the copy bandwidth ours reaches; ours/cudnn the bandwidth ratio (> 1: ours faster)
Ours and cuDNN are timed side by side for each page size, their repeats in turn (a shape marked ~ did not fit
twice in memory and was timed one after the other). Then, for --split-shapes, ours at num_splits=1 beside the
automatic plan, timed the same way.

Shapes whose caches do not fit in device memory, and cells where a backend fails (cuDNN refusing a shape),
print n/a with the reason below the table. jax and jax_flash's kernels are imported only once the arguments
are parsed, so --help works anywhere.
"""

from __future__ import annotations

import argparse
import math

from jax_flash.benchmark import (DTYPES, add_timing_arguments, print_errors, short_error, time_ms_alternating,
                                 write_json)

L2_BYTES = 256 << 20  # input sets rotate through at least this many cache bytes, well beyond any L2
KEY_SHAPE = (32, 32768, 128)  # (B, S, page size)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jax_flash.benchmark_paged", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 128], help="sequences (default 1 8 32 128)")
    p.add_argument("--seqlens", type=int, nargs="+", default=[1024, 8192, 32768, 131072],
                   help="keys in each sequence's cache")
    p.add_argument("--page-sizes", type=int, nargs="+", default=[16, 128], help="tokens per page")
    p.add_argument("--heads", type=int, nargs=2, default=[32, 8], metavar=("HQ", "HK"), help="query, kv heads")
    p.add_argument("--d", type=int, default=128, help="head dim (D = Dv)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--key-shape", action="store_true",
                   help="only B=%d, S=%d, page %d (and its num_splits=1 comparison)" % KEY_SHAPE)
    p.add_argument("--split-shapes", nargs="*", default=["1,32768,128", "8,8192,16", "32,32768,128"],
                   metavar="B,S,PAGE", help="shapes timed at num_splits=1 beside the automatic count")
    p.add_argument("--implementation", default="cuda", help='jax_flash implementation timed as "ours"')
    p.add_argument("--no-cudnn", action="store_true", help="skip cuDNN on the contiguous cache")
    p.add_argument("--copy-gib", type=float, default=1.0, help="size of the copy-bandwidth measurement")
    p.add_argument("--max-input-sets", type=int, default=16,
                   help="caches to rotate through for small shapes (at least 256 MiB of them in all)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes and one short repeat: checks the script runs (e.g. on a CPU with xla)")
    add_timing_arguments(p)
    args = p.parse_args(argv)
    if args.key_shape:
        args.batch, args.seqlens, args.page_sizes = [KEY_SHAPE[0]], [KEY_SHAPE[1]], [KEY_SHAPE[2]]
        args.split_shapes = ["%d,%d,%d" % KEY_SHAPE]
    if args.smoke:
        args.batch, args.seqlens, args.page_sizes = [1, 2], [256], [16, 128]
        args.heads, args.d, args.copy_gib = [4, 2], 64, 1 / 64
        args.split_shapes = ["2,256,16"]
        args.repeats, args.iters, args.max_input_sets = 1, 2, 2
    args.split_shapes = [tuple(int(x) for x in s.split(",")) for s in args.split_shapes]
    return args


# ---------------------------------------------------------------------------------------------------------
# Sizes

def kv_bytes(args, batch, seqlen):
    """Bytes of keys and values one decode step reads."""
    import jax.numpy as jnp

    hk = args.heads[1]
    return batch * seqlen * hk * 2 * args.d * jnp.dtype(DTYPES[args.dtype]).itemsize


def input_sets(args, batch, seqlen):
    """Caches to rotate through: enough that small shapes stream from memory, not L2."""
    return max(1, min(args.max_input_sets, math.ceil(L2_BYTES / kv_bytes(args, batch, seqlen))))


def fits(args, batch, seqlen, device, copies=1):
    """None, or why `copies` of the shape's caches cannot be allocated (device memory limit known)."""
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    need = kv_bytes(args, batch, seqlen) * input_sets(args, batch, seqlen) * copies
    if limit and need > 0.9 * (limit - stats.get("bytes_in_use", 0)):
        return f"does not fit ({need / 2**30:.1f} GiB of caches, {limit / 2**30:.1f} GiB device limit)"
    return None


# ---------------------------------------------------------------------------------------------------------
# Inputs: filled by a fused elementwise pattern (no float32 temporary of the cache's size); the values are
# finite and nonzero and do not change the timing.

def _pattern(shape, dtype, seed):
    import jax
    import jax.numpy as jnp

    def fill(key):
        tile = jax.random.normal(key, shape[-2:], jnp.float32)
        lead = jnp.arange(math.prod(shape[:-2]), dtype=jnp.float32).reshape(*shape[:-2], 1, 1)
        return jnp.sin(0.37 * lead + tile).astype(dtype)

    return jax.jit(fill)(jax.random.key(seed))


def paged_inputs(args, batch, seqlen, page_size, dtype):
    """[(q, k_cache, v_cache, page_table, cache_seqlens)] per input set: one pool holding every set's
    pages, each set's sequences on their own pages in random order."""
    import jax.numpy as jnp
    import numpy as np

    hq, hk = args.heads
    sets = input_sets(args, batch, seqlen)
    pages = -(-seqlen // page_size)
    num_pages = sets * batch * pages
    k_cache = _pattern((num_pages, page_size, hk, args.d), dtype, 1)
    v_cache = _pattern((num_pages, page_size, hk, args.d), dtype, 2)
    order = np.random.default_rng(0).permutation(num_pages).astype(np.int32).reshape(sets, batch, pages)
    lengths = jnp.full((batch,), seqlen, jnp.int32)
    q = _pattern((batch, 1, hq, args.d), dtype, 3)
    return [(q, k_cache, v_cache, jnp.asarray(order[i]), lengths) for i in range(sets)]


def contiguous_inputs(args, batch, seqlen, dtype):
    """[(q, k, v)] per input set, k and v (B, S, Hk, D)."""
    hq, hk = args.heads
    q = _pattern((batch, 1, hq, args.d), dtype, 3)
    return [(q, _pattern((batch, seqlen, hk, args.d), dtype, 10 + 2 * i),
             _pattern((batch, seqlen, hk, args.d), dtype, 11 + 2 * i))
            for i in range(input_sets(args, batch, seqlen))]


# ---------------------------------------------------------------------------------------------------------
# The functions under test

def paged_fn(implementation, num_splits):
    import jax

    import jax_flash

    return jax.jit(lambda q, k, v, table, lengths: jax_flash.paged_attention(
        q, k, v, table, lengths, num_splits=num_splits, implementation=implementation))


def cudnn_fn():
    import jax

    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))


def auto_splits(args, batch, seqlen, page_size):
    """The automatic split plan (jax_flash.ops.SplitPlan) of a decode step."""
    from jax_flash.ops import choose_split_plan

    hq, hk = args.heads
    return choose_split_plan(batch=batch, seqlen_q=1, num_heads_q=hq, num_heads_k=hk,
                             max_pages=-(-seqlen // page_size), page_size=page_size)


def splits_label(num_splits, halving):
    """"4" for 4 equal parts, "7h" for 7 halving ones."""
    return f"{num_splits}{'h' if halving else ''}"


def measure(cells, nbytes, args, together=True):
    """[{ms, gbps, error}] of cells, [(step, make_inputs)], their repeats taken in turn (time_ms_alternating);
    together=False (their inputs do not fit at once): one cell after the other. A cell that fails (out of
    memory, a refused shape) records its error, not raised; the others are timed."""
    import jax

    if not together:
        return [measure([cell], nbytes, args)[0] for cell in cells]
    ready, results = [], []
    try:
        for step, make_inputs in cells:
            try:
                sets = make_inputs()
                jax.block_until_ready(step(*sets[0]))  # compiles: a refused shape fails here
                ready.append((step, sets))
                results.append(None)
            except Exception as err:
                results.append(dict(ms=None, gbps=None, error=short_error(err)))
        try:
            times = iter(time_ms_alternating(ready, args.repeats, args.iters) if ready else [])
            timed = [dict(ms=ms, gbps=nbytes / ms / 1e6, error=None) for ms in times]
        except Exception as err:
            timed = [dict(ms=None, gbps=None, error=short_error(err))] * len(ready)
        timed = iter(timed)
        return [r if r is not None else next(timed) for r in results]
    finally:
        del ready
        jax.clear_caches()


def copy_bandwidth(args, dtype):
    """GB/s of an elementwise op over --copy-gib GiB: its read and its write over the time."""
    import jax
    import jax.numpy as jnp

    n = int(args.copy_gib * 2**30) // jnp.dtype(dtype).itemsize
    step = jax.jit(lambda x: -x)  # a plain copy may be elided; a negation is read once and written once
    [rec] = measure([(step, lambda: [(_pattern((n // 1024, 1024), dtype, 7),)])],
                    2 * n * jnp.dtype(dtype).itemsize, args)
    return dict(rec, backend="copy", bytes=2 * n * jnp.dtype(dtype).itemsize)


# ---------------------------------------------------------------------------------------------------------
# Running and reporting

def run(args):
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(DTYPES[args.dtype])
    device = jax.devices()[0]
    hq, hk = args.heads
    print(f"device: {device.device_kind}, jax {jax.__version__}, dtype {args.dtype}, Hq/Hk {hq}/{hk}, "
          f"D {args.d}, decode (Sq = 1)", flush=True)
    copy = copy_bandwidth(args, dtype)
    copy_gbps = copy["gbps"]
    print("copy bandwidth: " + (f"{copy_gbps:.0f} GB/s" if copy_gbps else "n/a") + "\n", flush=True)
    records = [copy]
    print_header()
    for batch in args.batch:
        for seqlen in args.seqlens:
            nbytes = kv_bytes(args, batch, seqlen)
            too_big = fits(args, batch, seqlen, device)
            base = dict(batch=batch, seqlen=seqlen, heads_q=hq, heads_k=hk, d=args.d, dtype=args.dtype,
                        bytes=nbytes)
            for page_size in args.page_sizes:
                plan = auto_splits(args, batch, seqlen, page_size)
                ours = dict(base, backend="ours", page_size=page_size, num_splits=plan.num_splits,
                            split_halving=plan.halving, ms=None, gbps=None, error=too_big)
                cudnn = dict(base, backend="cudnn", page_size=page_size, ms=None, gbps=None,
                             error="skipped (--no-cudnn)" if args.no_cudnn else too_big)
                cells = [(paged_fn(args.implementation, None),
                          lambda: paged_inputs(args, batch, seqlen, page_size, dtype))]
                if cudnn["error"] is None:
                    cells.append((cudnn_fn(), lambda: contiguous_inputs(args, batch, seqlen, dtype)))
                alternating = too_big is None and fits(args, batch, seqlen, device, copies=len(cells)) is None
                if too_big is None:
                    for rec, result in zip((ours, cudnn), measure(cells, nbytes, args, together=alternating)):
                        rec.update(result)
                ours["alternating"] = cudnn["alternating"] = alternating
                records += [cudnn, ours]
                print_row(ours, cudnn, copy_gbps)
    records += run_split_comparison(args, dtype, device)
    print_errors(records)
    return device.device_kind, records


def run_split_comparison(args, dtype, device):
    """Ours at num_splits=1 beside the automatic count, for args.split_shapes."""
    if not args.split_shapes:
        return []
    print("\nnum_splits=1 vs automatic (1/auto: the automatic count's speedup):")
    print(SPLIT_COLUMNS.format("shape (B,S,page)", "auto", "auto ms", "1 split ms", "1/auto"))
    hq, hk = args.heads
    records = []
    for batch, seqlen, page_size in args.split_shapes:
        nbytes = kv_bytes(args, batch, seqlen)
        too_big = fits(args, batch, seqlen, device)
        auto = auto_splits(args, batch, seqlen, page_size)
        recs = [dict(batch=batch, seqlen=seqlen, page_size=page_size, heads_q=hq, heads_k=hk, d=args.d,
                     dtype=args.dtype, bytes=nbytes, backend=f"ours splits={label}", num_splits=splits,
                     split_halving=halving, ms=None, gbps=None, error=too_big)
                for label, splits, halving in (("auto", auto.num_splits, auto.halving), ("1", 1, False))]
        if too_big is None:
            cells = [(paged_fn(args.implementation, given),
                      lambda: paged_inputs(args, batch, seqlen, page_size, dtype)) for given in (None, 1)]
            together = fits(args, batch, seqlen, device, copies=2) is None
            for rec, result in zip(recs, measure(cells, nbytes, args, together)):
                rec.update(result)
        records += recs
        a, one = recs[0]["ms"], recs[1]["ms"]
        print(SPLIT_COLUMNS.format(f"{batch},{seqlen},{page_size}", splits_label(*auto), _ms(a), _ms(one),
                                   f"{one / a:.2f}x" if a and one else "n/a"), flush=True)
    return records


COLUMNS = "{:<20} {:>6} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10}"
SPLIT_COLUMNS = "{:<20} {:>6} {:>10} {:>10} {:>8}"


def print_header():
    print(COLUMNS.format("shape (B,S,page)", "splits", "ours ms", "ours GB/s", "ours/copy", "cudnn ms",
                         "cudnn GB/s", "ours/cudnn"))


def _ms(x):
    return f"{x:.3f}" if x is not None else "n/a"


def _gbps(x):
    if x is None:
        return "n/a"
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"  # tiny --smoke numbers still show


def print_row(ours, cudnn, copy_gbps):
    def ratio(a, b, digits=2):
        return f"{a / b:.{digits}f}" if a and b else "n/a"

    shape = f"{ours['batch']},{ours['seqlen']},{ours['page_size']}" + ("" if ours["alternating"] else " ~")
    splits = splits_label(ours["num_splits"], ours["split_halving"])
    print(COLUMNS.format(shape, splits, _ms(ours["ms"]), _gbps(ours["gbps"]), ratio(ours["gbps"], copy_gbps),
                         _ms(cudnn["ms"]), _gbps(cudnn["gbps"]), ratio(ours["gbps"], cudnn["gbps"], 3)), flush=True)


def main(argv=None):
    args = parse_args(argv)
    device, records = run(args)
    if args.json:
        write_json(args.json, device, args, records)


if __name__ == "__main__":
    main()
