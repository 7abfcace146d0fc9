// Decoding of the FFI calls' attribute dictionaries (attributes.h).
#include "ffi/attributes.h"

#include <string>

namespace jax_flash::ffi_glue {

void read_attention_attributes(AttrReader& reader, AttnAttributes* attrs) {
  reader.read("scale", &attrs->scale);
  reader.read("softcap", &attrs->softcap);
  reader.read("window_left", &attrs->window_left);
  reader.read("window_right", &attrs->window_right);
  reader.read("variant", &attrs->variant);
}

template <typename T>
bool AttrReader::read_scalar(std::string_view name, const char* type_name, T* value) {
  if (error_) return false;
  if (count_read_ < names_read_.size()) names_read_[count_read_] = name;
  ++count_read_;
  auto fail = [&](const std::string& what) {
    error_ = ffi::Error::InvalidArgument("jax_flash: attribute '" + std::string(name) + "' " + what);
    return false;
  };
  if (!dict_.contains(name)) return fail("is missing");
  ffi::ErrorOr<T> decoded = dict_.get<T>(name);
  if (!decoded.has_value()) {
    return fail(std::string("must be a ") + type_name + " scalar (" + decoded.error().message() + ")");
  }
  *value = *decoded;
  return true;
}

void AttrReader::read(std::string_view name, float* value) { read_scalar(name, "float32", value); }
void AttrReader::read(std::string_view name, int32_t* value) { read_scalar(name, "int32", value); }
void AttrReader::read(std::string_view name, bool* value) { read_scalar(name, "bool", value); }

void AttrReader::read(std::string_view name, KernelVariant* value) {
  int32_t id = 0;
  if (!read_scalar(name, "int32", &id)) return;
  if (id < 0 || id >= kNumKernelVariants) {
    error_ = ffi::Error::InvalidArgument("jax_flash: attribute '" + std::string(name) + "' = " + std::to_string(id) +
                                         " is not a kernel variant (0 to " + std::to_string(kNumKernelVariants - 1) +
                                         ", see cuda/host/kernel_table.h)");
    return;
  }
  *value = static_cast<KernelVariant>(id);
}

std::optional<ffi::Error> AttrReader::finish() {
  if (error_) return error_;
  if (count_read_ > names_read_.size()) return ffi::Error::Internal("jax_flash: too many attributes to check");
  for (auto it = dict_.begin(); it != dict_.end(); ++it) {
    bool known = false;
    for (size_t i = 0; i < count_read_; ++i) known = known || names_read_[i] == *it;
    if (!known) return ffi::Error::InvalidArgument("jax_flash: unexpected attribute '" + std::string(*it) + "'");
  }
  return std::nullopt;
}

void fill_attributes(const AttnAttributes& attrs, AttnFwdParams* params) {
  params->scale = attrs.scale;
  params->softcap = attrs.softcap;
  params->window_left = attrs.window_left;
  params->window_right = attrs.window_right;
}

}  // namespace jax_flash::ffi_glue
