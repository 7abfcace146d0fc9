// The walk of one dK/dV CTA: its key block of one (sequence, kv head), and the (query head, query block) steps
// that can see it, head-major over the kv group. The GQA sum over query heads happens inside the CTA in this
// fixed order, so dK / dV are deterministic.
#pragma once

#include "kernels/common/mask.h"
#include "kernels/common/seqlen.h"
#include "kernels/params.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

// The work of one dK/dV CTA: key block n_block of sequence bidb and kv head bidhk, and the `steps`
// (query head, query block) pairs that can see it, head-major over the kv group.
template <int kBlockM, int kBlockN>
struct DkdvWork {
  int n_block, bidb, bidhk, n0;
  SeqlenInfo seq;
  AttnMask mask;
  int m_min, blocks_m, steps;

  // tile: this CTA's valid (key block, kv head, sequence) from its scheduler.
  __device__ DkdvWork(const AttnBwdParams& params, WorkTile tile)
      : n_block(tile.block),
        bidb(tile.bidb),
        bidhk(tile.head),
        n0(tile.block * kBlockN),
        seq(SeqlenInfo::make(params, tile.bidb)),
        mask(seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right) {
    int m_max;
    mask.template m_block_range<kBlockM, kBlockN>(n_block, m_min, m_max);
    blocks_m = m_max - m_min;
    steps = blocks_m * params.kv_group;
  }

  // Query head and query block of step `step`.
  __device__ void query_tile(int step, int kv_group, int& bidh, int& m_block) const {
    const int g = step / blocks_m;
    m_block = m_min + step - g * blocks_m;
    bidh = bidhk * kv_group + g;
  }
};

}  // namespace jax_flash
