// The FFI handler symbols the nanobind module registers.
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jax_flash::ffi_glue {

XLA_FFI_DECLARE_HANDLER_SYMBOL(AttnFwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(AttnBwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(AttnVarlenFwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(AttnVarlenBwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(PagedFwd);
XLA_FFI_DECLARE_HANDLER_SYMBOL(PagedVarlenFwd);

}  // namespace jax_flash::ffi_glue
