"""Sequence layouts for context parallelism: which rank holds which tokens, reordering a global sequence into
layout order and back (dense and packed), position ids, padding packed sequences, and each rank's used rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_flash.parallel as cp
from jax_flash.parallel._shard_map import shard_map
from jax_flash.parallel.varlen_layouts import local_seqused


def test_zigzag_rank_holds_chunks_r_and_2p_minus_1_minus_r():
    size, chunk = 4, 3
    order = np.asarray(cp.layout_positions(2 * size * chunk, size, "zigzag")).reshape(size, 2, chunk)
    for r in range(size):
        assert list(order[r, 0]) == list(range(r * chunk, (r + 1) * chunk))
        last = 2 * size - 1 - r
        assert list(order[r, 1]) == list(range(last * chunk, (last + 1) * chunk))


def test_striped_and_contiguous_assignment():
    size, n = 4, 3
    striped = np.asarray(cp.layout_positions(size * n, size, "striped")).reshape(size, n)
    assert all(list(striped[r]) == [r + size * j for j in range(n)] for r in range(size))
    contiguous = np.asarray(cp.layout_positions(size * n, size, "contiguous"))
    assert list(contiguous) == list(range(size * n))


@pytest.mark.parametrize("layout", cp.LAYOUTS)
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_to_layout_round_trip_and_positions(layout, size):
    seq = 2 * size * 5
    x = jnp.arange(2 * seq * 3, dtype=jnp.float32).reshape(2, seq, 3)
    y = cp.to_layout(x, size, layout)
    assert np.array_equal(cp.from_layout(y, size, layout), x)
    positions = cp.layout_positions(seq, size, layout)
    assert np.array_equal(y[0, :, 0] / 3, positions)  # x[0, t, 0] = 3 t
    rows = np.asarray(positions).reshape(size, -1)
    assert all(np.all(np.diff(r) > 0) for r in rows), "each rank's rows in increasing position order"


def test_local_positions_inside_shard_map():
    size, n = 4, 6
    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")[:size]), ("cp",))
    local = shard_map(lambda: cp.local_positions(n, axis_name="cp", layout="zigzag")[None], mesh=mesh,
                      in_specs=(), out_specs=jax.sharding.PartitionSpec("cp"))()
    assert np.array_equal(np.asarray(local).reshape(-1), cp.layout_positions(size * n, size, "zigzag"))


def _packing(lengths, multiple, tail):
    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lengths)]), jnp.int32)
    padded, used = cp.padded_cu_seqlens(cu, multiple)
    return cu, padded, used, int(padded[-1]) + tail


def test_padding_packed_sequences():
    cu, padded, used, total = _packing([5, 0, 8, 1], 4, 4)
    assert list(np.asarray(padded)) == [0, 8, 8, 16, 20] and list(np.asarray(used)) == [5, 0, 8, 1]
    x = jnp.arange(1, 15, dtype=jnp.float32)  # 14 rows: the sequences' rows
    y = cp.pad_packed(x, cu, padded, total)
    assert list(np.asarray(y)) == [1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0, 0, 0, 0, 0, 0]
    assert np.array_equal(cp.unpad_packed(y, cu, padded, 14), x)


@pytest.mark.parametrize("layout", cp.LAYOUTS)
@pytest.mark.parametrize("size", [1, 2, 4])
def test_varlen_layout_round_trip_positions_and_used_rows(layout, size):
    lengths = [5, 0, 13, 1, 7]
    multiple = cp.chunk_multiple(size, layout)
    cu, padded, used, total = _packing(lengths, multiple, 2 * multiple)
    x = jnp.arange(total, dtype=jnp.int32)
    y = cp.varlen_to_layout(x, padded, size, layout)
    assert np.array_equal(cp.varlen_from_layout(y, padded, size, layout), x)
    assert sorted(np.asarray(y)) == list(range(total)), "a permutation"

    # Positions inside the sequence, and rank r's local sequence i: rows [cu[i] / P, cu[i + 1] / P).
    positions = np.asarray(cp.varlen_layout_positions(padded, total, size, layout))
    natural_start = np.asarray(y) - positions
    local_total = total // size
    padded_np, used_np = np.asarray(padded), np.asarray(used)
    for r in range(size):
        local_used = np.asarray(local_seqused(padded, used, r, size, layout)[0])
        for i in range(len(lengths)):
            lo, hi = padded_np[i] // size, padded_np[i + 1] // size
            seq_rows = np.arange(lo, hi) + r * local_total
            assert np.all(natural_start[seq_rows] == padded_np[i])
            assert np.all(np.diff(positions[seq_rows]) > 0)
            # the used rows on this rank are a prefix of its span, as many as positions < used
            valid = positions[seq_rows] < used_np[i]
            assert local_used[i] == valid.sum() and np.all(valid[:local_used[i]])


def test_layout_errors():
    with pytest.raises(ValueError, match="layout must be one of"):
        cp.to_layout(jnp.zeros((1, 8)), 2, "diagonal")
    with pytest.raises(ValueError, match="multiple of 8"):
        cp.to_layout(jnp.zeros((1, 12, 1, 1)), 4, "zigzag")
    with pytest.raises(ValueError, match="multiple of 4"):
        cp.from_layout(jnp.zeros((1, 6, 1, 1)), 4, "striped")
    with pytest.raises(ValueError, match="multiple of 8"):
        cp.varlen_to_layout(jnp.zeros((12, 1, 1)), jnp.array([0, 12], jnp.int32), 4, "zigzag")
