// The unit of work a tile scheduler hands a CTA, and the interface every scheduler of kernels/sched/ follows.
//
// A scheduler is a small struct that knows the grid of its kernel (host side: grid()) and maps this CTA's
// blockIdx to a WorkTile (device side: get_tile()). The kernels read blockIdx nowhere else, so a new way of
// laying out work (a persistent scheduler looping over tiles with an atomic counter, say) replaces the
// scheduler and leaves mainloops and epilogues alone. A persistent scheduler would add next(tile), returning an
// invalid tile when the CTA's work is done; the one-tile-per-CTA schedulers here have no next.
#pragma once

namespace jax_flash {

// Which axis a scheduler's blocks cut: query blocks (forward, dq) or key blocks (dK/dV).
enum class TileAxis { kQuery, kKey };

struct WorkTile {
  int block;  // query block (or, for dK/dV, key block) of the sequence
  int head;   // query head, or kv head for kernels that own a whole kv group
  int bidb;   // sequence (batch index); < 0: this CTA has no tile (packed grids are an upper bound)
  int split;  // split of the key range (paged split-KV); 0 elsewhere

  __device__ bool valid() const { return bidb >= 0; }
};

}  // namespace jax_flash
