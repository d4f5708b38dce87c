// Registered memory: send buffers and the receive pool.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::transport::detail {

// Registers memory with a network library once, so sends and receives from it
// skip per-operation registration. Thread-safe.
class MemoryRegistrar {
 public:
  virtual ~MemoryRegistrar() = default;
  // An opaque handle (ucp_mem_h) for [data, data + bytes); nullptr is valid.
  virtual Result<void*> register_memory(void* data, size_t bytes) = 0;
  virtual void unregister_memory(void* handle) = 0;
};

// Page-aligned memory registered with one registrar, released on destruction.
class MemoryRegion {
 public:
  static Result<std::shared_ptr<MemoryRegion>> create(std::shared_ptr<MemoryRegistrar> registrar, size_t bytes);
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  ~MemoryRegion();

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  void* handle() const { return handle_; }
  const MemoryRegistrar* registrar() const { return registrar_.get(); }

 private:
  MemoryRegion(std::shared_ptr<MemoryRegistrar> registrar, std::byte* data, size_t size, void* handle)
      : registrar_(std::move(registrar)), data_(data), size_(size), handle_(handle) {}

  // Kept alive so the library's context outlives every region registered with it.
  std::shared_ptr<MemoryRegistrar> registrar_;
  std::byte* data_;
  size_t size_;
  void* handle_;
};

class RecvPool;

// One receive buffer lent by the pool; destruction hands it back.
class RecvSlot {
 public:
  RecvSlot(std::weak_ptr<RecvPool> pool, std::shared_ptr<MemoryRegion> region)
      : pool_(std::move(pool)), region_(std::move(region)) {}
  RecvSlot(const RecvSlot&) = delete;
  RecvSlot& operator=(const RecvSlot&) = delete;
  ~RecvSlot();

  std::byte* data() const { return region_->data(); }
  size_t capacity() const { return region_->size(); }
  void* handle() const { return region_->handle(); }

 private:
  std::weak_ptr<RecvPool> pool_;
  std::shared_ptr<MemoryRegion> region_;
};

// Receive buffers in power-of-two size classes, registered when first needed
// and reused afterwards. Keeps at most `max_cached_bytes` of idle buffers.
class RecvPool : public std::enable_shared_from_this<RecvPool> {
 public:
  static constexpr size_t kMinSlotBytes = 4096;

  RecvPool(std::shared_ptr<MemoryRegistrar> registrar, size_t max_cached_bytes)
      : registrar_(std::move(registrar)), max_cached_bytes_(max_cached_bytes) {}

  Result<std::unique_ptr<RecvSlot>> acquire(size_t bytes);

 private:
  friend class RecvSlot;
  void release(std::shared_ptr<MemoryRegion> region);

  std::shared_ptr<MemoryRegistrar> registrar_;
  const size_t max_cached_bytes_;
  std::mutex mu_;
  std::map<size_t, std::vector<std::shared_ptr<MemoryRegion>>> idle_;  // guarded by mu_, by capacity
  size_t idle_bytes_ = 0;                                             // guarded by mu_
};

}  // namespace tandem::transport::detail
