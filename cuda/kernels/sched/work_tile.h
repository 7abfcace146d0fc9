// The unit of work a tile scheduler hands a CTA, and the interface every scheduler of kernels/sched/ follows.
//
// A scheduler is a small struct that knows the grid of its kernel (host side: grid()) and maps this CTA's
// blockIdx to a WorkTile (device side: get_tile()). The kernels read blockIdx nowhere else, so a new way of
// laying out work replaces the scheduler and leaves mainloops and epilogues alone. The persistent one
// (static_persistent_scheduler.h) hands a CTA a sequence of tiles instead: first_index(), next_index(i) and a
// warp-level tile(i); one taking tiles from an atomic counter (longest first over the whole grid) would keep
// that interface.
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
