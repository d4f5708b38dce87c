// Which attention nodes got each whole-block prefix of the prompts the router
// sent, so that a prompt sharing a prefix with earlier ones (a system prompt,
// the earlier turns of a chat) can go where that prefix's KV blocks are likely
// still cached. A hint, not a record: nodes evict blocks on their own, and a
// wrong hint only costs a recomputation.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace tandem::router {

class PrefixAffinity {
 public:
  static constexpr int kMaxNodes = 64;  // cluster.attention_nodes' limit

  // block_size: the attention nodes' KV block size (only whole blocks are
  // cached); capacity: prefixes remembered, least recently sent forgotten first.
  PrefixAffinity(int64_t block_size, size_t capacity);

  // A prompt's prefixes as the map knows them: chained hashes of
  // prompt[0, (i + 1) * block_size) for every whole block before the last
  // token (a node always computes that one). Computed once per request.
  std::vector<uint64_t> prefix_hashes(const std::vector<int32_t>& prompt) const;
  // For each of `nodes` nodes, how many leading tokens of the prompt it got in whole blocks.
  std::vector<int64_t> matched_tokens(const std::vector<uint64_t>& prefixes, int nodes) const;
  // The prompt's whole-block prefixes went to `node` (0 <= node < kMaxNodes).
  void record(const std::vector<uint64_t>& prefixes, int node);
  // The node lost its cache (it restarted): forget what it got.
  void forget_node(int node);
  size_t size() const;
  int64_t block_size() const { return block_size_; }

 private:
  struct Entry {
    uint64_t nodes = 0;  // bit i: node i got this prefix
    std::list<uint64_t>::iterator age;
  };
  const int64_t block_size_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Entry> by_prefix_;  // guarded by mu_
  std::list<uint64_t> ages_;                        // most recent first; guarded by mu_
};

}  // namespace tandem::router
