"""Serve the LM of lm_model.py with continuous batching over a paged KV cache; check it against dense decoding.

    python examples/serve.py                          # CPU (reference path): under a minute on 2 cores
    python examples/serve.py --implementation cuda    # on a GPU with the kernels

1. Train the model briefly on train_lm.py's copy task, so that its greedy predictions are confident: the
   paged and the dense attention kernels round differently (bf16), and a confident argmax does not flip.
   The smallest margins come from the first block of a sequence, where the task has no answer to learn.
2. Queue requests: prompts of 1..40 tokens cut from copy-task sequences, each asking for its own number of
   new tokens (greedy).
3. Serve the queue (serve()): a fixed number of batch slots, fewer than the requests, so requests wait and
   slots are reused. A request is admitted when a slot is free and the page allocator can hand it the pages
   its whole sequence needs; the pages go back to the free list when it finishes. Every step packs at most
   `token_budget` new tokens along one token axis with cu_seqlens: one token for each decoding sequence, then
   chunks of prompts (chunked prefill). One jitted function with static shapes runs a step (make_step): per
   layer, the new keys and values are written into the paged cache (jax_flash.paged_kv_update) and the new
   queries attend over it (jax_flash.paged_attention). The caches are donated, so they update in place.
4. Serve the same queue with another (token budget, slots) setting, regenerate every request alone with the
   dense model (lm_model.forward: flash_attention over the whole sequence at every step), and exit 1 unless
   all three agree token for token for every request.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_flash
from lm_model import Config, attention_output, embed, forward, init_params, logits, mlp, qkv
from train_lm import adam_init, copy_task_batch, make_train_step

PAGE_SIZE = 8  # tokens per cache page (jax_flash takes multiples of 8 in [8, 256])
PERIOD = 8  # the copy task's repeated block
SETTINGS = ((16, 4), (5, 2))  # (token budget per step, batch slots) of the two servers compared


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps before serving")
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--pages", type=int, default=20, help=f"pages of {PAGE_SIZE} tokens in the KV cache")
    p.add_argument("--implementation", choices=["cuda", "xla"], default=None,
                   help="jax_flash implementation (default: cuda where built and on a GPU, else xla)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train(cfg: Config, steps: int, key, *, implementation=None):
    """Parameters after `steps` Adam steps on the copy task (train_lm.py's data and step)."""
    key_init, key_data = jax.random.split(key)
    params = init_params(key_init, cfg)
    opt_state = adam_init(params)
    train_step = make_train_step(cfg, batch=16, seq=cfg.max_seq, period=PERIOD, lr=1e-2,
                                 implementation=implementation)
    loss = float("nan")
    for key in jax.random.split(key_data, steps):
        params, opt_state, loss = train_step(params, opt_state, key)
    return params, float(loss)


@dataclasses.dataclass
class Request:
    rid: int
    prompt: list[int]
    max_new: int  # tokens to generate


def make_requests(cfg: Config, n: int, seed: int, max_prompt: int = 40, max_new: int = 24) -> list[Request]:
    """Prompts of 1..max_prompt tokens (both ends included) cut from copy-task sequences; any max_new >= 1."""
    rng = np.random.default_rng(seed)
    tokens, _ = copy_task_batch(jax.random.PRNGKey(seed), n, cfg.max_seq, PERIOD, cfg.vocab)
    lengths = rng.integers(1, max_prompt + 1, n)
    lengths[:2] = 1, max_prompt
    requests = []
    for rid, (row, length) in enumerate(zip(np.asarray(tokens).tolist(), lengths.tolist())):
        new = int(rng.integers(1, min(max_new, cfg.max_seq - length) + 1))
        requests.append(Request(rid, row[:length], new))
    return requests


class PageAllocator:
    """A free list of cache pages. It starts shuffled, so page tables come out in arbitrary order."""

    def __init__(self, num_pages: int, seed: int):
        self.num_pages = num_pages
        self.free = np.random.default_rng(seed).permutation(num_pages).tolist()

    def take(self, n: int) -> list[int] | None:
        if n > len(self.free):
            return None
        pages, self.free = self.free[:n], self.free[n:]
        return pages

    def give_back(self, pages: list[int]):
        self.free.extend(pages)


@dataclasses.dataclass
class Sequence:
    """A request in a batch slot: its tokens so far and how many of them the cache holds."""
    request: Request
    pages: list[int]
    admitted: int  # step
    tokens: list[int] = dataclasses.field(init=False)  # prompt + generated
    cached: int = 0

    def __post_init__(self):
        self.tokens = list(self.request.prompt)

    @property
    def generated(self) -> list[int]:
        return self.tokens[len(self.request.prompt):]

    @property
    def pending(self) -> int:
        """Tokens not in the cache yet: 1 while decoding, more while the prompt is being prefilled."""
        return len(self.tokens) - self.cached


def greedy(row_logits):
    """(..., vocab) -> argmax (int32) and the margin between the two largest logits."""
    top2 = jax.lax.top_k(row_logits, 2)[0]
    return jnp.argmax(row_logits, axis=-1).astype(jnp.int32), top2[..., 0] - top2[..., 1]


def init_caches(cfg: Config, num_pages: int):
    shape = (num_pages, PAGE_SIZE, cfg.n_kv_heads, cfg.head_dim)
    return [(jnp.zeros(shape, cfg.attn_dtype), jnp.zeros(shape, cfg.attn_dtype)) for _ in range(cfg.n_layers)]


def make_step(cfg: Config, token_budget: int, *, implementation=None):
    """The jitted server step; shapes are fixed by (token budget T, slots B, pages, max_pages).

    step(params, caches, tokens (T,), positions (T,), cu_seqlens (B+1,), cache_seqlens (B,), page_table
    (B, max_pages)) -> (caches, next token (B,), margin (B,)). Slot b's new tokens are rows
    [cu_seqlens[b], cu_seqlens[b+1]) and go to cache positions cache_seqlens[b]...; rows after cu_seqlens[-1]
    are padding. The next token is the greedy prediction of the slot's last new row (meaningless for a slot
    without new rows). caches (a list of (k, v) per layer) is donated.
    """

    def step(params, caches, tokens, positions, cu_seqlens, cache_seqlens, page_table):
        seqlens_after = cache_seqlens + jnp.diff(cu_seqlens)  # the new queries' own keys included
        x = embed(params, tokens[None])
        new_caches = []
        for layer, (k_cache, v_cache) in zip(params["layers"], caches):
            q, k, v = qkv(layer, x, positions[None], cfg)
            k_cache, v_cache = jax_flash.paged_kv_update(k_cache, v_cache, k[0], v[0], page_table, cache_seqlens,
                                                         cu_seqlens_new=cu_seqlens)
            attn = jax_flash.paged_attention(q[0], k_cache, v_cache, page_table, seqlens_after,
                                             cu_seqlens_q=cu_seqlens, max_seqlen_q=token_budget, causal=True,
                                             implementation=implementation)
            x = mlp(layer, attention_output(layer, x, attn[None]))
            new_caches.append((k_cache, v_cache))
        last_rows = jnp.maximum(cu_seqlens[1:] - 1, 0)
        return (new_caches, *greedy(logits(params, x[0, last_rows])))

    return jax.jit(step, donate_argnums=1)


def plan_step(slots: list[Sequence | None], token_budget: int) -> list[int]:
    """New tokens of each slot this step: decoding sequences (one token behind the cache) first, then prompt
    chunks in the order the requests were admitted, until the budget is spent."""
    order = sorted((i for i, seq in enumerate(slots) if seq),
                   key=lambda i: (slots[i].pending > 1, slots[i].admitted, i))
    counts, left = [0] * len(slots), token_budget
    for i in order:
        counts[i] = min(slots[i].pending, left)
        left -= counts[i]
    return counts


def pack_step(slots: list[Sequence | None], counts: list[int], token_budget: int, max_pages: int):
    """Host arrays of one step. Empty slots are sequences of length 0 with nothing cached."""
    tokens, positions = np.zeros(token_budget, np.int32), np.zeros(token_budget, np.int32)
    cu_seqlens = np.zeros(len(slots) + 1, np.int32)
    cache_seqlens = np.zeros(len(slots), np.int32)
    page_table = np.zeros((len(slots), max_pages), np.int32)  # unused entries are never read or written
    for i, (seq, n) in enumerate(zip(slots, counts)):
        cu_seqlens[i + 1] = cu_seqlens[i] + n
        if seq is None:
            continue
        start = cu_seqlens[i]
        tokens[start:start + n] = seq.tokens[seq.cached:seq.cached + n]
        positions[start:start + n] = np.arange(seq.cached, seq.cached + n)
        cache_seqlens[i] = seq.cached
        page_table[i, :len(seq.pages)] = seq.pages
    return tokens, positions, cu_seqlens, cache_seqlens, page_table


@dataclasses.dataclass
class ServeLog:
    steps: int = 0
    seconds: float = 0.0
    min_margin: float = float("inf")
    spans: dict = dataclasses.field(default_factory=dict)  # rid -> (admitted, finished) steps
    pages: dict = dataclasses.field(default_factory=dict)  # rid -> its page table
    free_pages_at_end: int = 0


def serve(params, cfg: Config, requests: list[Request], *, token_budget: int, slots: int, num_pages: int,
          seed: int = 0, implementation=None):
    """Generate every request greedily with continuous batching; returns ({rid: new tokens}, ServeLog)."""
    if token_budget < slots:
        raise ValueError(f"token_budget ({token_budget}) must be at least slots ({slots}): every decoding "
                         "sequence needs one token per step")
    max_pages = -(-cfg.max_seq // PAGE_SIZE)
    step_fn = make_step(cfg, token_budget, implementation=implementation)
    caches = init_caches(cfg, num_pages)
    allocator = PageAllocator(num_pages, seed)
    waiting = collections.deque(requests)
    batch: list[Sequence | None] = [None] * slots
    outputs, log = {}, ServeLog()
    start = time.perf_counter()
    while waiting or any(batch):
        for i in range(slots):  # admit in arrival order while a slot and the pages are free
            if batch[i] is None and waiting:
                request = waiting[0]
                pages = allocator.take(-(-(len(request.prompt) + request.max_new) // PAGE_SIZE))
                if pages is None:
                    break
                batch[i] = Sequence(waiting.popleft(), pages, admitted=log.steps)
                log.pages[request.rid] = pages
        if not any(batch):
            raise ValueError(f"request {waiting[0].rid} needs more pages than the cache has ({num_pages})")

        counts = plan_step(batch, token_budget)
        caches, next_tokens, margins = step_fn(params, caches, *pack_step(batch, counts, token_budget, max_pages))
        next_tokens, margins = np.asarray(next_tokens), np.asarray(margins)
        log.steps += 1

        for i, (seq, n) in enumerate(zip(batch, counts)):
            if seq is None or n == 0:
                continue
            seq.cached += n
            if seq.cached == len(seq.tokens):  # the cache is up to date: the last row predicts the next token
                seq.tokens.append(int(next_tokens[i]))
                log.min_margin = min(log.min_margin, float(margins[i]))
            if len(seq.generated) == seq.request.max_new:
                outputs[seq.request.rid] = seq.generated
                log.spans[seq.request.rid] = (seq.admitted, log.steps)
                allocator.give_back(seq.pages)
                batch[i] = None
    log.seconds = time.perf_counter() - start
    log.free_pages_at_end = len(allocator.free)
    return outputs, log


def dense_generate(params, cfg: Config, requests: list[Request], *, implementation=None):
    """Each request alone: at every step run lm_model.forward (flash_attention, causal) over the whole sequence
    and take the greedy token of its last position. Returns ({rid: new tokens}, smallest top1-top2 margin).

    The sequence is padded on the right to cfg.max_seq so that one executable serves every length; causal
    attention keeps the padding out of the positions that are read."""

    @jax.jit
    def next_token(params, tokens, length):
        row = forward(params, tokens[None], cfg, implementation=implementation)[0, length - 1]
        return greedy(row)

    outputs, min_margin = {}, float("inf")
    for request in requests:
        tokens = list(request.prompt)
        for _ in range(request.max_new):
            padded = np.zeros(cfg.max_seq, np.int32)
            padded[:len(tokens)] = tokens
            token, margin = next_token(params, padded, len(tokens))
            tokens.append(int(token))
            min_margin = min(min_margin, float(margin))
        outputs[request.rid] = tokens[len(request.prompt):]
    return outputs, min_margin


def follows_pattern(request: Request, generated: list[int]) -> bool | None:
    """Does the output continue the prompt's repeated block? None when the prompt holds no whole block."""
    if len(request.prompt) < PERIOD:
        return None
    seq = request.prompt + generated
    return all(seq[p] == seq[p - PERIOD] for p in range(len(request.prompt), len(seq)))


def main(argv=None):
    args = parse_args(argv)
    cfg = Config()
    print(f"devices {jax.devices()}; implementation {args.implementation or 'auto'}; {cfg}")
    start = time.perf_counter()
    params, loss = train(cfg, args.steps, jax.random.PRNGKey(args.seed), implementation=args.implementation)
    print(f"trained {args.steps} steps on the copy task: loss {loss:.4f} ({time.perf_counter() - start:.1f} s)")

    requests = make_requests(cfg, args.requests, args.seed)
    runs = {}
    for token_budget, slots in SETTINGS:
        name = f"budget {token_budget}, {slots} slots"
        outputs, log = serve(params, cfg, requests, token_budget=token_budget, slots=slots, num_pages=args.pages,
                             seed=args.seed, implementation=args.implementation)
        runs[name] = outputs, log
        print(f"served {len(requests)} requests ({name}, {args.pages} pages): {log.steps} steps in "
              f"{log.seconds:.1f} s; smallest greedy margin {log.min_margin:.3f}")
        if log.free_pages_at_end != args.pages:
            print(f"FAIL: {args.pages - log.free_pages_at_end} pages were not handed back", file=sys.stderr)
            return 1
    start = time.perf_counter()
    dense, dense_margin = dense_generate(params, cfg, requests, implementation=args.implementation)
    print(f"dense reference (each request alone, whole sequence each step): {time.perf_counter() - start:.1f} s; "
          f"smallest top1-top2 logit margin {dense_margin:.3f}")

    first_log = next(iter(runs.values()))[1]
    mismatches = 0
    print("request  prompt  new  pages (first run)               steps per run  equal  continues pattern")
    for r in requests:
        equal = all(outputs[r.rid] == dense[r.rid] for outputs, _ in runs.values())
        mismatches += not equal
        spans = "  ".join(f"{log.spans[r.rid][0]:>2}-{log.spans[r.rid][1]:<3}" for _, log in runs.values())
        pattern = {None: "-", True: "yes", False: "no"}[follows_pattern(r, dense[r.rid])]
        print(f"{r.rid:>7}  {len(r.prompt):>6}  {r.max_new:>3}  {str(first_log.pages[r.rid]):<31} {spans:<13}  "
              f"{'yes' if equal else 'NO':>5}  {pattern}")
        if not equal:
            for name, (outputs, _) in runs.items():
                print(f"         {name}: {outputs[r.rid]}")
            print(f"         dense: {dense[r.rid]}")
    if mismatches:
        print(f"FAIL: {mismatches} of {len(requests)} requests differ between the servers and the dense model",
              file=sys.stderr)
        return 1
    print(f"all {len(requests)} requests: the same tokens from both servers and the dense model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
