// The router's API-key check: the Authorization values it lets through.
#include "api_keys.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace tandem::router
