// The nanobind module: FFI capsules for jax.ffi.register_ffi_target, plus the static facts Python
// needs at trace time (which head dims this build serves, how much backward scratch to ask for).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "ffi/attn_handlers.h"
#include "host/attention.h"

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
  m.def("bwd_workspace_bytes", &jax_flash::attn_bwd_workspace_bytes, nb::arg("batch"),
        nb::arg("seqlen_q"), nb::arg("seqlen_k"), nb::arg("heads_q"), nb::arg("heads_k"),
        nb::arg("head_dim"), nb::arg("head_dim_v"), nb::arg("deterministic"),
        "Bytes of scratch the backward kernels need for these shapes (packed layouts: batch 1, seqlen_q = "
        "total query tokens).");
}
