// Tile shapes, thread roles and register budgets of the warp-specialized Hopper forward (sm_90a), per head dim.
//
// A CTA is 1 producer warpgroup + kBlockM / 64 consumer warpgroups (2 or 3). The producer's first thread
// issues every TMA load; the consumers each own 64 query rows of the tile and run the two products as wgmma:
// S = Q K^T with Q and K in shared memory, O += P V with P from registers (or shared memory, kPvFromSmem) and V
// read through its transposed (MN-major) view. setmaxnreg moves registers from the producer (which holds a few
// addresses) to the consumers (which hold the S, P and O fragments), within the 64K registers of an SM:
// 24 + 2 x 240 per thread with two consumer warpgroups, 32 + 3 x 160 with three (FlashAttention-3's split for its
// 192-row D64 tile). With three, P goes through shared memory (kPvFromSmem), so that S(t), P(t - 1) and O of the
// overlap fit 160 registers.
//
// Per head dim (Sm90WsTileSize): a key tile as wide as Q + 2 stages of K and V allow in the 227 KB of shared
// memory; the pingpong between the consumer warpgroups (their GEMMs take turns, so one's softmax runs under
// the others' GEMMs) and each warpgroup's own overlap (softmax of tile j under the QK^T of tile j+1) where
// they were measured to pay. FlashAttention-3 runs both at D <= 128 and the overlap alone above. On an H100
// (BENCHMARKS.md, check tool): D128 runs the overlap with P in shared memory and no pingpong (session 27:
// 1.04-1.16x full and 1.04-1.07x causal over the tile with neither, which had beaten pingpong + overlap with P
// in registers by 1.04-1.10x in session 21); D64's 192-row tile runs both, with P in shared memory (session
// 25: 1.05-1.14x the same tile without the overlap, which spilled with P in registers). D96, D192 and D256
// keep FlashAttention-3's choices (not measured without them).
//
// kPersistentDense: dense grids without a causal mask run on the persistent CTA (one per SM, the next tile's
// Q loaded while the last one finishes; kernel_fwd_sm90_ws.cuh) where it was measured to pay; causal and
// packed grids keep one CTA per tile (their blocks differ in length; the longest-first persistent order lost to
// it, session 27).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

#include "kernels/common/tile_atoms.h"
#include "kernels/fwd/tiles_sm90.h"

namespace jax_flash {

template <typename Element_, int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kStages_, bool kPingpong_,
          bool kIntraWgOverlap_, bool kLongestFirst_ = false, bool kPvFromSmem_ = false>
struct Sm90WsFwdConfig {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr bool kPingpong = kPingpong_;
  // Each warpgroup issues S(t) = Q K(t)^T and P(t-1) V(t-1) together and runs the softmax of S(t) under them
  // (mainloop_tma_ws.h); false: S(t), its softmax, then P(t) V(t), one after the other (Sm90WsTileSize says
  // which tiles overlap).
  static constexpr bool kIntraWgOverlap = kIntraWgOverlap_;
  // The single-tile grid's dense causal tiles longest first across (head, sequence) pairs, in groups that keep
  // K and V in L2 (sched/longest_first_scheduler.h); false: each pair's blocks in turn.
  static constexpr bool kLongestFirst = kLongestFirst_;
  // P V with P from shared memory (each warpgroup stores its rows of P with stmatrix, then both operands are
  // read through descriptors) rather than from registers: the P fragment then lives only while it is stored,
  // which leaves a 160-register warpgroup room for the overlap (D64's 192 x 128 tile; FlashAttention-3 runs
  // 192 x 192 so, which spills here); D128's 240-register overlap also measured faster so (session 27).
  static constexpr bool kPvFromSmem = kPvFromSmem_;
  // Rescale O by the softmax correction before the P V product that adds to it (under the QK^T in flight)
  // rather than after it: for wide O the rescale is long enough to be worth hiding.
  static constexpr bool kRescaleBeforePv = kHeadDimV > 128;

  static constexpr int kMmaWarpgroups = kBlockM / 64;
  static constexpr int kMmaThreads = 128 * kMmaWarpgroups;
  static constexpr int kThreads = 128 + kMmaThreads;
  static_assert(kBlockM == 128 || kBlockM == 192, "2 or 3 consumer warpgroups of 64 rows");
  // 160 registers hold S, P and O of a 64-row slice for narrow heads only (D64: FlashAttention-3's use).
  static_assert(kBlockM == 128 || kHeadDimV <= 64, "three consumer warpgroups: head dims up to 64");
  static constexpr int kProducerRegs = kMmaWarpgroups == 2 ? 24 : 32;
  static constexpr int kMmaRegs = kMmaWarpgroups == 2 ? 240 : 160;
  static_assert(kProducerRegs * 128 + kMmaRegs * kMmaThreads <= 64 * 1024, "registers of one SM");

  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);
  static_assert(kStages >= 2);

  using Tiles = Sm90FwdTiles<Element, kBlockM, kBlockN, kHeadDim, kHeadDimV, kStages>;
  using TiledMmaQK = typename Tiles::TiledMmaQK;
  using TiledMmaPV = std::conditional_t<
      kPvFromSmem,
      Sm90TiledMmaSS<Element, kBlockM, kHeadDimV, kBlockN, kBlockM / 64, 1, cute::GMMA::Major::K,
                     cute::GMMA::Major::MN>,
      typename Tiles::TiledMmaPV>;
  // One wgmma instruction per k slice spans the whole tile: CuTe's selector falls back to narrower atoms
  // (N = 16 for N = 80 or 176) for the shapes it has only with CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED.
  static_assert(cute::size<1>(typename TiledMmaQK::AtomShape_MNK{}) == kBlockN,
                "kBlockN needs CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED (or a standard wgmma N)");
  static_assert(cute::size<1>(typename TiledMmaPV::AtomShape_MNK{}) == kHeadDimV,
                "kHeadDimV needs CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED (or a standard wgmma N)");
  using SmemLayoutQ = typename Tiles::SmemLayoutQ;
  using SmemLayoutK = typename Tiles::SmemLayoutK;
  using SmemLayoutV = typename Tiles::SmemLayoutV;
  using SmemLayoutVt = typename Tiles::SmemLayoutVt;
  // The output staging tile (aliasing Q, see kernel_fwd_sm90_ws.cuh): the same 8-row atoms as Q, so that each
  // warpgroup's 64 rows of O cover exactly the bytes of its own 64 rows of Q.
  using SmemLayoutO = SmemTile<Element, kBlockM, kHeadDimV>;
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;
  // P in shared memory (kPvFromSmem): the A operand of P V, K-major, stored from the S accumulator's layout.
  using SmemLayoutP = decltype(cute::tile_to_shape(GmmaKMajorAtom<Element, kBlockN>{},
                                                   cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>>{}));
  using SmemStoreAtomP = cute::Copy_Atom<cute::SM90_U32x4_STSM_N, Element>;
  static constexpr int kSmemPElems = kPvFromSmem ? int(cute::cosize_v<SmemLayoutP>) : 0;
  using GmemCopyO = StoreRowCopy<Element, kHeadDimV, kMmaThreads>;
  static_assert((kHeadDim % 64 == 0) == (kHeadDimV % 64 == 0), "Q and O atoms must have the same width");

  static constexpr int kSmemQOElems = cute::cosize_v<SmemLayoutQ> > cute::cosize_v<SmemLayoutO>
                                          ? cute::cosize_v<SmemLayoutQ>
                                          : cute::cosize_v<SmemLayoutO>;
  static constexpr int kBytesQ = kBlockM * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesK = kBlockN * kHeadDim * int(sizeof(Element));
  static constexpr int kBytesV = kBlockN * kHeadDimV * int(sizeof(Element));
};

// The tile of each head-dim pair (query rows, key tile, K/V stages, pingpong, overlap). FlashAttention-3's
// tiles, except where its key tile (D96: 144, D192: 112, D256: 80, D128 unmasked: 176)
// needs a wgmma N that CuTe offers only with CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED: without it CuTe would run
// such a tile as N = 16 or 48 instructions (the static_assert above refuses that), so the defaults take the
// next standard N below. The wider tiles are timed by cuda/tools/fwd_sm90_ws_check.cu when the macro is
// defined, other tiles and schedules with its -DCHECK_BLOCK_M / _BLOCK_N / _PINGPONG / _OVERLAP.
template <int kHeadDim, int kHeadDimV>
struct Sm90WsTileSize;
template <>
struct Sm90WsTileSize<64, 64> {
  // Three consumer warpgroups of 160 registers: S(t), P(t - 1) and O of the overlap fit them only with P in
  // shared memory (ptxas, descriptors sliced per warpgroup: 56 B of spills, outside the key loop but for one
  // reload; P in registers: 352 B). H100, check tool (BENCHMARKS.md session 25): 1.05-1.14x the serial step
  // at 1k-16k, full and causal, which was 1.03-1.09x the 128 x 192 overlapped tile (session 21). The key tile
  // 192 (FlashAttention-3's unmasked choice) spills 804 B.
  static constexpr int kBlockM = 192, kBlockN = 128, kStages = 2;
  static constexpr bool kPingpong = true, kIntraWgOverlap = true, kPvFromSmem = true;
  // Persistent (session 27, full): 1.06x at 1k but 0.96-0.98x at 4k / 16k with this tile; 0.81-0.85x there with
  // a 128 x 128 tile.
  static constexpr bool kPersistentDense = false;
};
template <>
struct Sm90WsTileSize<96, 96> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2;
  static constexpr bool kPingpong = true, kIntraWgOverlap = true, kPvFromSmem = false;
  static constexpr bool kPersistentDense = false;  // not measured
};
template <>
struct Sm90WsTileSize<128, 128> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2;
  static constexpr bool kPingpong = false, kIntraWgOverlap = true, kPvFromSmem = true;
  static constexpr bool kPersistentDense = false;  // not measured with this tile's overlap
};
template <>
struct Sm90WsTileSize<192, 128> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 2;
  static constexpr bool kPingpong = false, kIntraWgOverlap = true, kPvFromSmem = false;
  static constexpr bool kPersistentDense = false;  // not measured
};
template <>
struct Sm90WsTileSize<192, 192> {
  static constexpr int kBlockM = 128, kBlockN = 96, kStages = 2;
  static constexpr bool kPingpong = false, kIntraWgOverlap = true, kPvFromSmem = false;
  static constexpr bool kPersistentDense = false;  // not measured
};
template <>
struct Sm90WsTileSize<256, 256> {
  static constexpr int kBlockM = 128, kBlockN = 64, kStages = 2;
  static constexpr bool kPingpong = false, kIntraWgOverlap = true, kPvFromSmem = false;
  // Persistent (session 27): full 1.02x at 1k, 1.09x at 4k, 1.04x at 16k; causal in tile order 0.56-0.98x.
  // (ptxas: the persistent kernel spills 52-56 B, the single-tile one none; timed as built.)
  static constexpr bool kPersistentDense = true;
};

// The longest-first order of the dense causal grid (Sm90WsFwdConfig::kLongestFirst): off in the library until
// measured; the check tool times it (-DCHECK_LONGEST_FIRST=1).
inline constexpr bool kSm90WsFwdLongestFirst = false;

template <typename Element, int kHeadDim, int kHeadDimV, class Tile = Sm90WsTileSize<kHeadDim, kHeadDimV>>
using Sm90WsFwdDefaultConfig = Sm90WsFwdConfig<Element, kHeadDim, kHeadDimV, Tile::kBlockM, Tile::kBlockN,
                                               Tile::kStages, Tile::kPingpong, Tile::kIntraWgOverlap,
                                               kSm90WsFwdLongestFirst, Tile::kPvFromSmem>;

}  // namespace jax_flash
