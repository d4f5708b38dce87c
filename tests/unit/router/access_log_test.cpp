// The access log's line: the call's facts as JSON, nothing of its text.
#include "access_log.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace tandem::router {
namespace {

TEST(AccessLog, OneJsonLinePerCall) {
  AccessEntry e;
  e.method = "Chat";
  e.peer = "ipv4:127.0.0.1:40000";
  e.request_id = "req-\"7\"";
  e.code = "OK";
  e.prompt_tokens = 12;
  e.completion_tokens = 5;
  e.finish_reason = "stop";
  e.first_token_s = 0.01234;
  e.total_s = 0.5;
  const std::string line = AccessLog::format(e, 1764489600.1234);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["method"], "Chat");
  EXPECT_EQ(j["peer"], "ipv4:127.0.0.1:40000");
  EXPECT_EQ(j["request_id"], "req-\"7\"");
  EXPECT_EQ(j["code"], "OK");
  EXPECT_EQ(j["prompt_tokens"], 12);
  EXPECT_EQ(j["completion_tokens"], 5);
  EXPECT_EQ(j["finish_reason"], "stop");
  EXPECT_DOUBLE_EQ(j["ttft_ms"].get<double>(), 12.3);
  EXPECT_DOUBLE_EQ(j["latency_ms"].get<double>(), 500.0);
  EXPECT_DOUBLE_EQ(j["time"].get<double>(), 1764489600.123);
  // Refused before any token: no finish, no first token, no request id.
  AccessEntry refused;
  refused.method = "Generate";
  refused.code = "UNAUTHENTICATED";
  const auto r = nlohmann::json::parse(AccessLog::format(refused, 0));
  EXPECT_TRUE(r["finish_reason"].is_null());
  EXPECT_TRUE(r["ttft_ms"].is_null());
  EXPECT_FALSE(r.contains("request_id"));
}

TEST(AccessLog, UnopenableFileNamesTheKey) {
  auto bad = AccessLog::open("/nonexistent/dir/access.log");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("router.access_log"), std::string::npos);
}

}  // namespace
}  // namespace tandem::router
