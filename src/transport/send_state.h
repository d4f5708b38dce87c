// Shared state of one send: what the implementation needs to post it and what
// the caller's SendHandle waits on.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include "memory.h"
#include "tandem/transport/transport.h"

namespace tandem::transport::detail {

class SendState {
 public:
  SendState(NodeId peer, const MessageHeader& header, const WireHeader& wire,
            std::shared_ptr<MemoryRegion> region, const std::byte* data, size_t bytes)
      : peer_(peer), header_(header), wire_(wire), region_(std::move(region)),
        memory_handle_(region_ ? region_->handle() : nullptr),
        data_(data),
        bytes_(bytes) {}

  const NodeId& peer() const { return peer_; }
  const MessageHeader& header() const { return header_; }
  // Stays valid until completion: UCX 1.13 may read the AM header until then.
  const WireHeader& wire() const { return wire_; }
  // Less than a full header only for send_raw() of a truncated one.
  size_t wire_bytes() const { return wire_bytes_; }
  void set_wire_bytes(size_t n) { wire_bytes_ = n; }
  const std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  void* memory_handle() const { return memory_handle_; }

  // First completion wins; drops the reference to the send memory.
  void complete(Status status);
  bool done() const;
  Status wait(std::chrono::milliseconds timeout);

 private:
  const NodeId peer_;
  const MessageHeader header_;
  const WireHeader wire_;
  size_t wire_bytes_ = kWireHeaderBytes;
  std::shared_ptr<MemoryRegion> region_;  // guarded by mu_; keeps the memory alive while in flight
  void* const memory_handle_;
  const std::byte* data_;
  const size_t bytes_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  Status status_;      // guarded by mu_
};

}  // namespace tandem::transport::detail
