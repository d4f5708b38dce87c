#include "prefix_affinity.h"

#include <gtest/gtest.h>

namespace tandem::router {
namespace {

std::vector<int32_t> tokens(int n, int32_t first) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(first + i);
  return t;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

using Matched = std::vector<int64_t>;

// The router's two calls, each from the prompt's prefix hashes.
Matched matched(const PrefixAffinity& a, const std::vector<int32_t>& prompt, int nodes) {
  return a.matched_tokens(a.prefix_hashes(prompt), nodes);
}
void record(PrefixAffinity& a, const std::vector<int32_t>& prompt, int node) { a.record(a.prefix_hashes(prompt), node); }

TEST(PrefixAffinity, MatchesWholeBlockPrefixesPerNode) {
  PrefixAffinity a(4, 1000);
  const auto system = tokens(10, 100);  // 2 whole blocks + 2
  EXPECT_EQ(matched(a, system, 3), (Matched{0, 0, 0}));
  record(a, concat(system, tokens(3, 500)), 1);  // 13 tokens: 3 whole blocks before the last token
  // The third block differs (108, 109, 900, 901): node 1 has the first two.
  EXPECT_EQ(matched(a, concat(system, tokens(7, 900)), 3), (Matched{0, 8, 0}));
  record(a, concat(system, tokens(7, 900)), 0);
  EXPECT_EQ(matched(a, concat(system, tokens(7, 900)), 3), (Matched{16, 8, 0}));
  // The last token never counts: a 4-token prompt has no whole block before it.
  record(a, tokens(5, 1), 2);
  EXPECT_EQ(matched(a, tokens(4, 1), 3), (Matched{0, 0, 0}));
  EXPECT_EQ(matched(a, tokens(5, 1), 3), (Matched{0, 0, 4}));
  // A different first block: nothing, whatever follows.
  EXPECT_EQ(matched(a, concat(tokens(4, 7), tokens(9, 104)), 3), (Matched{0, 0, 0}));
  EXPECT_EQ(matched(a, {}, 2), (Matched{0, 0}));
  // Out-of-range nodes are ignored.
  record(a, system, -1);
  record(a, system, PrefixAffinity::kMaxNodes);
  EXPECT_EQ(matched(a, system, 3), (Matched{8, 8, 0}));
}

TEST(PrefixAffinity, ForgetsTheOldestPrefixesAndRestartedNodes) {
  PrefixAffinity a(2, 4);
  record(a, tokens(9, 0), 0);  // 4 prefixes: the capacity
  EXPECT_EQ(a.size(), 4u);
  record(a, tokens(5, 50), 1);  // 2 more: the two longest of the first prompt go
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(matched(a, tokens(9, 0), 2), (Matched{4, 0}));  // its shortest prefixes stayed
  record(a, tokens(3, 50), 0);  // a prefix node 1 has: now both
  EXPECT_EQ(matched(a, tokens(5, 50), 2), (Matched{2, 4}));
  a.forget_node(0);
  EXPECT_EQ(matched(a, tokens(9, 0), 2), (Matched{0, 0}));
  EXPECT_EQ(matched(a, tokens(5, 50), 2), (Matched{0, 4}));
  EXPECT_EQ(a.size(), 2u);
}

}  // namespace
}  // namespace tandem::router
