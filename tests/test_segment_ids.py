"""Documents packed along rows (segment ids): conversion to cu_seqlens/seqused and attention per document."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash
from jax_flash import _ffi, reference

IDS = np.array([[1, 1, 0, 2, 2, 2, 0, 0, 3, 3],
                [0, 4, 4, 4, 4, 5, 5, 6, 0, 7]], np.int32)


def _documents(ids_row):
    """(start, length) of each run of equal nonzero ids."""
    runs, start = [], None
    for i, x in enumerate(list(ids_row) + [0]):
        if start is not None and (x != ids_row[start]):
            runs.append((start, i - start))
            start = None
        if start is None and x != 0:
            start = i
    return runs


def test_conversion():
    cu, used = jax_flash.segment_ids_to_varlen(jnp.asarray(IDS), 4)
    assert cu.tolist() == [0, 3, 8, 10, 10 + 1, 10 + 5, 10 + 7, 10 + 9, 20]
    assert used.tolist() == [2, 3, 2, 0, 4, 2, 1, 1]


@pytest.mark.parametrize("causal, window", [(True, None), (False, (1, 1))])
@pytest.mark.parametrize("max_segments", [4, 3])  # 3: row 1's fourth document is dropped (output 0)
def test_attention_stays_inside_documents(causal, window, max_segments):
    rng = np.random.default_rng(0)
    b, s = IDS.shape
    q = jnp.asarray(rng.standard_normal((b, s, 4, 16)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((b, s, 2, 16)), jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((b, s, 2, 16)), jnp.bfloat16)
    out, lse = jax.jit(lambda q, k, v, ids: jax_flash.flash_attention(
        q, k, v, causal=causal, window=window, segment_ids=ids, max_segments=max_segments,
        return_lse=True, implementation="xla"))(q, k, v, jnp.asarray(IDS))  # the kernels: test_gpu_varlen.py
    out, lse = np.asarray(out, np.float32), np.asarray(lse)
    assert out.shape == (b, s, 4, 16) and lse.shape == (b, 4, s)
    covered = np.zeros((b, s), bool)
    for row in range(b):
        for start, length in _documents(IDS[row])[:max_segments]:
            rows = slice(start, start + length)
            covered[row, rows] = True
            want = reference.attention(q[row:row + 1, rows], k[row:row + 1, rows], v[row:row + 1, rows],
                                       causal=causal, window=window)
            np.testing.assert_allclose(out[row, rows], np.asarray(want[0], np.float32), atol=1e-2)
    assert np.all(out[~covered] == 0)


def test_segment_id_errors(monkeypatch):
    q = jnp.zeros((2, 10, 4, 16), jnp.bfloat16)
    k = jnp.zeros((2, 10, 2, 16), jnp.bfloat16)
    with pytest.raises(ValueError, match="max_segments must be"):
        jax_flash.flash_attention(q, k, k, segment_ids=jnp.asarray(IDS))
    with pytest.raises(ValueError, match="only meaningful with segment_ids"):
        jax_flash.flash_attention(q, k, k, max_segments=3)
    with pytest.raises(ValueError, match="q segment_ids must have shape"):
        jax_flash.flash_attention(q, k, k, segment_ids=jnp.asarray(IDS[:, :8]), max_segments=3)
    # Where the kernels cannot run, asking for them is an error that says why (simulated on GPU machines).
    monkeypatch.setattr(_ffi, "unavailable_reason", lambda: "no GPU in this test")
    with pytest.raises(ValueError, match="implementation='cuda' cannot run: no GPU in this test"):
        jax_flash.flash_attention(q, k, k, segment_ids=jnp.asarray(IDS), max_segments=3,
                                  implementation="cuda")
