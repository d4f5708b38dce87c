// What a MoE dispatch and its combine carry in the M2N payload, shared by the
// attention side that packs it and the expert side that reads it in place.
//
//   dispatch (attention -> expert), header num_tokens = n, hidden_size = H, F32:
//     [n, H] f32 activations | u64 step id | [n, K] i32 expert ids | [n, K] f32 gate weights
//   combine (expert -> attention):
//     [n, H] f32 weighted sum of this node's chosen experts | u64 step id (echoed)
//
// The step id ties a combine to the dispatch it answers: after a failed step
// the attention side drops every outstanding dispatch, and a late combine of
// one of those must not be taken for the answer to a later dispatch with the
// same (layer, micro-batch) tag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "tandem/common/status.h"

namespace tandem::transport {

struct MoePayloadLayout {
  size_t tokens = 0, hidden = 0, top_k = 0;

  size_t activation_bytes() const { return tokens * hidden * sizeof(float); }
  size_t step_offset() const { return activation_bytes(); }
  size_t ids_offset() const { return step_offset() + sizeof(uint64_t); }
  size_t weights_offset() const { return ids_offset() + tokens * top_k * sizeof(int32_t); }
  size_t dispatch_bytes() const { return weights_offset() + tokens * top_k * sizeof(float); }
  size_t combine_bytes() const { return activation_bytes() + sizeof(uint64_t); }
};

inline uint64_t read_step(std::span<const std::byte> payload, size_t offset) {
  uint64_t v = 0;
  std::memcpy(&v, payload.data() + offset, sizeof v);
  return v;
}

inline void write_step(std::span<std::byte> payload, size_t offset, uint64_t step) {
  std::memcpy(payload.data() + offset, &step, sizeof step);
}

}  // namespace tandem::transport
