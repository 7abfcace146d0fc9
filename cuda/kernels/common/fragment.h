// Views and conversions of mma register fragments with fp32 accumulators: SM80 mma.sync (m16n8k16) and
// SM90 wgmma (m64nNk16).
//
// An SM80 accumulator fragment from partition_fragment_C has shape ((2, 2), MMA_M, MMA_N): per atom a thread
// holds 2 adjacent columns (mode 0.0) of 2 rows 8 apart (mode 0.1). An SM90 one has shape ((2, 2, N / 8),
// MMA_M, MMA_N): the same pair of rows and, per 8-column block (mode 0.2), the same 2 adjacent columns. The
// softmax and the masks want a (row, col) view; the P @ V product wants the probabilities as an A operand.
// Shared by forward and backward.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

namespace jax_flash {

// ((2, 2), MMA_M, MMA_N) -> ((2, MMA_M), (2, MMA_N)), or for SM90 ((2, 2, V), MMA_M, MMA_N) ->
// ((2, MMA_M), (2, V, MMA_N)): mode 0 indexes the thread's rows, mode 1 its columns.
template <class Layout>
__device__ __forceinline__ constexpr auto rowcol_layout(Layout const& acc) {
  using namespace cute;
  static_assert(decltype(rank(acc))::value == 3, "expected an mma accumulator layout");
  if constexpr (decltype(rank<0>(acc))::value == 3) {
    return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                       make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
  } else {
    static_assert(decltype(size<0>(acc))::value == 4, "expected an m16n8 accumulator atom");
    auto l = logical_divide(acc, Shape<_2>{});  // ((2, 2), MMA_M, MMA_N)
    return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
  }
}

// The (row, col) view of an accumulator-shaped tensor (values or coordinates).
template <class Tensor>
__device__ __forceinline__ auto rowcol_view(Tensor&& t) {
  return cute::make_tensor(t.data(), rowcol_layout(t.layout()));
}

// Accumulator -> A operand of the next k16 product, with the same thread ownership (no data movement):
//   SM80: ((2, 2), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, MMA_N / 2): two n8 atoms side by side are one k16 slice.
//   SM90: ((2, 2, V), MMA_M, MMA_N) -> ((2, 2, 2), MMA_M, (V / 2, MMA_N)): two 8-column blocks of the atom
//         are one k16 slice of a register-A wgmma.
template <class Layout>
__device__ __forceinline__ constexpr auto acc_as_a_layout(Layout const& acc) {
  using namespace cute;
  if constexpr (decltype(rank<0>(acc))::value == 3) {
    static_assert(decltype(size<0, 2>(acc))::value % 2 == 0, "the atom's N must be a multiple of 16");
    auto l = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});  // (2, 2, (2, V / 2))
    return make_layout(make_layout(get<0>(l), get<1>(l), get<2, 0>(l)), get<1>(acc),
                       make_layout(get<2, 1>(l), get<2>(acc)));
  } else {
    static_assert(decltype(size<2>(acc))::value % 2 == 0, "MMA_N must be even to form k16 slices");
    auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // ((2,2), MMA_M, (2, MMA_N/2))
    return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
  }
}

// Element-wise conversion of a register fragment (vectorized: cvt.rn.*x2 for half / bf16).
template <typename To, class Engine, class Layout>
__device__ __forceinline__ auto convert_fragment(cute::Tensor<Engine, Layout> const& src) {
  using From = typename Engine::value_type;
  constexpr int N = decltype(cute::size(src))::value;
  cutlass::NumericArrayConverter<To, From, N> convert;
  auto converted = convert(*reinterpret_cast<const cutlass::Array<From, N>*>(src.data()));
  auto dst = cute::make_tensor<To>(src.layout());
  *reinterpret_cast<cutlass::Array<To, N>*>(dst.data()) = converted;
  return dst;
}

}  // namespace jax_flash
