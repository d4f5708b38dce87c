// Paged KV cache: fixed-size blocks of token slots shared by all sequences of a
// node, handed out by a free-list allocator. A sequence owns a block table (the
// list of its blocks in position order); a full cache is a RESOURCE_EXHAUSTED
// error, never a crash.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/kernels/cpu.h"

namespace tandem::engine {

// Hands out KV blocks. With prefix caching the allocator also remembers what a
// full block holds — its tokens and, through a content id, everything before
// them — so a later sequence that starts with the same tokens takes the block
// instead of recomputing it. A cached block nobody holds still counts as free:
// it is reused (least recently released first, a sequence's tail before its
// head) only when no free block without reusable content is left.
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks, int64_t block_size = 16);
  // All n blocks or none, each held once.
  Result<std::vector<int32_t>> allocate(int64_t n);
  // Drops one hold on each block.
  void free(const std::vector<int32_t>& blocks);
  int64_t num_free() const;
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }

  // The longest run of cached blocks holding tokens[0, k * block_size) for k up
  // to max_blocks, each now held once more; content receives the last one's
  // content id (0 when nothing matched).
  std::vector<int32_t> match(const int32_t* tokens, int64_t max_blocks, uint64_t& content);
  // Records that `block` holds block_size tokens that follow the content
  // `parent` (0: the start of a sequence) and returns the content id of the
  // pair. If that content is cached already (in another block), the block stays
  // private and the existing id is returned so the caller's chain continues;
  // 0 if the block holds other content already (the chain cannot go on).
  uint64_t publish(int32_t block, uint64_t parent, const int32_t* tokens);
  // Cached blocks, held or not.
  int64_t num_cached() const;
  // Of these blocks, those that dropping one hold would make free (held once).
  int64_t freed_by_release(const std::vector<int32_t>& blocks) const;

 private:
  struct Key {
    uint64_t parent = 0;
    std::vector<int32_t> tokens;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  struct Cached {
    int32_t block = 0;
    uint64_t content = 0;
  };
  struct BlockState {
    int32_t holds = 0;
    uint64_t content = 0;  // 0: not cached
    const Key* key = nullptr;
    std::list<int32_t>::iterator idle;  // in idle_ while cached and not held
  };
  void evict_locked(int32_t block);

  mutable std::mutex mu_;
  int64_t num_blocks_, block_size_;
  std::vector<int32_t> free_;                    // never used or evicted; guarded by mu_
  std::vector<BlockState> state_;                // guarded by mu_
  std::list<int32_t> idle_;                      // cached, not held, oldest first; guarded by mu_
  std::unordered_map<Key, Cached, KeyHash> index_;  // guarded by mu_
  uint64_t next_content_ = 1;
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
  // Prefix caching. Starts an empty sequence with the cached blocks that hold
  // the longest prefix of tokens[0, max_tokens) in whole blocks; returns how
  // many tokens they cover (their K/V need no computing).
  int64_t adopt_prefix(KvCache& cache, const std::vector<int32_t>& tokens, int64_t max_tokens);
  // Makes the whole blocks of tokens[0, computed) — whose K/V are now in the
  // cache — available to later sequences.
  void publish(const std::vector<int32_t>& tokens, int64_t computed);
  int64_t slot(int64_t position, int64_t block_size) const {
    return static_cast<int64_t>(blocks_[static_cast<size_t>(position / block_size)]) * block_size +
           position % block_size;
  }
  const std::vector<int32_t>& blocks() const { return blocks_; }

 private:
  KvCache* cache_ = nullptr;
  std::vector<int32_t> blocks_;
  size_t published_ = 0;   // leading blocks whose content is recorded
  uint64_t content_ = 0;   // content id of the last of them
  bool chain_broken_ = false;
};

}  // namespace tandem::engine
