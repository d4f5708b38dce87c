// The expert side of the device-resident data planes (transport.backend:
// cuda_ipc or nccl): activations arrive in GPU memory, the routing and
// sequence numbers in UCX control messages (transport::IpcControlLayout). The
// node's UCX threads hand each control message to serve(); the DataPlane RPC
// hands the handshake to attach().
#pragma once

#include <cstdint>
#include <span>

#include "tandem/common/status.h"
#include "tandem/internal/v1/node.pb.h"
#include "tandem/transport/types.h"

namespace tandem::expert {

class DeviceDataPlane {
 public:
  virtual ~DeviceDataPlane() = default;
  // The DataPlane handshake of an attention node (its rank already checked):
  // sets up what this node keeps for it and fills the reply's fields for it.
  // Thread-safe.
  virtual Status attach(const internal::v1::DataPlaneRequest& request, internal::v1::DataPlaneReply& reply) = 0;
  // One dispatch control message from attention node `attention_rank` (the
  // header's kind and MoE layer already checked): takes the activations off
  // the device channel, runs this node's experts, returns the sum the same
  // way and fills `combine` (IpcControlLayout::kCombineBytes) with the
  // control message that announces it. Thread-safe.
  virtual Status serve(int attention_rank, const transport::MessageHeader& header,
                       std::span<const std::byte> control, std::span<std::byte> combine) = 0;
  // The node dropped a dispatch of this attention node before serve() saw it
  // (a bad header, no reply buffer): a channel that matches transfers in
  // order must be set up anew.
  virtual void dropped(int attention_rank) { (void)attention_rank; }
};

// A dispatch control message, read in place and checked.
struct DeviceDispatch {
  uint64_t step = 0, seq = 0, tokens = 0;
  const int32_t* ids = nullptr;    // [tokens, top_k]
  const float* weights = nullptr;  // [tokens, top_k]
};
// INVALID_ARGUMENT for a message whose size does not match its token count,
// more tokens than `max_tokens`, or an expert id outside [0, num_experts).
Result<DeviceDispatch> parse_device_dispatch(std::span<const std::byte> control, size_t top_k, int64_t num_experts,
                                             size_t max_tokens);
// The combine that answers `d`.
void write_device_combine(std::span<std::byte> combine, const DeviceDispatch& d);

}  // namespace tandem::expert
