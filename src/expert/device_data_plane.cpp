#include "device_data_plane.h"

#include <cstring>
#include <string>

#include "tandem/transport/moe_payload.h"

namespace tandem::expert {

using transport::IpcControlLayout;

Result<DeviceDispatch> parse_device_dispatch(std::span<const std::byte> control, size_t top_k, int64_t num_experts,
                                             size_t max_tokens) {
  if (control.size() < IpcControlLayout::kCombineBytes)
    return invalid_argument("device dispatch control of " + std::to_string(control.size()) + " bytes");
  DeviceDispatch d;
  std::memcpy(&d.step, control.data() + IpcControlLayout::kStepOffset, sizeof d.step);
  std::memcpy(&d.seq, control.data() + IpcControlLayout::kSeqOffset, sizeof d.seq);
  std::memcpy(&d.tokens, control.data() + IpcControlLayout::kTokensOffset, sizeof d.tokens);
  if (d.tokens > max_tokens)
    return invalid_argument("device dispatch of " + std::to_string(d.tokens) + " tokens, at most " +
                            std::to_string(max_tokens) + " fit");
  const IpcControlLayout lay{static_cast<size_t>(d.tokens), top_k};
  if (control.size() != lay.dispatch_bytes())
    return invalid_argument("device dispatch of " + std::to_string(d.tokens) + " tokens in " +
                            std::to_string(control.size()) + " bytes, expected " +
                            std::to_string(lay.dispatch_bytes()));
  d.ids = reinterpret_cast<const int32_t*>(control.data() + lay.ids_offset());
  d.weights = reinterpret_cast<const float*>(control.data() + lay.weights_offset());
  for (size_t i = 0; i < d.tokens * top_k; ++i)
    if (d.ids[i] < 0 || d.ids[i] >= num_experts)
      return invalid_argument("expert id " + std::to_string(d.ids[i]) + " out of range");
  return d;
}

void write_device_combine(std::span<std::byte> combine, const DeviceDispatch& d) {
  std::memcpy(combine.data() + IpcControlLayout::kStepOffset, &d.step, sizeof d.step);
  std::memcpy(combine.data() + IpcControlLayout::kSeqOffset, &d.seq, sizeof d.seq);
  std::memcpy(combine.data() + IpcControlLayout::kTokensOffset, &d.tokens, sizeof d.tokens);
}

}  // namespace tandem::expert
