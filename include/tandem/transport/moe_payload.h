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

// The cuda_ipc data plane sends the activations by CUDA IPC (device to device)
// and only this control part over UCX; header num_tokens = 0:
//   dispatch: u64 step | u64 seq | u64 n | [n, K] i32 expert ids | [n, K] f32 gate weights
//   combine:  u64 step | u64 seq | u64 n
// `seq` is the IPC slot flag value that says the activations (dispatch) or the
// expert sum (combine) have landed in the receiver's slot for the micro-batch.
struct IpcControlLayout {
  size_t tokens = 0, top_k = 0;

  static constexpr size_t kStepOffset = 0, kSeqOffset = 8, kTokensOffset = 16;
  static constexpr size_t kCombineBytes = 24;
  size_t ids_offset() const { return kCombineBytes; }
  size_t weights_offset() const { return ids_offset() + tokens * top_k * sizeof(int32_t); }
  size_t dispatch_bytes() const { return weights_offset() + tokens * top_k * sizeof(float); }
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
