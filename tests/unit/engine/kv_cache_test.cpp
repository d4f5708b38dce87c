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

}  // namespace
}  // namespace tandem::engine
