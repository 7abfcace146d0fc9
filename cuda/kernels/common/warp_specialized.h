// What the warp-specialized sm_90a kernels share (fwd/sm90_ws, bwd/sm90_ws): the TMA pipelines' parameters
// for a producer warpgroup and consumer warpgroups, the global tensors as their TMA maps see them, and the
// zeroing of shared tile rows past a packed sequence before wgmma reads them.
#pragma once

#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include <cstdint>
#include <type_traits>

namespace jax_flash {

// Parameters of one PipelineTmaAsync: the producer warpgroup's threads produce (`is_leader`: thread 0, which
// initializes the barriers and whose TMA bytes fill a stage), the others consume; a stage is free again after
// `consumer_releases` releases (one per consumer warpgroup, or one per consumer thread).
template <class Pipeline>
__device__ __forceinline__ typename Pipeline::Params ws_pipeline_params(int transaction_bytes, bool producer,
                                                                        int consumer_releases) {
  typename Pipeline::Params params;
  params.transaction_bytes = transaction_bytes;
  params.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  params.is_leader = threadIdx.x == 0;
  params.num_consumers = consumer_releases;
  params.num_producers = 1;
  return params;
}

// This thread's warpgroup, the same value in every lane (so that role branches are warp-uniform).
__device__ __forceinline__ int warpgroup_index() { return __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0); }

// Global (rows, head dim, heads, batch) tensors, the head dim contiguous, as the TMA maps see them; Load is
// the TMA load of a (rows, head dim) Tile into the first two modes of SmemLayout.
template <typename Element>
struct TmaRows {
  using Shape4 = cute::Shape<int, int, int, int>;
  using Stride4 = cute::Stride<int64_t, cute::_1, int64_t, int64_t>;
  using Gmem = decltype(cute::make_tensor(cute::make_gmem_ptr(static_cast<const Element*>(nullptr)), Shape4{},
                                          Stride4{}));
  template <class SmemLayout, class Tile>
  using Load = decltype(cute::make_tma_copy(cute::SM90_TMA_LOAD{}, Gmem{}, cute::take<0, 2>(SmemLayout{}), Tile{},
                                            cute::_1{}));

  // Host: the tensor at ptr. A packed layout is one batch: its batch stride is never stepped, but a map wants a
  // valid one (the row stride).
  static Gmem tensor(const void* ptr, Shape4 shape, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                     bool packed) {
    using namespace cute;
    return make_tensor(make_gmem_ptr(static_cast<const Element*>(ptr)), shape,
                       make_stride(row_stride, _1{}, head_stride, packed ? row_stride : batch_stride));
  }

  template <class SmemLayout, class Tile>
  static Load<SmemLayout, Tile> load(const Gmem& tensor) {
    return cute::make_tma_copy(cute::SM90_TMA_LOAD{}, tensor, cute::take<0, 2>(SmemLayout{}), Tile{}, cute::_1{});
  }
};

// Rows [row_begin, rows) of a (rows, kCols) shared tile (any layout) set to zero by `threads` threads.
template <int kCols, class Tile>
__device__ __forceinline__ void zero_tile_rows(Tile&& tile, int row_begin, int rows, int tidx, int threads) {
  using Element = typename std::decay_t<Tile>::value_type;
  const int n = (rows - row_begin) * kCols;
  for (int i = tidx; i < n; i += threads) tile(row_begin + i / kCols, i % kCols) = Element(0.f);
}

// Shared memory written with ordinary (generic-proxy) stores, made visible to wgmma's (async-proxy) reads: a
// proxy fence, then the `threads` consumer threads meet on named barrier `barrier_id`.
__device__ __forceinline__ void publish_to_wgmma(int threads, int barrier_id) {
  cutlass::arch::fence_view_async_shared();
  cutlass::arch::NamedBarrier::sync(threads, barrier_id);
}

}  // namespace jax_flash
