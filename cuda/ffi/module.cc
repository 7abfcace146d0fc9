// The nanobind module: FFI capsules for jax.ffi.register_ffi_target, plus the static facts Python
// needs at trace time (which head dims this build serves, how much backward scratch to ask for, the kernel
// variants and tiles of the kernel table).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "ffi/attn_handlers.h"
#include "host/attention.h"
#include "host/kernel_choice.h"

namespace nb = nanobind;

namespace {

template <typename T>
nb::capsule capsule(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

jax_flash::DType parse_dtype(const std::string& name) {
  if (name == "bfloat16") return jax_flash::DType::kBFloat16;
  if (name == "float16") return jax_flash::DType::kFloat16;
  throw nb::value_error(("jax_flash: unsupported dtype " + name).c_str());
}

jax_flash::KernelFeature parse_feature(const std::string& name) {
  using jax_flash::KernelFeature;
  for (KernelFeature feature : {KernelFeature::kFwd, KernelFeature::kBwd, KernelFeature::kBwdDeterministic,
                                KernelFeature::kPaged, KernelFeature::kPagedDecode}) {
    if (name == jax_flash::kernel_feature_name(feature)) return feature;
  }
  throw nb::value_error(("jax_flash: unknown kernel feature " + name +
                         " (fwd, bwd, bwd_deterministic, paged, paged_decode)").c_str());
}

jax_flash::KernelVariant parse_variant(const std::string& name) {
  for (int id = 0; id < jax_flash::kNumKernelVariants; ++id) {
    const auto variant = static_cast<jax_flash::KernelVariant>(id);
    if (name == jax_flash::kernel_variant_name(variant)) return variant;
  }
  throw nb::value_error(("jax_flash: unknown kernel variant " + name).c_str());
}

}  // namespace

NB_MODULE(_jax_flash_cuda, m) {
  m.def("registrations", []() {
    nb::dict targets;
    targets["jax_flash_attn_fwd"] = capsule(jax_flash::ffi_glue::AttnFwd);
    targets["jax_flash_attn_bwd"] = capsule(jax_flash::ffi_glue::AttnBwd);
    targets["jax_flash_attn_varlen_fwd"] = capsule(jax_flash::ffi_glue::AttnVarlenFwd);
    targets["jax_flash_attn_varlen_bwd"] = capsule(jax_flash::ffi_glue::AttnVarlenBwd);
    targets["jax_flash_paged_fwd"] = capsule(jax_flash::ffi_glue::PagedFwd);
    targets["jax_flash_paged_varlen_fwd"] = capsule(jax_flash::ffi_glue::PagedVarlenFwd);
    return targets;
  });
  m.def(
      "supported",
      [](const std::string& dtype, int head_dim, int head_dim_v) {
        return jax_flash::attn_supported(parse_dtype(dtype), head_dim, head_dim_v);
      },
      nb::arg("dtype"), nb::arg("head_dim"), nb::arg("head_dim_v"),
      "True when this build has a kernel for the dtype name and head dims.");
  m.def(
      "bwd_workspace_bytes",
      [](const std::string& dtype, int batch, bool packed, int seqlen_q, int seqlen_k, int heads_q, int heads_k,
         int head_dim, int head_dim_v, bool deterministic) {
        return jax_flash::attn_bwd_workspace_bytes(parse_dtype(dtype), batch, packed, seqlen_q, seqlen_k, heads_q,
                                                   heads_k, head_dim, head_dim_v, deterministic);
      },
      nb::arg("dtype"), nb::arg("batch"), nb::arg("packed"), nb::arg("seqlen_q"), nb::arg("seqlen_k"),
      nb::arg("heads_q"), nb::arg("heads_k"), nb::arg("head_dim"), nb::arg("head_dim_v"), nb::arg("deterministic"),
      "Bytes of scratch the backward kernels need for the dtype name and these shapes (packed layouts: batch = "
      "the number of sequences, seqlen_q / seqlen_k = the token totals).");

  std::vector<std::string> variant_names;
  for (int id = 0; id < jax_flash::kNumKernelVariants; ++id) {
    variant_names.push_back(jax_flash::kernel_variant_name(static_cast<jax_flash::KernelVariant>(id)));
  }
  m.attr("kernel_variants") = nb::tuple(nb::cast(variant_names));
  m.attr("paged_block_m") = jax_flash::kPagedTileRows;
  m.attr("paged_block_n") = jax_flash::kPagedTileKeys;
  m.attr("paged_decode_max_rows") = jax_flash::kPagedDecodeMaxRows;
  m.def(
      "variants",
      [](const std::string& feature, const std::string& dtype, int head_dim, int head_dim_v) {
        std::vector<std::string> names;
        for (auto variant : jax_flash::runnable_variants(parse_feature(feature), parse_dtype(dtype), head_dim,
                                                         head_dim_v)) {
          names.push_back(jax_flash::kernel_variant_name(variant));
        }
        return names;
      },
      nb::arg("feature"), nb::arg("dtype"), nb::arg("head_dim"), nb::arg("head_dim_v"),
      "The kernel variants (not 'auto') that can serve the feature (fwd, bwd, bwd_deterministic, paged, "
      "paged_decode) for the dtype and head dims on the current device.");
  m.def(
      "kernel_choice",
      [](const std::string& feature, const std::string& dtype, int head_dim, int head_dim_v,
         const std::string& variant, int64_t seqlen_k) {
        jax_flash::KernelChoice choice;
        const jax_flash::Status status =
            jax_flash::choose_kernel(parse_feature(feature), parse_dtype(dtype), head_dim, head_dim_v, seqlen_k,
                                     parse_variant(variant), &choice);
        if (!status.ok()) throw nb::value_error(status.message.c_str());
        nb::dict out;
        out["variant"] = jax_flash::kernel_variant_name(choice.variant);
        out["tile"] = nb::make_tuple(choice.tile.tile_d, choice.tile.tile_dv);
        out["block_m"] = choice.tile.block_m;
        out["block_n"] = choice.tile.block_n;
        out["dq"] = jax_flash::dq_path_name(choice.dq);
        return out;
      },
      nb::arg("feature"), nb::arg("dtype"), nb::arg("head_dim"), nb::arg("head_dim_v"), nb::arg("variant") = "auto",
      nb::arg("seqlen_k") = -1,
      "The kernel the launchers run for this call on the current device: {variant, tile, block_m, block_n, dq} "
      "(dq: how a backward gets dq: dq_kernel, atomic_sums or ordered_sums); ValueError saying why when none "
      "can serve it. seqlen_k: the call's keys (packed: its max_seqlen_k); -1 for a long call.");
}
