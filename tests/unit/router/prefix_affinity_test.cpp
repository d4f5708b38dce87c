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

TEST(PrefixAffinity, MatchesWholeBlockPrefixesPerNode) {
  PrefixAffinity a(4, 1000);
  const auto system = tokens(10, 100);  // 2 whole blocks + 2
  EXPECT_EQ(a.matched_tokens(system, 3), (Matched{0, 0, 0}));
  a.record(concat(system, tokens(3, 500)), 1);  // 13 tokens: 3 whole blocks before the last token
  // The third block differs (108, 109, 900, 901): node 1 has the first two.
  EXPECT_EQ(a.matched_tokens(concat(system, tokens(7, 900)), 3), (Matched{0, 8, 0}));
  a.record(concat(system, tokens(7, 900)), 0);
  EXPECT_EQ(a.matched_tokens(concat(system, tokens(7, 900)), 3), (Matched{16, 8, 0}));
  // The last token never counts: a 4-token prompt has no whole block before it.
  a.record(tokens(5, 1), 2);
  EXPECT_EQ(a.matched_tokens(tokens(4, 1), 3), (Matched{0, 0, 0}));
  EXPECT_EQ(a.matched_tokens(tokens(5, 1), 3), (Matched{0, 0, 4}));
  // A different first block: nothing, whatever follows.
  EXPECT_EQ(a.matched_tokens(concat(tokens(4, 7), tokens(9, 104)), 3), (Matched{0, 0, 0}));
  EXPECT_EQ(a.matched_tokens({}, 2), (Matched{0, 0}));
  // Out-of-range nodes are ignored.
  a.record(system, -1);
  a.record(system, PrefixAffinity::kMaxNodes);
  EXPECT_EQ(a.matched_tokens(system, 3), (Matched{8, 8, 0}));
}

TEST(PrefixAffinity, ForgetsTheOldestPrefixesAndRestartedNodes) {
  PrefixAffinity a(2, 4);
  a.record(tokens(9, 0), 0);  // 4 prefixes: the capacity
  EXPECT_EQ(a.size(), 4u);
  a.record(tokens(5, 50), 1);  // 2 more: the two longest of the first prompt go
  EXPECT_EQ(a.size(), 4u);
  EXPECT_EQ(a.matched_tokens(tokens(9, 0), 2), (Matched{4, 0}));  // its shortest prefixes stayed
  a.record(tokens(3, 50), 0);  // a prefix node 1 has: now both
  EXPECT_EQ(a.matched_tokens(tokens(5, 50), 2), (Matched{2, 4}));
  a.forget_node(0);
  EXPECT_EQ(a.matched_tokens(tokens(9, 0), 2), (Matched{0, 0}));
  EXPECT_EQ(a.matched_tokens(tokens(5, 50), 2), (Matched{0, 4}));
  EXPECT_EQ(a.size(), 2u);
}

}  // namespace
}  // namespace tandem::router
