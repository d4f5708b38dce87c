// router.access_log on a running cluster: one JSON line per Generate/Chat
// call, over gRPC and HTTP, refused calls included, without prompt or answer.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "cluster_harness.h"

namespace tandem {
namespace {

using nlohmann::json;

std::vector<json> lines(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

TEST(AccessLogCluster, EveryCallLeavesALine) {
  const std::string log = ::testing::TempDir() + "/tandem_access_" + std::to_string(::getpid()) + ".jsonl";
  std::remove(log.c_str());
  testing::Cluster cluster(testing::cluster_model("tiny-mixtral"),
                           {.attention_nodes = 1, .expert_nodes = 1, .http = true, .router_tuning = "access_log: " + log});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  auto req = testing::greedy("a secret prompt", 3);
  req.set_request_id("trace-42");
  ASSERT_TRUE(testing::generate(cluster.stub(), req).status.ok());
  auto bad = testing::greedy("x", 3);
  bad.mutable_sampling()->set_temperature(-1);
  EXPECT_EQ(testing::generate(cluster.stub(), bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  httplib::Client http("127.0.0.1", cluster.http_port());
  // A proxy's X-Request-Id names the call in the log and comes back.
  auto res = http.Post("/v1/chat/completions", {{"X-Request-Id", "proxy-7f"}},
                       json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}}.dump(),
                       "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("X-Request-Id"), "proxy-7f");
  auto bad_id = http.Post("/v1/chat/completions", {{"X-Request-Id", std::string(300, 'x')}},
                          json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}}.dump(),
                          "application/json");
  ASSERT_TRUE(bad_id);
  EXPECT_EQ(bad_id->status, 400);
  EXPECT_NE(bad_id->body.find("X-Request-Id"), std::string::npos) << bad_id->body;

  const std::vector<json> got = lines(log);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0]["method"], "Generate");
  EXPECT_EQ(got[0]["code"], "OK");
  EXPECT_EQ(got[0]["request_id"], "trace-42");
  EXPECT_GT(got[0]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(got[0]["completion_tokens"], 3);
  EXPECT_EQ(got[0]["finish_reason"], "length");
  EXPECT_GE(got[0]["latency_ms"].get<double>(), got[0]["ttft_ms"].get<double>());
  EXPECT_NE(got[0]["peer"].get<std::string>().find("127.0.0.1"), std::string::npos) << got[0];
  EXPECT_EQ(got[1]["code"], "INVALID_ARGUMENT");
  EXPECT_TRUE(got[1]["finish_reason"].is_null());
  EXPECT_EQ(got[2]["method"], "Chat");
  EXPECT_EQ(got[2]["completion_tokens"], 2);
  EXPECT_EQ(got[2]["request_id"], "proxy-7f");
  EXPECT_EQ(got[2]["peer"].get<std::string>().rfind("http:127.0.0.1:", 0), 0u) << got[2];  // the HTTP client
  // A gRPC client cannot claim an HTTP client's address: the gateway's
  // metadata counts on its in-process calls only.
  grpc::ClientContext spoof;
  spoof.AddMetadata("x-tandem-http-client", "10.9.9.9:1");
  ASSERT_TRUE(testing::generate(cluster.stub(), testing::greedy("x", 1), std::chrono::seconds(60), &spoof).status.ok());
  const json last = lines(log).back();
  EXPECT_EQ(last["peer"].get<std::string>().find("10.9.9.9"), std::string::npos) << last;
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("secret"), std::string::npos) << "no prompt text in the log";
  std::remove(log.c_str());
}

}  // namespace
}  // namespace tandem
