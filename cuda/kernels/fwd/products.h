// The forward mainloop's two products, S = Q K^T and O += P V, as a policy chosen by the tile config's MMA
// kind (common/mma_kind.h): products_sm80.h (mma.sync) and products_sm90.h (wgmma) specialize FwdProducts.
//
// Interface: make_qk(sQ, sK, tidx) and make_pv(sVt, tidx) partition the shared tiles once and return the
// per-step products as callables, qk(acc_s, stage): acc_s = Q K[stage]^T, and pv(acc_o, p, stage):
// acc_o += P V[stage] with p the element-typed probabilities in the accumulator layout of S. The mainloop
// (fwd/mainloop.h) is the same for both.
#pragma once

namespace jax_flash {

template <class Cfg, class MmaKind = typename Cfg::MmaKind>
struct FwdProducts;

}  // namespace jax_flash
