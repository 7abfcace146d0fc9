// dQ of the warp-specialized Hopper dK/dV kernel, summed in the workspace's blocks layout
// (kernels/bwd/workspace_layout.h): each step's dQ goes from the consumers' registers into one shared-memory
// block, and from there, by one bulk reduce-add of the dq writer warp (cp.reduce.async.bulk .add.f32), into the
// step's block in global memory: one asynchronous transfer per step in the place of kBlockM x D / 2 float2
// atomics from the consumers (FlashAttention-3 sums dQ the same way). A last kernel scales and converts the
// blocks into dq.
//
// A block holds dQ in the order the consumer threads hold it: value v of thread t at float
// (v / 4) * 4 kThreads + 4 t + v % 4. Each thread stores and loads 16-byte vectors and a warp's vector covers
// 512 contiguous bytes, so the shared-memory stores have no bank conflicts; the convert kernel partitions the
// block with the same MMA to find each value's (query, column). Rows past a sequence and columns past head_dim
// are summed like the others (every block belongs to one sequence) and never converted.
//
// Tiles without room for the shared block (the split layout at D256, tile_size_split.h) skip it: the consumers
// add their fragments into the global block directly, float4 atomics in the same order (atomic_add), and no
// writer warp runs; the convert kernel is the same. Their ordered sums are the consumers' (ordered_atomic_add).
//
// Hand-off per step, with two named barriers of the consumers and the writer warp (named_barriers.h):
//   consumers: sync kDqBlockFree | store dQ, fence.proxy.async | arrive kDqBlockFull
//   writer:    sync kDqBlockFull | bulk reduce-add, wait until it has read the block | arrive kDqBlockFree
// The writer arrives on kDqBlockFree once before the first step, so the n-th sync of each barrier meets the
// n-th arrival of the other side.
//
// Ordered adds (kOrdered, for a bitwise-repeatable dQ; FlashAttention-3's deterministic mode does the same):
// the key blocks that see a query block, [n_min, n_max) (AttnMask::n_block_range, the inverse of the dK/dV
// CTA's own query-block range), add to it one after the other, in the order the scheduler launches their CTAs
// (the kernel's scheduler says which: descending, dense and packed, for the ordered mode), so a CTA only
// ever waits on CTAs launched before it, which hold an SM or are done, and no wait blocks forever. Each block
// has a semaphore (an int in the workspace, zeroed with the accumulator) counting the adds done; the writer of key
// block n waits until the count reaches its turn (n - n_min, or n_max - 1 - n descending), adds, waits until
// its add is complete, and increments it. The deterministic backward runs it (bwd_launch.cuh, DqPath::kOrderedSums).
// The adds to a block form Cfg::kOrderedDqCopies chains (workspace_layout.h sm90_ws_ordered_dq_copies): turn t
// adds into copy t % copies of the blocks, as turn t / copies of that copy's semaphore, and the convert kernel
// sums the copies in a fixed order.
// Without the shared block the consumers take the same turn themselves: one thread waits for the count, the
// consumer threads meet, add with float4 atomics, meet again, and one thread increments the count with a
// release (CUTLASS's GenericBarrier pattern: the barrier orders every thread's adds before that release). The
// consumers, not a writer warp, then wait for the turn; dV and dK of the step run meanwhile.
#pragma once

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/array.h>
#include <cutlass/barrier.h>

#include <cstdint>

#include "kernels/bwd/dkdv_work.h"
#include "kernels/bwd/sm90_ws/named_barriers.h"
#include "kernels/bwd/workspace_layout.h"
#include "kernels/common/seqlen.h"
#include "kernels/params.h"
#include "kernels/sched/single_tile_scheduler.h"

namespace jax_flash {

template <class Cfg>
struct Sm90WsDqAccumBlocks {
  static constexpr int kThreads = Cfg::kMmaThreads;    // the consumers, who hold dQ
  static constexpr int kBarrierThreads = kThreads + 32;  // and the writer warp
  static constexpr int kBlockFloats = Cfg::kBlockM * Cfg::kHeadDim;
  static constexpr int kBlockBytes = kBlockFloats * int(sizeof(float));
  static_assert(kBlockFloats % (4 * kThreads) == 0, "each thread holds whole 16-byte vectors of dQ");
  static_assert(kBlockBytes % 16 == 0, "bulk copies move multiples of 16 bytes");

  static constexpr DqAccumBlock block_shape() { return DqAccumBlock{Cfg::kBlockM, Cfg::kHeadDim}; }
  static constexpr int kOrderedCopies = Cfg::kOrderedDqCopies;

  // Floats of one copy of the call's accumulator (the ordered sums keep kOrderedCopies of them).
  __host__ __device__ static int64_t copy_floats(const AttnBwdParams& p) {
    return int64_t(dq_accum_floats(p.batch, p.packed(), p.seqlen_q, p.heads_q, p.head_dim, block_shape()));
  }

  // Where this CTA's (key block w.n_block) ordered add to query block m_block (workspace block `block`) goes: its
  // copy's block and semaphore, and its turn there. Its turn among the key blocks that see the query block is
  // the number of adds before it, in the order the scheduler launches their CTAs.
  struct OrderedSlot {
    float* block;
    int* semaphore;
    int turn;
  };
  template <class Work>
  __device__ static OrderedSlot ordered_slot(float* accum, int* semaphores, int64_t floats_per_copy,
                                             int64_t block, const Work& w, int m_block, bool launches_descending) {
    int n_min, n_max;
    w.mask.template n_block_range<Cfg::kBlockM, Cfg::kBlockN>(m_block, n_min, n_max);
    int turn = launches_descending ? n_max - 1 - w.n_block : w.n_block - n_min;
    turn = turn < 0 ? 0 : turn;  // never for consistent ranges; a negative turn must not pick a copy before 0
    const int copy = turn % kOrderedCopies;
    return {accum + copy * floats_per_copy + block * kBlockFloats,
            semaphores + copy * (floats_per_copy / kBlockFloats) + block, turn / kOrderedCopies};
  }

  // The index of a step's block (workspace_layout.h dq_accum_block); the block starts at float index *
  // kBlockFloats.
  __device__ static int64_t block_index(const AttnBwdParams& p, const SeqlenInfo& seq, int bidb, int bidh,
                                        int m_block) {
    const int64_t per_head = dq_accum_blocks_per_head(seq.packed, p.batch, p.seqlen_q, Cfg::kBlockM);
    return dq_accum_block(seq.packed, bidb, bidh, p.heads_q, seq.q_start, m_block, Cfg::kBlockM, per_head);
  }

  // Thread tidx's dQ fragment (values in MMA order) to a block, and back.
  template <class Frag>
  __device__ static void store(const Frag& acc, float* block, int tidx) {
    static_assert(cute::size(Frag{}) * kThreads == kBlockFloats);
    CUTE_UNROLL
    for (int v = 0; v < cute::size(acc); v += 4) {
      *reinterpret_cast<float4*>(block + v * kThreads + 4 * tidx) = make_float4(acc(v), acc(v + 1), acc(v + 2),
                                                                                acc(v + 3));
    }
  }
  template <class Frag>
  __device__ static void load(Frag& acc, const float* block, int tidx) {
    CUTE_UNROLL
    for (int v = 0; v < cute::size(acc); v += 4) {
      const float4 x = *reinterpret_cast<const float4*>(block + v * kThreads + 4 * tidx);
      acc(v) = x.x, acc(v + 1) = x.y, acc(v + 2) = x.z, acc(v + 3) = x.w;
    }
  }

  // Consumers, per step: wait for the shared block to be free, store this thread's dQ, hand the block over.
  template <class Frag>
  __device__ static void consumer_hand_over(const Frag& acc, float* smem_block, int tidx) {
    cutlass::arch::NamedBarrier::sync(kBarrierThreads, int(Sm90WsBwdBarrier::kDqBlockFree));
    store(acc, smem_block, tidx);
    cutlass::arch::fence_view_async_shared();  // the generic-proxy stores, seen by the bulk copy
    cutlass::arch::NamedBarrier::arrive(kBarrierThreads, int(Sm90WsBwdBarrier::kDqBlockFull));
  }

  // Consumers of a tile without room for the shared block (tile_size_split.h, kDqSharedBlock false): thread
  // tidx adds its dQ fragment straight into the step's block in global memory, in the block's order, with
  // 16-byte float4 atomics (sm_90, global memory); a warp's adds cover 512 contiguous bytes. The block's
  // readers are the convert kernel's, after the grid.
  template <class Frag>
  __device__ static void atomic_add(const Frag& acc, float* block, int tidx) {
    static_assert(cute::size(Frag{}) * kThreads == kBlockFloats);
    CUTE_UNROLL
    for (int v = 0; v < cute::size(acc); v += 4) {
      atomicAdd(reinterpret_cast<float4*>(block + v * kThreads + 4 * tidx),
                make_float4(acc(v), acc(v + 1), acc(v + 2), acc(v + 3)));
    }
  }

  // Consumers of a tile without the shared block, ordered sums (the deterministic backward): atomic_add in this
  // CTA's turn at the block (`turn` adds before it, counted by *semaphore), then the count incremented. Every
  // consumer thread calls it. CUTLASS's semaphore over the consumers' named barrier kDqTurn (GenericBarrier
  // takes the hardware id): consumer 0 acquires the count, the barrier passes it on; the barrier orders every
  // thread's adds before consumer 0's release.
  template <class Frag>
  __device__ static void ordered_atomic_add(const Frag& acc, float* block, int* semaphore, int turn, int tidx) {
    constexpr int kTurnBarrier =
        int(Sm90WsBwdBarrier::kDqTurn) + int(cutlass::arch::NamedBarrier::ReservedNamedBarrierCount);
    using Semaphore = cutlass::GenericBarrier<cutlass::detail::NamedBarrierSync<kThreads, kTurnBarrier>>;
    // At least `turn` adds done (as write<true>: with overlapping cu_seqlens a count may pass a turn).
    Semaphore::wait_lt(semaphore, tidx, 0, turn);
    atomic_add(acc, block, tidx);
    Semaphore::arrive_inc(semaphore, tidx, 0);
  }

  // The writer warp (all 32 lanes: the named barriers count warps), for a CTA with at least one step.
  // kOrdered: semaphores holds one int per block (zeroed), and the adds to a block go in key-block order,
  // descending or not as the CTAs of a (kv head, sequence) are launched.
  template <bool kOrdered, class Work>
  __device__ static void write(const AttnBwdParams& p, float* accum, int* semaphores, const Work& w,
                               bool launches_descending, const float* smem_block) {
    using Semaphore = cutlass::GenericBarrier<cutlass::detail::SyncwarpSync>;
    const int lane = int(threadIdx.x % 32);
    const int64_t floats_per_copy = copy_floats(p);
    cutlass::arch::NamedBarrier::arrive(kBarrierThreads, int(Sm90WsBwdBarrier::kDqBlockFree));
#pragma unroll 1
    for (int step = 0; step < w.steps; ++step) {
      int bidh, m_block;
      w.query_tile(step, p.kv_group, bidh, m_block);
      const int64_t block = block_index(p, w.seq, w.bidb, bidh, m_block);
      OrderedSlot slot{accum + block * kBlockFloats, nullptr, 0};
      if constexpr (kOrdered) {
        slot = ordered_slot(accum, semaphores, floats_per_copy, block, w, m_block, launches_descending);
        // At least `turn` adds done (equal with valid offsets; with cu_seqlens that overlap, blocks are shared
        // between sequences and a count may pass a turn: no wait may then last forever, the sums are merely
        // unspecified).
        Semaphore::wait_lt(slot.semaphore, lane, 0, slot.turn);
        if (lane == 0) fence_proxy_async_global();  // the acquired adds, ordered before this add (async proxy)
      }
      cutlass::arch::NamedBarrier::sync(kBarrierThreads, int(Sm90WsBwdBarrier::kDqBlockFull));
      if (lane == 0) {
        reduce_add(slot.block, smem_block);
        cute::tma_store_arrive();  // commit the bulk group
        if constexpr (kOrdered) {
          asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");  // the add is done, not only its reads
          fence_proxy_async_global();  // and ordered before the release of arrive_inc (generic proxy)
        } else {
          cute::tma_store_wait<0>();  // the block has been read
        }
      }
      if constexpr (kOrdered) {
        Semaphore::arrive_inc(slot.semaphore, lane, 0);  // __syncwarp, then lane 0's release
      } else {
        __syncwarp();
      }
      if (step + 1 < w.steps) {
        cutlass::arch::NamedBarrier::arrive(kBarrierThreads, int(Sm90WsBwdBarrier::kDqBlockFree));
      }
    }
    // The last adds complete before the CTA exits (the convert kernel runs after the grid).
    if (lane == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }

  // Orders global-memory accesses of the generic proxy (the semaphores' acquire / release) with those of the
  // async proxy (the bulk reduce-adds).
  __device__ static void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;" ::: "memory"); }

  // gmem += smem, kBlockBytes, as one bulk asynchronous reduction (16-byte aligned both).
  __device__ static void reduce_add(float* gmem, const float* smem) {
    const uint32_t smem_addr = cute::cast_smem_ptr_to_uint(smem);
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
                 "r"(smem_addr), "n"(kBlockBytes)
                 : "memory");
  }
};

// The convert kernel's grid: one CTA per query block of each sequence and query head.
template <class Cfg>
using Sm90WsDqConvertScheduler = SingleTileScheduler<Cfg::kBlockM, TileAxis::kQuery, /*kReverse=*/false>;

// dq = scale x the summed blocks (of `copies` copies, summed in order): one CTA of kThreads per block, each thread
// converting the values it held in the dK/dV kernel. Rows of packed layouts outside every sequence are left to
// the padding fill (host/launch.h).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kMmaThreads)
    attn_bwd_dq_blocks_convert_kernel(const AttnBwdParams p, const float* __restrict__ accum, int copies) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  using Blocks = Sm90WsDqAccumBlocks<Cfg>;
  using Element = typename Cfg::Element;
  const WorkTile tile = Sm90WsDqConvertScheduler<Cfg>::get_tile(p);
  if (!tile.valid()) return;
  const SeqlenInfo seq = SeqlenInfo::make(p, tile.bidb);
  const int row0 = tile.block * Cfg::kBlockM;
  if (row0 >= seq.seqlen_q) return;
  const int tidx = int(threadIdx.x);
  typename Cfg::TiledMmaDq mma_dq;
  auto thr_dq = mma_dq.get_thread_slice(tidx);
  Tensor acc = partition_fragment_C(mma_dq, Shape<Int<Cfg::kBlockM>, Int<Cfg::kHeadDim>>{});
  const float* block = accum + Blocks::block_index(p, seq, tile.bidb, tile.head, tile.block) * Blocks::kBlockFloats;
  Blocks::load(acc, block, tidx);
  // The ordered sums' other copies, added in copy order (copies is 1 for the other sums).
  const int64_t floats_per_copy = Blocks::copy_floats(p);
#pragma unroll 1
  for (int c = 1; c < copies; ++c) {
    Tensor other = make_fragment_like(acc);
    Blocks::load(other, block + c * floats_per_copy, tidx);
    CUTE_UNROLL
    for (int i = 0; i < size(acc); ++i) acc(i) += other(i);
  }
  // Through shared memory, so that dq is written in whole 16-byte row segments: the fragment holds each row's
  // columns in adjacent pairs, 4 bytes of a row per thread per store. A row is padded by 16 bytes, which puts
  // the 8 rows of one store of pairs in different banks.
  constexpr int kRowElems = Cfg::kHeadDim + 8;
  __shared__ cute::array_aligned<Element, Cfg::kBlockM * kRowElems> staged;
  Tensor coords = thr_dq.partition_C(make_identity_tensor(Shape<Int<Cfg::kBlockM>, Int<Cfg::kHeadDim>>{}));
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    cutlass::AlignedArray<Element, 2> pair;
    pair[0] = Element(acc(i) * p.scale);
    pair[1] = Element(acc(i + 1) * p.scale);
    *reinterpret_cast<cutlass::AlignedArray<Element, 2>*>(&staged[get<0>(coords(i)) * kRowElems + get<1>(coords(i))]) =
        pair;
  }
  __syncthreads();
  Element* dq = static_cast<Element*>(p.dq) + seq.q_offset(p.dq_batch_stride, p.dq_row_stride, tile.bidb) +
                int64_t(tile.head) * p.dq_head_stride + int64_t(row0) * p.dq_row_stride;
  const int rows = seq.seqlen_q - row0;
  constexpr int kChunksPerRow = Cfg::kHeadDim / 8;  // head dims are multiples of 8: a chunk is in or out
  CUTE_UNROLL
  for (int k = tidx; k < Cfg::kBlockM * kChunksPerRow; k += Cfg::kMmaThreads) {
    const int r = k / kChunksPerRow, c = k % kChunksPerRow * 8;
    if (r < rows && c < p.head_dim) {
      *reinterpret_cast<uint4*>(dq + int64_t(r) * p.dq_row_stride + c) =
          *reinterpret_cast<const uint4*>(&staged[r * kRowElems + c]);
    }
  }
#endif
}

}  // namespace jax_flash
