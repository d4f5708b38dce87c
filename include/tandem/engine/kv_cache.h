// Paged KV cache: fixed-size blocks of token slots shared by all sequences of a
// node, handed out by a free-list allocator. A sequence owns a block table (the
// list of its blocks in position order); a full cache is a RESOURCE_EXHAUSTED
// error, never a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/kernels/cpu.h"

namespace tandem::engine {

class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  // All n blocks or none.
  Result<std::vector<int32_t>> allocate(int64_t n);
  void free(const std::vector<int32_t>& blocks);
  int64_t num_free() const;
  int64_t num_blocks() const { return num_blocks_; }

 private:
  mutable std::mutex mu_;
  int64_t num_blocks_;
  std::vector<int32_t> free_;  // guarded by mu_
};

struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;

  size_t bytes() const;
};

class KvCache {
 public:
  // Refuses shapes that are empty or larger than max_bytes, saying how much was asked.
  static Result<std::unique_ptr<KvCache>> create(const KvCacheShape& shape, size_t max_bytes);
  // Block bookkeeping only, for a forward that keeps K and V elsewhere (a GPU
  // runner's device cache of the same shape); layer() must not be called.
  static Result<std::unique_ptr<KvCache>> create_unbacked(const KvCacheShape& shape);

  kernels::cpu::PagedKv layer(int64_t l);
  const KvCacheShape& shape() const { return shape_; }
  int64_t block_size() const { return shape_.block_size; }
  BlockAllocator& allocator() { return allocator_; }

 private:
  KvCache(const KvCacheShape& shape, bool backed);
  KvCacheShape shape_;
  std::vector<float> storage_;  // [layers][K|V][blocks][block_size][kv_heads][head_dim]
  BlockAllocator allocator_;
};

// The blocks one sequence holds and how many positions are filled.
class SequenceKv {
 public:
  SequenceKv() = default;
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;
  SequenceKv(SequenceKv&& o) noexcept;
  SequenceKv& operator=(SequenceKv&& o) noexcept;
  ~SequenceKv();

  // Grows the block table so positions [0, num_tokens) have slots.
  Status reserve(KvCache& cache, int64_t num_tokens);
  // Returns all blocks to the cache.
  void release();
  int64_t slot(int64_t position, int64_t block_size) const {
    return static_cast<int64_t>(blocks_[static_cast<size_t>(position / block_size)]) * block_size +
           position % block_size;
  }
  const std::vector<int32_t>& blocks() const { return blocks_; }

 private:
  KvCache* cache_ = nullptr;
  std::vector<int32_t> blocks_;
};

}  // namespace tandem::engine
