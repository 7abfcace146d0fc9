// Where the backward pass keeps its scratch inside the XLA workspace. Plain C++ (no CUDA; the constexpr
// functions are also called from device code), shared by attn_bwd_workspace_bytes() and the launchers, so
// all always agree on the sizes.
//
//   delta       (layout_batch, Hq, Sq) f32: rowsum(dout * out) - dlse, read by the dk/dv and dq kernels.
//   dq_accum    only when dq is summed by the dK/dV kernel (DqPath below): it adds every key block's dS K into
//               it; a last kernel scales and converts it. Two layouts; the workspace holds the larger of those
//               the call's kernel choice can take:
//     rows      (layout_batch, Hq, Sq, head_dim): the mma.sync and wgmma dK/dV kernels' fp32 atomics;
//     blocks    (layout_batch, Hq, query blocks, block_m * tile_d): the warp-specialized dK/dV kernel's bulk
//               reduce-adds, one block per query block of a sequence (dq_accum_block), each block in the order
//               the kernel's consumer threads hold dQ (kernels/bwd/sm90_ws/dq_accum_blocks.h).
//   semaphores  one int per block, for the deterministic backward's ordered sums into blocks (kOrderedSums).
//               Those sums go into sm90_ws_ordered_dq_copies copies of the blocks (and of the semaphores), one
//               after the other in the workspace.
#pragma once

#include <cstddef>
#include <cstdint>

namespace jax_flash {

// How a backward gets dq (the kernel choice's, host/kernel_choice.h).
enum class DqPath {
  kDqKernel,     // a dq kernel of its own recomputes S and dP per query block: bitwise repeatable
  kAtomicSums,   // the dK/dV kernel adds each key block's dQ into the accumulator as it goes: the fastest, with
                 // run-to-run rounding differences in dq (the adds land in any order)
  kOrderedSums,  // the warp-specialized dK/dV kernel adds them into blocks in key-block order: bitwise repeatable
};

// The atomic dq sums into rows (the mma.sync and wgmma dK/dV kernels) run only where their extra fp32
// accumulator fits the dk/dv kernel's registers. (The warp-specialized kernel sums dQ into blocks at every tile.)
inline constexpr bool bwd_atomic_dq_sums(int head_dim, bool deterministic) {
  return !deterministic && head_dim <= 128;
}

// The deterministic backward's ordered dQ sums into blocks run as this many chains: the key block of turn t at a
// query block adds into copy t % copies, after the key block of turn t - copies, and the convert kernel sums the
// copies in a fixed order. A chain link is one wait, one add and its completion; with every key block at the
// same query block at once (no mask: all walk the query blocks in the same order), the last one waits for all
// links before its own, so two chains halve that start-up. The split layout's 64-key tiles (D192, D256) have
// twice the key blocks of the swapped layout's 128 and take two copies; the swapped layout one
// (kernels/bwd/sm90_ws/tile_size*.h take kOrderedDqCopies from here).
inline constexpr int sm90_ws_ordered_dq_copies(int tile_d) { return tile_d > 128 ? 2 : 1; }

// The blocks layout's block: block_m queries x tile_d head-dim columns (the dK/dV kernel's query step and
// head-dim tile). block_m == 0: no blocks layout.
struct DqAccumBlock {
  int block_m = 0, tile_d = 0;
};

// Blocks per (layout batch, query head). Dense: the ceil(Sq / block_m) blocks of each sequence. Packed (Sq is
// the token count): sequence b's blocks start at block floor(q_start / block_m) + b (dq_accum_block), so two
// sequences never share a block, and every sequence ends by block ceil(Sq / block_m) + b: the packed query
// grid's bound (sched/single_tile_scheduler.h tile_grid_x). The cost: packed calls with many short sequences
// hold up to one block (block_m x tile_d floats) per sequence and head more than rows would (FlashAttention-3's
// accumulator is padded the same way), and zero it all before the dK/dV kernel.
inline constexpr int64_t dq_accum_blocks_per_head(bool packed, int batch, int seqlen_q, int block_m) {
  return (int64_t(seqlen_q) + block_m - 1) / block_m + (packed ? batch : 0);
}

// Index of the block of query block m_block of sequence bidb (first token q_start when packed), head bidh.
inline constexpr int64_t dq_accum_block(bool packed, int bidb, int bidh, int heads_q, int64_t q_start,
                                        int m_block, int block_m, int64_t blocks_per_head) {
  const int64_t first = packed ? q_start / block_m + bidb : 0;
  return (int64_t(packed ? 0 : bidb) * heads_q + bidh) * blocks_per_head + first + m_block;
}

// Floats of the dq accumulator in one layout: blocks when blocks.block_m > 0, else rows. batch: sequences
// (packed: the number of sequences, and Sq the token count).
inline constexpr size_t dq_accum_floats(int batch, bool packed, int seqlen_q, int heads_q, int head_dim,
                                        DqAccumBlock blocks) {
  const size_t heads = size_t(packed ? 1 : batch) * size_t(heads_q);
  if (blocks.block_m == 0) return heads * size_t(seqlen_q) * size_t(head_dim);
  return heads * size_t(dq_accum_blocks_per_head(packed, batch, seqlen_q, blocks.block_m)) *
         size_t(blocks.block_m) * size_t(blocks.tile_d);
}

struct BwdWorkspaceLayout {
  size_t delta_offset, dq_accum_offset, dq_semaphores_offset, total_bytes;
};

inline constexpr size_t bwd_align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// blocks: the blocks layout a dK/dV kernel of the call may take (block_m 0: none). The default backward's
// accumulator is sized for it and, up to head dim 128, for rows; the deterministic backward has blocks and their
// semaphores, in sm90_ws_ordered_dq_copies copies, where there is a blocks layout (the ordered sums), else
// nothing (the dq kernel).
inline constexpr BwdWorkspaceLayout bwd_workspace_layout(int batch, bool packed, int seqlen_q, int heads_q,
                                                         int head_dim, bool deterministic, DqAccumBlock blocks) {
  const size_t delta_bytes = bwd_align256(size_t(packed ? 1 : batch) * size_t(heads_q) * size_t(seqlen_q) *
                                          sizeof(float));
  const size_t in_blocks =
      blocks.block_m > 0 ? dq_accum_floats(batch, packed, seqlen_q, heads_q, head_dim, blocks) : 0;
  size_t accum_floats = 0, semaphores = 0;
  if (!deterministic) {
    const size_t in_rows = bwd_atomic_dq_sums(head_dim, deterministic)
                               ? dq_accum_floats(batch, packed, seqlen_q, heads_q, head_dim, DqAccumBlock{})
                               : 0;
    accum_floats = in_rows > in_blocks ? in_rows : in_blocks;
  } else if (blocks.block_m > 0) {
    const size_t copies = size_t(sm90_ws_ordered_dq_copies(blocks.tile_d));
    accum_floats = copies * in_blocks;
    semaphores = copies * (in_blocks / (size_t(blocks.block_m) * size_t(blocks.tile_d)));
  }
  const size_t semaphores_offset = delta_bytes + bwd_align256(accum_floats * sizeof(float));
  return BwdWorkspaceLayout{0, delta_bytes, semaphores_offset,
                            semaphores_offset + bwd_align256(semaphores * sizeof(int))};
}

}  // namespace jax_flash
