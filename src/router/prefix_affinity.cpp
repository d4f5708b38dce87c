#include "prefix_affinity.h"

#include <algorithm>

namespace tandem::router {

PrefixAffinity::PrefixAffinity(int64_t block_size, size_t capacity)
    : block_size_(std::max<int64_t>(1, block_size)), capacity_(std::max<size_t>(1, capacity)) {}

std::vector<uint64_t> PrefixAffinity::prefix_hashes(const std::vector<int32_t>& prompt) const {
  std::vector<uint64_t> out;
  const int64_t blocks = prompt.empty() ? 0 : static_cast<int64_t>(prompt.size() - 1) / block_size_;
  out.reserve(static_cast<size_t>(blocks));
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the token ids, a value per block boundary
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t i = b * block_size_; i < (b + 1) * block_size_; ++i) {
      const auto t = static_cast<uint32_t>(prompt[static_cast<size_t>(i)]);
      for (int byte = 0; byte < 4; ++byte) h = (h ^ ((t >> (8 * byte)) & 0xffu)) * 0x100000001b3ull;
    }
    out.push_back(h);
  }
  return out;
}

std::vector<int64_t> PrefixAffinity::matched_tokens(const std::vector<uint64_t>& hashes, int nodes) const {
  std::vector<int64_t> matched(static_cast<size_t>(std::max(0, nodes)), 0);
  std::lock_guard<std::mutex> l(mu_);
  for (size_t b = 0; b < hashes.size(); ++b) {
    const auto it = by_prefix_.find(hashes[b]);
    if (it == by_prefix_.end()) break;
    bool any = false;
    for (size_t n = 0; n < matched.size() && n < kMaxNodes; ++n) {
      // Contiguous from the start only: block b is no use without blocks < b.
      if ((it->second.nodes >> n & 1u) && matched[n] == static_cast<int64_t>(b) * block_size_) {
        matched[n] = static_cast<int64_t>(b + 1) * block_size_;
        any = true;
      }
    }
    if (!any) break;
  }
  return matched;
}

void PrefixAffinity::record(const std::vector<uint64_t>& hashes, int node) {
  if (node < 0 || node >= kMaxNodes) return;
  const uint64_t bit = uint64_t{1} << node;
  std::lock_guard<std::mutex> l(mu_);
  // Longest first, so the shortest (most shared) prefixes are the most recent
  // and the last forgotten: lookups walk from the shortest.
  for (auto h = hashes.rbegin(); h != hashes.rend(); ++h) {
    auto it = by_prefix_.find(*h);
    if (it != by_prefix_.end()) {
      it->second.nodes |= bit;
      ages_.splice(ages_.begin(), ages_, it->second.age);
      continue;
    }
    ages_.push_front(*h);
    by_prefix_.emplace(*h, Entry{bit, ages_.begin()});
    if (by_prefix_.size() > capacity_) {
      by_prefix_.erase(ages_.back());
      ages_.pop_back();
    }
  }
}

void PrefixAffinity::forget_node(int node) {
  if (node < 0 || node >= kMaxNodes) return;
  std::lock_guard<std::mutex> l(mu_);
  for (auto it = by_prefix_.begin(); it != by_prefix_.end();) {
    it->second.nodes &= ~(uint64_t{1} << node);
    if (it->second.nodes == 0) {
      ages_.erase(it->second.age);
      it = by_prefix_.erase(it);
    } else {
      ++it;
    }
  }
}

size_t PrefixAffinity::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return by_prefix_.size();
}

}  // namespace tandem::router
