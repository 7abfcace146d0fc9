"""examples/serve.py on the CPU: a small queue served with continuous batching over the paged cache gives every
request the tokens of dense greedy decoding, whatever the token budget and the number of slots."""

import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import serve  # noqa: E402
from lm_model import Config  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    cfg = Config()
    params, _ = serve.train(cfg, 100, jax.random.PRNGKey(0))
    return cfg, params


def test_allocator_hands_pages_out_and_back():
    allocator = serve.PageAllocator(6, seed=0)
    pages = allocator.take(4)
    assert len(set(pages)) == 4 and allocator.take(3) is None
    allocator.give_back(pages)
    assert sorted(allocator.free) == list(range(6))


def test_plan_and_pack_one_step():
    # slot 0: decoding (one token behind the cache); slot 1: empty; slot 2: a prompt of 7 tokens, 2 cached.
    decoding = serve.Sequence(serve.Request(0, [3, 4, 5], 4), pages=[5], admitted=0)
    decoding.tokens.append(9)
    decoding.cached = 3
    prefill = serve.Sequence(serve.Request(1, [1, 2, 3, 4, 5, 6, 7], 2), pages=[2, 0], admitted=1)
    prefill.cached = 2
    slots = [decoding, None, prefill]
    counts = serve.plan_step(slots, token_budget=4)
    assert counts == [1, 0, 3]
    tokens, positions, cu_seqlens, cache_seqlens, page_table = serve.pack_step(slots, counts, 4, max_pages=3)
    assert tokens.tolist() == [9, 3, 4, 5]
    assert positions.tolist() == [3, 2, 3, 4]
    assert cu_seqlens.tolist() == [0, 1, 1, 4]
    assert cache_seqlens.tolist() == [3, 0, 2]
    assert page_table.tolist() == [[5, 0, 0], [0, 0, 0], [2, 0, 0]]


def test_served_tokens_equal_dense_decoding(trained):
    cfg, params = trained
    requests = serve.make_requests(cfg, 5, seed=1, max_prompt=20, max_new=6)
    want, margin = serve.dense_generate(params, cfg, requests)
    assert margin > 0.1
    for token_budget, slots in ((4, 2), (9, 3)):
        got, log = serve.serve(params, cfg, requests, token_budget=token_budget, slots=slots, num_pages=8)
        assert got == want, (token_budget, slots)
        assert log.free_pages_at_end == 8
        assert max(admitted for admitted, _ in log.spans.values()) > 0  # some request waited for a slot
