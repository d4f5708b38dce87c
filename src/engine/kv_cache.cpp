#include "tandem/engine/kv_cache.h"

#include <algorithm>
#include <string>

namespace tandem::engine {

BlockAllocator::BlockAllocator(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size), state_(static_cast<size_t>(std::max<int64_t>(0, num_blocks))) {
  free_.reserve(static_cast<size_t>(num_blocks));
  // Highest id at the back so blocks are handed out in increasing order.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

size_t BlockAllocator::KeyHash::operator()(const Key& k) const {
  uint64_t h = k.parent * 0x9e3779b97f4a7c15ull;
  for (int32_t t : k.tokens) h = (h ^ static_cast<uint32_t>(t)) * 0x100000001b3ull;  // FNV-1a step
  return static_cast<size_t>(h ^ (h >> 29));
}

void BlockAllocator::evict_locked(int32_t block) {
  BlockState& b = state_[static_cast<size_t>(block)];
  idle_.erase(b.idle);
  index_.erase(index_.find(*b.key));  // by iterator: the key lives in the node being erased
  b.key = nullptr;
  b.content = 0;
}

Result<std::vector<int32_t>> BlockAllocator::allocate(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto available = static_cast<int64_t>(free_.size() + idle_.size());
  if (n > available)
    return resource_exhausted("KV cache full: need " + std::to_string(n) + " blocks, " + std::to_string(available) +
                              " of " + std::to_string(num_blocks_) + " free");
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  while (static_cast<int64_t>(out.size()) < n && !free_.empty()) {
    out.push_back(free_.back());
    free_.pop_back();
  }
  while (static_cast<int64_t>(out.size()) < n) {
    const int32_t victim = idle_.front();
    evict_locked(victim);
    out.push_back(victim);
  }
  for (int32_t b : out) state_[static_cast<size_t>(b)].holds = 1;
  return out;
}

void BlockAllocator::free(const std::vector<int32_t>& blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  // Tail first: a sequence's last blocks are the least likely to be shared, so
  // they go to the old end of the idle list and are reused first.
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    BlockState& b = state_[static_cast<size_t>(*it)];
    if (b.holds <= 0) continue;  // not held: freeing it again would hand it out twice
    if (--b.holds > 0) continue;
    if (b.content != 0) {
      b.idle = idle_.insert(idle_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
}

std::vector<int32_t> BlockAllocator::match(const int32_t* tokens, int64_t max_blocks, uint64_t& content) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int32_t> out;
  content = 0;
  Key key;
  for (int64_t i = 0; i < max_blocks; ++i) {
    key.parent = content;
    key.tokens.assign(tokens + i * block_size_, tokens + (i + 1) * block_size_);
    const auto it = index_.find(key);
    if (it == index_.end()) break;
    BlockState& b = state_[static_cast<size_t>(it->second.block)];
    if (b.holds++ == 0) idle_.erase(b.idle);
    out.push_back(it->second.block);
    content = it->second.content;
  }
  return out;
}

uint64_t BlockAllocator::publish(int32_t block, uint64_t parent, const int32_t* tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  Key key{parent, std::vector<int32_t>(tokens, tokens + block_size_)};
  const auto found = index_.find(key);
  if (found != index_.end()) return found->second.content;
  BlockState& b = state_[static_cast<size_t>(block)];
  if (b.content != 0) return 0;  // holds other content: the caller's chain cannot go on
  const uint64_t id = next_content_++;
  const auto it = index_.emplace(std::move(key), Cached{block, id}).first;
  b.key = &it->first;
  b.content = id;
  return id;
}

int64_t BlockAllocator::num_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size() + idle_.size());
}

int64_t BlockAllocator::num_cached() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(index_.size());
}

int64_t BlockAllocator::freed_by_release(const std::vector<int32_t>& blocks) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  for (int32_t b : blocks)
    if (b >= 0 && b < num_blocks_ && state_[static_cast<size_t>(b)].holds == 1) ++n;
  return n;
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
    : shape_(s), storage_(backed ? s.bytes() / sizeof(float) : 0), allocator_(s.num_blocks, s.block_size) {}

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

SequenceKv::SequenceKv(SequenceKv&& o) noexcept
    : cache_(o.cache_),
      blocks_(std::move(o.blocks_)),
      published_(o.published_),
      content_(o.content_),
      chain_broken_(o.chain_broken_) {
  o.cache_ = nullptr;
  o.blocks_.clear();
  o.published_ = 0;
  o.content_ = 0;
}

SequenceKv& SequenceKv::operator=(SequenceKv&& o) noexcept {
  if (this != &o) {
    release();
    cache_ = o.cache_;
    blocks_ = std::move(o.blocks_);
    published_ = o.published_;
    content_ = o.content_;
    chain_broken_ = o.chain_broken_;
    o.cache_ = nullptr;
    o.blocks_.clear();
    o.published_ = 0;
    o.content_ = 0;
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
  published_ = 0;
  content_ = 0;
  chain_broken_ = false;
}

int64_t SequenceKv::adopt_prefix(KvCache& cache, const std::vector<int32_t>& tokens, int64_t max_tokens) {
  if (!blocks_.empty()) return 0;
  cache_ = &cache;
  const int64_t bs = cache.block_size();
  const int64_t limit = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size())) / bs;
  if (limit <= 0) return 0;
  blocks_ = cache.allocator().match(tokens.data(), limit, content_);
  published_ = blocks_.size();
  return static_cast<int64_t>(blocks_.size()) * bs;
}

void SequenceKv::publish(const std::vector<int32_t>& tokens, int64_t computed) {
  if (!cache_) return;
  const int64_t bs = cache_->block_size();
  const auto full = static_cast<size_t>(std::min<int64_t>(computed, static_cast<int64_t>(tokens.size())) / bs);
  for (; !chain_broken_ && published_ < full && published_ < blocks_.size(); ++published_) {
    content_ = cache_->allocator().publish(blocks_[published_], content_,
                                           tokens.data() + static_cast<int64_t>(published_) * bs);
    chain_broken_ = content_ == 0;  // later blocks would be indexed under a wrong prefix
  }
}

}  // namespace tandem::engine
