// One unit of work of the dense forward kernels: a query block of one (sequence, head), where its rows live,
// and the key blocks it sees. Built from the scheduler's WorkTile by every thread of the CTA, so all of them
// (and, in a warp-specialized kernel, the producer and the consumers) agree on the key range without talking.
#pragma once

#include "kernels/common/mask.h"
#include "kernels/common/seqlen.h"
#include "kernels/params.h"
#include "kernels/sched/work_tile.h"

namespace jax_flash {

struct FwdBlockWork {
  int m_block;  // query block of the sequence
  int bidh;     // query head
  int bidb;     // sequence
  int bidh_kv;  // kv head (GQA)
  SeqlenInfo seq;
  AttnMask mask;
  int n_min, n_max;  // key blocks [n_min, n_max) hold a key visible to some row; streamed last to first

  template <int kBlockM, int kBlockN>
  __device__ static FwdBlockWork make(const AttnFwdParams& p, const WorkTile& tile) {
    const SeqlenInfo seq = SeqlenInfo::make(p, tile.bidb);
    const AttnMask mask(seq.seqlen_q, seq.seqlen_k, p.window_left, p.window_right);
    FwdBlockWork w{tile.block, tile.head, tile.bidb, kv_head_of(tile.head, p.kv_group), seq, mask, 0, 0};
    mask.n_block_range<kBlockM, kBlockN>(tile.block, w.n_min, w.n_max);
    return w;
  }

  __device__ int n_tiles() const { return n_max - n_min; }
  // The tensor-map coordinates of this sequence: dense layouts index the batch mode, packed ones (one batch
  // of Tq / Tk rows) start the sequence at its first token.
  __device__ int batch_coord() const { return seq.packed ? 0 : bidb; }
  __device__ int q_row0() const { return int(seq.q_start); }
  __device__ int k_row0() const { return int(seq.k_start); }
};

}  // namespace jax_flash
