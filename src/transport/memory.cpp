#include "memory.h"

#include <bit>
#include <cstdlib>
#include <string>

#include "tandem/transport/buffer.h"

namespace tandem::transport {
namespace detail {

namespace {
constexpr size_t kPageBytes = 4096;
}

Result<std::shared_ptr<MemoryRegion>> MemoryRegion::create(std::shared_ptr<MemoryRegistrar> registrar,
                                                           size_t bytes) {
  const size_t rounded = std::max(kPageBytes, (bytes + kPageBytes - 1) / kPageBytes * kPageBytes);
  auto* data = static_cast<std::byte*>(std::aligned_alloc(kPageBytes, rounded));
  if (!data) return resource_exhausted("cannot allocate " + std::to_string(rounded) + " bytes");
  auto handle = registrar->register_memory(data, rounded);
  if (!handle.is_ok()) {
    std::free(data);
    return handle.status();
  }
  return std::shared_ptr<MemoryRegion>(new MemoryRegion(std::move(registrar), data, rounded, *handle));
}

MemoryRegion::~MemoryRegion() {
  registrar_->unregister_memory(handle_);
  std::free(data_);
}

RecvSlot::~RecvSlot() {
  if (auto pool = pool_.lock()) pool->release(std::move(region_));
}

Result<std::unique_ptr<RecvSlot>> RecvPool::acquire(size_t bytes) {
  const size_t capacity = std::bit_ceil(std::max(bytes, kMinSlotBytes));
  {
    std::lock_guard lock(mu_);
    auto it = idle_.find(capacity);
    if (it != idle_.end() && !it->second.empty()) {
      auto region = std::move(it->second.back());
      it->second.pop_back();
      idle_bytes_ -= capacity;
      return std::make_unique<RecvSlot>(weak_from_this(), std::move(region));
    }
  }
  TANDEM_ASSIGN_OR_RETURN(auto region, MemoryRegion::create(registrar_, capacity));
  return std::make_unique<RecvSlot>(weak_from_this(), std::move(region));
}

void RecvPool::release(std::shared_ptr<MemoryRegion> region) {
  std::lock_guard lock(mu_);
  if (idle_bytes_ + region->size() > max_cached_bytes_) return;  // region freed on return
  idle_bytes_ += region->size();
  idle_[region->size()].push_back(std::move(region));
}

}  // namespace detail

Buffer::Buffer(std::shared_ptr<detail::MemoryRegion> region, size_t size)
    : region_(std::move(region)), data_(region_->data()), size_(size) {}

Buffer::~Buffer() = default;

Message::Message(MessageHeader header, std::unique_ptr<detail::RecvSlot> slot, size_t bytes)
    : header_(header), slot_(std::move(slot)), data_(slot_->data()), bytes_(bytes) {}
Message::Message(Message&&) noexcept = default;
Message& Message::operator=(Message&&) noexcept = default;
Message::~Message() = default;

}  // namespace tandem::transport
