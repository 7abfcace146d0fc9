// The Hopper forward's operands and products, shared by both sm_90a forwards (tile_config_sm90.h: the wgmma
// kernel with cp.async loads; sm90_ws/tile_size.h: the warp-specialized kernel with TMA loads).
//
// kBlockM query rows = kBlockM / 64 warpgroups stacked along M, each owning 64 rows (one wgmma M):
//   S (kBlockM, kBlockN) = Q K^T     both operands K-major in shared memory;
//   O (kBlockM, kHeadDimV) += P V    P from registers, V read through its transposed (MN-major) view.
// Shared tiles use the wgmma canonical K-major layouts (tile_atoms_sm90.h), in which TMA boxes land as they
// are; K and V have kStages stages.
#pragma once

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "kernels/common/tile_atoms.h"
#include "kernels/common/tile_atoms_sm90.h"

namespace jax_flash {

template <typename Element, int kBlockM, int kBlockN, int kHeadDim, int kHeadDimV, int kStages>
struct Sm90FwdTiles {
  static_assert(kBlockM % 64 == 0 && kBlockN % 16 == 0 && kBlockN <= 256);
  static_assert(kHeadDim % 32 == 0 && kHeadDimV % 32 == 0 && kHeadDim <= 256 && kHeadDimV <= 256);

  using WarpgroupsAlongM = cute::Layout<cute::Shape<cute::Int<kBlockM / 64>, cute::_1, cute::_1>>;
  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::Int<kHeadDim>>>(),
      WarpgroupsAlongM{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimV>, cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      WarpgroupsAlongM{}));

  using SmemLayoutQ = decltype(cute::tile_to_shape(GmmaKMajorAtom<Element, kHeadDim>{},
                                                   cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = GmmaTile<Element, kBlockN, kHeadDim, kStages>;
  using SmemLayoutV = GmmaTile<Element, kBlockN, kHeadDimV, kStages>;
  // V as the (kHeadDimV, kBlockN) B operand of O += P V: the same storage, transposed view.
  using SmemLayoutVt = StagedTransposedView<SmemLayoutV, kBlockN, kHeadDimV, kStages>;
};

}  // namespace jax_flash
