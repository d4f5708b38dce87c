// The HTTP gateway on its own, with no router behind it: it starts and stops
// at once without hanging, and answers what it can without the router (its
// own routes, 503 for generation and health, 413 for oversized bodies).
#include "http_gateway.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <string>

namespace tandem::router {
namespace {

// Ports below the ephemeral range, apart per test process.
int free_port(int offset) { return 20000 + static_cast<int>(getpid() % 5000) * 2 + offset; }

api::DeploymentConfig config(int http_port) {
  api::DeploymentConfig c;
  c.model_path = "/nonexistent";
  c.served_name = "m";
  c.router = {"127.0.0.1", 1};  // nothing listens there: every call is UNAVAILABLE
  c.http = {"127.0.0.1", http_port};
  c.request_timeout_s = 5;
  return c;
}

TEST(HttpGateway, StopsRightAfterStarting) {
  const api::DeploymentConfig c = config(free_port(0));
  for (int i = 0; i < 20; ++i) {
    auto g = HttpGateway::start(c);
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    (*g)->stop();  // then the destructor stops again: both must return
  }
}

TEST(HttpGateway, RefusesATakenPortNamingTheKey) {
  const api::DeploymentConfig c = config(free_port(1));
  auto first = HttpGateway::start(c);
  ASSERT_TRUE(first.is_ok()) << first.status().to_string();
  auto second = HttpGateway::start(c);
  ASSERT_FALSE(second.is_ok());
  EXPECT_NE(second.status().message().find("router.http_listen"), std::string::npos) << second.status().to_string();
}

TEST(HttpGateway, AnswersWithoutTheRouterInOpenAiShape) {
  const api::DeploymentConfig c = config(free_port(0));
  auto g = HttpGateway::start(c);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  httplib::Client client("127.0.0.1", c.http.port);
  auto models = client.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  EXPECT_EQ(nlohmann::json::parse(models->body)["data"][0]["id"], "m");
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    const std::string body = std::string(path) == "/v1/completions"
                                 ? R"({"prompt": "x", "stream": true})"
                                 : R"({"messages": [{"role": "user", "content": "x"}]})";
    auto res = client.Post(path, body, "application/json");
    ASSERT_TRUE(res) << path;
    EXPECT_EQ(res->status, 503) << path << ": " << res->body;
    EXPECT_EQ(nlohmann::json::parse(res->body)["error"]["type"], "service_unavailable") << res->body;
  }
  auto huge = client.Post("/v1/completions", std::string(4 << 20, ' '), "application/json");
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 413);
  auto bad = client.Post("/v1/completions", "{", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
}

}  // namespace
}  // namespace tandem::router
