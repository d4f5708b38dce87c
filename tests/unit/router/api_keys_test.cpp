// The router's API-key check: the Authorization values it lets through.
#include "api_keys.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace tandem::router {
namespace {

TEST(ApiKeys, NoneRequiredLetsEverythingThrough) {
  const ApiKeys open({});
  EXPECT_FALSE(open.required());
  EXPECT_TRUE(open.allows(""));
  EXPECT_TRUE(open.allows("Bearer anything"));
}

TEST(ApiKeys, OnlyABearerOfAnAcceptedKey) {
  const ApiKeys keys({"sk-one", "sk-two"});
  EXPECT_TRUE(keys.required());
  EXPECT_TRUE(keys.allows("Bearer sk-one"));
  EXPECT_TRUE(keys.allows("Bearer sk-two"));
  EXPECT_TRUE(keys.allows("bearer sk-two"));   // the scheme's case is free (RFC 7235)
  EXPECT_TRUE(keys.allows("Bearer  sk-one "));  // blanks around the key
  for (const char* refused : {"", "Bearer", "Bearer ", "sk-one", "Basic sk-one", "Bearer sk-on", "Bearer sk-one1",
                              "Bearer SK-ONE", "Bearer sk-one sk-two", "Bearersk-one"})
    EXPECT_FALSE(keys.allows(refused)) << refused;
}

// A reload swaps the keys while other threads check them.
TEST(ApiKeys, ReplaceSwapsTheKeysUnderReaders) {
  ApiKeys keys({"sk-old"});
  std::atomic<bool> stop{false};
  std::atomic<int64_t> checks{0};
  std::thread reader([&] {
    while (!stop) {
      // Each check sees one whole key list (the sanitizer builds watch the swap).
      if (keys.allows("Bearer sk-old") || keys.allows("Bearer sk-new")) ++checks;
    }
  });
  for (int i = 0; checks.load() < 1000 && i < 10'000'000; ++i) keys.replace({i % 2 ? "sk-old" : "sk-new"});
  keys.replace({"sk-new"});
  stop = true;
  reader.join();
  EXPECT_GT(checks.load(), 0);
  EXPECT_TRUE(keys.allows("Bearer sk-new"));
  EXPECT_FALSE(keys.allows("Bearer sk-old"));
  keys.replace({});
  EXPECT_FALSE(keys.required());
}

}  // namespace
}  // namespace tandem::router
