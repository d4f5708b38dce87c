#include "safetensors/internal.h"

namespace tandem::model::safetensors_internal {

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::optional<uint64_t> checked_nbytes(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  // TensorInfo::numel() multiplies in int64_t, so keep the element count in range too.
  if (n > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return n;
}

}  // namespace tandem::model::safetensors_internal
