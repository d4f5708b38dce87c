#include <gtest/gtest.h>

#include "tandem/engine/kv_cache.h"

namespace tandem::engine {
namespace {

TEST(BlockAllocator, AllocatesAllOrNothingAndReportsFull) {
  BlockAllocator a(4);
  auto x = a.allocate(3);
  ASSERT_TRUE(x.is_ok());
  EXPECT_EQ(*x, (std::vector<int32_t>{0, 1, 2}));
  auto y = a.allocate(2);
  ASSERT_FALSE(y.is_ok());
  EXPECT_EQ(y.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(y.status().message().find("need 2 blocks, 1 of 4 free"), std::string::npos) << y.status().message();
  EXPECT_EQ(a.num_free(), 1);  // the failed call took nothing
  a.free(*x);
  EXPECT_EQ(a.num_free(), 4);
  EXPECT_TRUE(a.allocate(4).is_ok());
}

TEST(KvCache, RefusesOversizeAndEmptyShapes) {
  KvCacheShape s{2, 1000, 16, 2, 64};
  auto big = KvCache::create(s, 1 << 20);
  ASSERT_FALSE(big.is_ok());
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(big.status().message().find("MiB"), std::string::npos);
  s.num_blocks = 0;
  EXPECT_EQ(KvCache::create(s, size_t{1} << 30).status().code(), StatusCode::kInvalidArgument);
}

TEST(SequenceKv, GrowsBlockTableAndReleasesOnDestruction) {
  KvCacheShape s{1, 8, 4, 1, 2};
  auto cache = KvCache::create(s, size_t{1} << 30);
  ASSERT_TRUE(cache.is_ok());
  {
    SequenceKv seq;
    ASSERT_TRUE(seq.reserve(**cache, 5).is_ok());
    EXPECT_EQ(seq.blocks().size(), 2u);
    EXPECT_EQ(seq.slot(4, 4), seq.blocks()[1] * 4 + 0);
    ASSERT_TRUE(seq.reserve(**cache, 8).is_ok());
    EXPECT_EQ(seq.blocks().size(), 2u);
    EXPECT_EQ((*cache)->allocator().num_free(), 6);
    Status st = seq.reserve(**cache, 100);
    EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  }
  EXPECT_EQ((*cache)->allocator().num_free(), 8);
}

std::vector<int32_t> iota_tokens(int n, int32_t first = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = first + i;
  return t;
}

// A prefix is found block by block through the chain of content ids: the same
// tokens after a different prefix are other content.
TEST(BlockAllocator, MatchesPublishedPrefixesWholeBlocksOnly) {
  BlockAllocator a(8, 4);
  auto blocks = a.allocate(3).value();
  const auto toks = iota_tokens(12);
  uint64_t chain = 0;
  for (int i = 0; i < 3; ++i) chain = a.publish(blocks[static_cast<size_t>(i)], chain, toks.data() + 4 * i);
  EXPECT_EQ(a.num_cached(), 3);

  uint64_t content = 0;
  auto hit = a.match(toks.data(), 3, content);
  EXPECT_EQ(hit, blocks);
  EXPECT_EQ(content, chain);
  a.free(hit);

  auto other = toks;
  other[5] = 99;  // second block differs: only the first matches
  hit = a.match(other.data(), 3, content);
  EXPECT_EQ(hit, std::vector<int32_t>{blocks[0]});
  a.free(hit);

  // Block 1's tokens at the start of a sequence are not block 1's content.
  hit = a.match(toks.data() + 4, 2, content);
  EXPECT_TRUE(hit.empty());
  EXPECT_EQ(content, 0u);
  // max_blocks bounds the walk.
  hit = a.match(toks.data(), 1, content);
  EXPECT_EQ(hit.size(), 1u);
  a.free(hit);
  a.free(blocks);
}

// Cached blocks nobody holds count as free and are reused only when no
// never-used block is left, oldest released first and a sequence's tail
// before its head; a reused block is no longer matched.
TEST(BlockAllocator, EvictsIdleCachedBlocksLastAndTailFirst) {
  BlockAllocator a(4, 2);
  auto seq = a.allocate(3).value();
  const auto toks = iota_tokens(6);
  uint64_t chain = 0;
  for (int i = 0; i < 3; ++i) chain = a.publish(seq[static_cast<size_t>(i)], chain, toks.data() + 2 * i);
  a.free(seq);
  EXPECT_EQ(a.num_free(), 4);
  EXPECT_EQ(a.num_cached(), 3);

  auto one = a.allocate(1).value();  // the never-used block
  EXPECT_EQ(one, std::vector<int32_t>{3});
  EXPECT_EQ(a.num_cached(), 3);
  auto two = a.allocate(1).value();  // now an idle cached one: the tail
  EXPECT_EQ(two, std::vector<int32_t>{seq[2]});
  EXPECT_EQ(a.num_cached(), 2);
  uint64_t content = 0;
  auto hit = a.match(toks.data(), 3, content);
  EXPECT_EQ(hit, (std::vector<int32_t>{seq[0], seq[1]}));
  // Held again: not evictable; the cache is full.
  EXPECT_EQ(a.num_free(), 0);
  EXPECT_EQ(a.allocate(1).status().code(), StatusCode::kResourceExhausted);
  a.free(hit);
  a.free(one);
  a.free(two);
  EXPECT_EQ(a.num_free(), 4);
}

// Two sequences that computed the same content each in its own block: the
// second stays private but its chain continues through the first's content.
TEST(BlockAllocator, DuplicateContentKeepsOneCachedCopyAndTheChain) {
  BlockAllocator a(8, 2);
  auto x = a.allocate(2).value();
  auto y = a.allocate(2).value();
  const auto toks = iota_tokens(4);
  const uint64_t x0 = a.publish(x[0], 0, toks.data());
  const uint64_t y0 = a.publish(y[0], 0, toks.data());
  EXPECT_EQ(x0, y0);
  a.publish(y[1], y0, toks.data() + 2);  // y's second block extends x's first
  EXPECT_EQ(a.num_cached(), 2);
  uint64_t content = 0;
  auto hit = a.match(toks.data(), 2, content);
  EXPECT_EQ(hit, (std::vector<int32_t>{x[0], y[1]}));
  a.free(hit);
  a.free(x);
  a.free(y);
  EXPECT_EQ(a.num_free(), 8);
  EXPECT_EQ(a.num_cached(), 2);  // y[0] was private: back to the never-used pool
}

// A block shared by two sequences returns to the pool only when both let go.
TEST(SequenceKv, AdoptsAndPublishesPrefixes) {
  KvCacheShape s{1, 8, 4, 1, 2};
  auto cache = KvCache::create(s, size_t{1} << 30).value();
  const auto toks = iota_tokens(10);
  SequenceKv first;
  ASSERT_TRUE(first.reserve(*cache, 10).is_ok());
  first.publish(toks, 6);  // one whole block computed
  EXPECT_EQ(cache->allocator().num_cached(), 1);
  first.publish(toks, 10);  // two whole blocks; the partial third is not published
  EXPECT_EQ(cache->allocator().num_cached(), 2);

  SequenceKv second;
  EXPECT_EQ(second.adopt_prefix(*cache, toks, 9), 8);  // both blocks
  EXPECT_EQ(second.blocks(), (std::vector<int32_t>{first.blocks()[0], first.blocks()[1]}));
  SequenceKv third;
  EXPECT_EQ(third.adopt_prefix(*cache, toks, 7), 4);  // at most 7 tokens: one block
  third.release();
  first.release();
  EXPECT_EQ(cache->allocator().num_free(), 6);  // the second still holds two
  second.release();
  EXPECT_EQ(cache->allocator().num_free(), 8);
  EXPECT_EQ(cache->allocator().num_cached(), 2);
}

}  // namespace
}  // namespace tandem::engine
