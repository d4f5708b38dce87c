// Registered memory for sends (Buffer) and received data (Message).
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "tandem/transport/types.h"

namespace tandem::transport {

namespace detail {
class MemoryRegion;
class RecvSlot;
}  // namespace detail

// Memory that one transport registered once for sending (ucp_mem_map for UCX).
// Move-only. A send keeps the memory alive until it completes, so dropping the
// Buffer early is safe; writing to it while a send is in flight is not.
class Buffer {
 public:
  Buffer() = default;
  Buffer(std::shared_ptr<detail::MemoryRegion> region, size_t size);
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {data_, size_}; }
  const std::shared_ptr<detail::MemoryRegion>& region() const { return region_; }

 private:
  std::shared_ptr<detail::MemoryRegion> region_;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// A received message. data() points into the transport's registered receive
// pool (the data was written there by UCX or by the one copy out of UCX's eager
// buffer); destroying the Message returns that memory to the pool. Move-only.
class Message {
 public:
  Message(MessageHeader header, std::unique_ptr<detail::RecvSlot> slot, size_t bytes);
  Message(Message&&) noexcept;
  Message& operator=(Message&&) noexcept;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message();

  const MessageHeader& header() const { return header_; }
  std::span<const std::byte> data() const { return {data_, bytes_}; }
  // The receiver may work in place (e.g. scale activations) before dropping it.
  std::span<std::byte> mutable_data() { return {data_, bytes_}; }

 private:
  MessageHeader header_;
  std::unique_ptr<detail::RecvSlot> slot_;
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace tandem::transport
