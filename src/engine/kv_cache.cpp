#include "tandem/engine/kv_cache.h"

#include <algorithm>
#include <string>

namespace tandem::engine {

BlockAllocator::BlockAllocator(int64_t num_blocks) : num_blocks_(num_blocks) {
  free_.reserve(static_cast<size_t>(num_blocks));
  // Highest id at the back so blocks are handed out in increasing order.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

Result<std::vector<int32_t>> BlockAllocator::allocate(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n > static_cast<int64_t>(free_.size()))
    return resource_exhausted("KV cache full: need " + std::to_string(n) + " blocks, " +
                              std::to_string(free_.size()) + " of " + std::to_string(num_blocks_) + " free");
  std::vector<int32_t> out(free_.end() - n, free_.end());
  std::reverse(out.begin(), out.end());
  free_.resize(free_.size() - static_cast<size_t>(n));
  return out;
}

void BlockAllocator::free(const std::vector<int32_t>& blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) free_.push_back(*it);
}

int64_t BlockAllocator::num_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

size_t KvCacheShape::bytes() const {
  return static_cast<size_t>(num_layers) * 2 * static_cast<size_t>(num_blocks) * static_cast<size_t>(block_size) *
         static_cast<size_t>(kv_heads) * static_cast<size_t>(head_dim) * sizeof(float);
}

namespace {
Status check_shape(const KvCacheShape& s) {
  if (s.num_layers <= 0 || s.num_blocks <= 0 || s.block_size <= 0 || s.kv_heads <= 0 || s.head_dim <= 0)
    return invalid_argument("KV cache shape must be positive (layers " + std::to_string(s.num_layers) +
                            ", blocks " + std::to_string(s.num_blocks) + ", block_size " +
                            std::to_string(s.block_size) + ")");
  return Status::ok();
}
}  // namespace

Result<std::unique_ptr<KvCache>> KvCache::create(const KvCacheShape& s, size_t max_bytes) {
  TANDEM_RETURN_IF_ERROR(check_shape(s));
  if (s.bytes() > max_bytes)
    return resource_exhausted("KV cache of " + std::to_string(s.num_blocks) + " blocks x " +
                              std::to_string(s.block_size) + " tokens needs " + std::to_string(s.bytes() >> 20) +
                              " MiB but only " + std::to_string(max_bytes >> 20) + " MiB are allowed");
  return std::unique_ptr<KvCache>(new KvCache(s, true));
}

Result<std::unique_ptr<KvCache>> KvCache::create_unbacked(const KvCacheShape& s) {
  TANDEM_RETURN_IF_ERROR(check_shape(s));
  return std::unique_ptr<KvCache>(new KvCache(s, false));
}

KvCache::KvCache(const KvCacheShape& s, bool backed)
    : shape_(s), storage_(backed ? s.bytes() / sizeof(float) : 0), allocator_(s.num_blocks) {}

kernels::cpu::PagedKv KvCache::layer(int64_t l) {
  const size_t per = static_cast<size_t>(shape_.num_blocks * shape_.block_size * shape_.kv_heads * shape_.head_dim);
  kernels::cpu::PagedKv kv;
  kv.k = storage_.data() + static_cast<size_t>(l) * 2 * per;
  kv.v = kv.k + per;
  kv.num_blocks = shape_.num_blocks;
  kv.block_size = shape_.block_size;
  kv.kv_heads = shape_.kv_heads;
  kv.head_dim = shape_.head_dim;
  return kv;
}

SequenceKv::SequenceKv(SequenceKv&& o) noexcept : cache_(o.cache_), blocks_(std::move(o.blocks_)) {
  o.cache_ = nullptr;
  o.blocks_.clear();
}

SequenceKv& SequenceKv::operator=(SequenceKv&& o) noexcept {
  if (this != &o) {
    release();
    cache_ = o.cache_;
    blocks_ = std::move(o.blocks_);
    o.cache_ = nullptr;
    o.blocks_.clear();
  }
  return *this;
}

SequenceKv::~SequenceKv() { release(); }

Status SequenceKv::reserve(KvCache& cache, int64_t num_tokens) {
  cache_ = &cache;
  const int64_t need = (num_tokens + cache.block_size() - 1) / cache.block_size();
  const int64_t have = static_cast<int64_t>(blocks_.size());
  if (need <= have) return Status::ok();
  TANDEM_ASSIGN_OR_RETURN(std::vector<int32_t> more, cache.allocator().allocate(need - have));
  blocks_.insert(blocks_.end(), more.begin(), more.end());
  return Status::ok();
}

void SequenceKv::release() {
  if (cache_ && !blocks_.empty()) cache_->allocator().free(blocks_);
  blocks_.clear();
}

}  // namespace tandem::engine
