// The attributes of the FFI calls, decoded once from each call's attribute dictionary: the ones every attention
// call carries (AttnAttributes) and a handler's own few, named in its one decode_attributes call.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "host/attention.h"
#include "xla/ffi/api/ffi.h"

namespace jax_flash::ffi_glue {

namespace ffi = xla::ffi;

// What Python sends every call (jax_flash/_ffi.py _attributes). A new one is a field here and a line in
// read_attention_attributes (attributes.cc).
struct AttnAttributes {
  float scale = 0.f;
  float softcap = 0.f;        // 0 = none
  int32_t window_left = -1;   // -1 = unbounded
  int32_t window_right = -1;  // -1 = unbounded; causal is 0
  KernelVariant variant = KernelVariant::kAuto;  // a pinned kernel family (kernel_table.h), or the choice's pick
};

// Reads named attributes out of a call's dictionary, remembering the first problem: a missing or mistyped
// attribute, or (at finish) one that nothing read.
class AttrReader {
 public:
  explicit AttrReader(const ffi::Dictionary& dict) : dict_(dict) {}
  void read(std::string_view name, float* value);
  void read(std::string_view name, int32_t* value);
  void read(std::string_view name, bool* value);
  void read(std::string_view name, KernelVariant* value);
  // The first problem as an InvalidArgument naming the attribute, or nullopt.
  std::optional<ffi::Error> finish();

 private:
  template <typename T>
  bool read_scalar(std::string_view name, const char* type_name, T* value);

  const ffi::Dictionary& dict_;
  std::optional<ffi::Error> error_;
  std::array<std::string_view, 16> names_read_{};
  size_t count_read_ = 0;
};

void read_attention_attributes(AttrReader& reader, AttnAttributes* attrs);

// A handler's own attribute: its name and where its value goes.
template <typename T>
struct OwnAttr {
  std::string_view name;
  T* value;
};

// Decodes every attribute of a call: the common ones into `common`, the handler's own into their places.
template <typename... T>
std::optional<ffi::Error> decode_attributes(const ffi::Dictionary& dict, AttnAttributes* common,
                                            OwnAttr<T>... own) {
  AttrReader reader(dict);
  read_attention_attributes(reader, common);
  (reader.read(own.name, own.value), ...);
  return reader.finish();
}

// The common attributes into the kernel params.
void fill_attributes(const AttnAttributes& attrs, AttnFwdParams* params);

}  // namespace jax_flash::ffi_glue
