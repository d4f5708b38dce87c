// A cluster whose router wants API keys (router.api_keys): the public APIs
// refuse requests without an accepted key, over HTTP (401 in OpenAI's shape)
// and gRPC (UNAUTHENTICATED), and serve those with one; health and metrics
// stay open; the CLI clients send the key they are given.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <thread>
#include <filesystem>
#include <csignal>
#include <sstream>
#include <string>

#include "cluster_harness.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::Cluster;
using testing::cluster_model;
using testing::generate;
using testing::greedy;

constexpr const char* kKey = "sk-tandem-test-7f3a";

TEST(ApiKeys, PublicApisWantAKeyProbesDoNot) {
  Cluster cluster(cluster_model("tiny-mixtral"),
                  {.attention_nodes = 1,
                   .expert_nodes = 1,
                   .http = true,
                   .router_tuning = std::string("api_keys: [other-key, ") + kKey + "]"});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  httplib::Client http("127.0.0.1", cluster.http_port());
  http.set_read_timeout(60, 0);
  const std::string body = json{{"prompt", "hello"}, {"max_tokens", 3}, {"temperature", 0}}.dump();

  // No key, a wrong one, another scheme: 401 naming the header, nothing generated.
  for (const httplib::Headers& h : {httplib::Headers{}, httplib::Headers{{"Authorization", "Bearer sk-wrong"}},
                                    httplib::Headers{{"Authorization", std::string("Basic ") + kKey}}}) {
    auto res = http.Post("/v1/completions", h, body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401) << res->body;
    EXPECT_EQ(res->get_header_value("WWW-Authenticate"), "Bearer");
    const json e = json::parse(res->body);
    EXPECT_EQ(e["error"]["code"], "invalid_api_key") << res->body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find("Authorization: Bearer"), std::string::npos);
  }
  for (const char* path : {"/v1/models"}) {
    auto res = http.Get(path);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401) << path;
  }
  auto tok = http.Post("/tokenize", json{{"prompt", "hi"}}.dump(), "application/json");
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->status, 401);

  // The key: served, over every route and streamed.
  const httplib::Headers with_key{{"Authorization", std::string("Bearer ") + kKey}};
  auto ok = http.Post("/v1/completions", with_key, body, "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(json::parse(ok->body)["usage"]["completion_tokens"], 3);
  auto models = http.Get("/v1/models", with_key);
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  auto streamed = http.Post("/v1/chat/completions", with_key,
                            json{{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                 {"max_tokens", 3},
                                 {"stream", true}}
                                .dump(),
                            "application/json");
  ASSERT_TRUE(streamed);
  EXPECT_EQ(streamed->status, 200);
  EXPECT_NE(streamed->body.find("data: [DONE]"), std::string::npos) << streamed->body;

  // Probes need none.
  auto health = http.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);

  // A keep-alive client refused once is served on its next request.
  {
    httplib::Client again("127.0.0.1", cluster.http_port());
    again.set_keep_alive(true);
    auto first = again.Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(first);
    EXPECT_EQ(first->status, 401);
    auto second = again.Post("/v1/completions", with_key, body, "application/json");
    ASSERT_TRUE(second);
    EXPECT_EQ(second->status, 200) << second->body;
  }

  // gRPC: every public call UNAUTHENTICATED without the metadata or with a
  // wrong key, served with an accepted one.
  for (const char* key : {"", "Bearer sk-wrong"}) {
    const auto context = [&](grpc::ClientContext& c) {
      if (*key) c.AddMetadata("authorization", key);
      c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    };
    grpc::ClientContext g;
    if (*key) g.AddMetadata("authorization", key);
    auto refused = generate(cluster.stub(), greedy("hello", 3), std::chrono::seconds(60), &g);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << refused.status.error_message();
    grpc::ClientContext c1, c2, c3, c4;
    context(c1);
    context(c2);
    context(c3);
    context(c4);
    auto chat = testing::read_reply(*cluster.stub().Chat(&c1, testing::greedy_chat("hi", 3)));
    EXPECT_EQ(chat.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    tandem::v1::ListModelsResponse models_reply;
    EXPECT_EQ(cluster.stub().ListModels(&c2, {}, &models_reply).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    tandem::v1::TokenizeRequest tq;
    tq.set_text("hi");
    tandem::v1::TokenizeResponse tr;
    EXPECT_EQ(cluster.stub().Tokenize(&c3, tq, &tr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
    tandem::v1::DetokenizeRequest dq;
    dq.add_token_ids(1);
    tandem::v1::DetokenizeResponse dr;
    EXPECT_EQ(cluster.stub().Detokenize(&c4, dq, &dr).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kKey);
  auto served = generate(cluster.stub(), greedy("hello", 3), std::chrono::seconds(60), &ctx);
  ASSERT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_EQ(served.tokens.size(), 3u);
  // Refusals are counted by their code.
  metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("tandem_requests_total{code=\"UNAUTHENTICATED\"}"), std::string::npos) << metrics->body;

  // The CLI: --api-key or TANDEM_API_KEY.
  int rc = 0;
  std::string out = testing::shell(testing::tandem_bin() + " client --server " + cluster.router_address() +
                                       " --prompt hi --max-tokens 2",
                                   rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("API key"), std::string::npos) << out;
  out = testing::shell(testing::tandem_bin() + " client --server " + cluster.router_address() +
                           " --prompt hi --max-tokens 2 --api-key " + kKey,
                       rc);
  EXPECT_EQ(rc, 0) << out;
  out = testing::shell("TANDEM_API_KEY=" + std::string(kKey) + " " + testing::tandem_bin() + " bench --server " +
                           cluster.router_address() + " --http 127.0.0.1:" + std::to_string(cluster.http_port()) +
                           " --api both --requests 2 --concurrency 2 --prompt-tokens 8 --output-tokens 2",
                       rc);
  EXPECT_EQ(rc, 0) << out;
}

// A keys file that cannot be read stops `tandem serve` at start, naming the key.
TEST(ApiKeys, UnreadableKeysFileIsRefusedAtStart) {
  const std::string path = ::testing::TempDir() + "/bad_api_keys.yaml";
  std::ofstream(path) << "model: {path: " << cluster_model("tiny-mixtral")
                      << "}\nrouter: {api_keys_file: /nonexistent/tandem-keys}\n";
  int rc = 0;
  const std::string out = testing::shell(testing::tandem_bin() + " serve --config " + path, rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("router.api_keys_file: cannot read '/nonexistent/tandem-keys'"), std::string::npos) << out;
}

// The pid of `tandem serve`'s router child (-1 if none): read from /proc.
pid_t router_pid(pid_t serve) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat"), cmdline(e.path() / "cmdline");
    std::string line, args;
    if (!std::getline(stat, line) || !std::getline(cmdline, args)) continue;
    std::istringstream fields(line.substr(line.rfind(')') + 2));  // state, ppid, ...
    std::string state;
    pid_t ppid = 0;
    fields >> state >> ppid;
    // cmdline: the arguments, each ended by a NUL ("... router --config ...").
    if (ppid == serve && args.find(std::string("router") + '\0') != std::string::npos) return std::stoi(name);
  }
  return -1;
}

// SIGHUP to `tandem serve`: the router reads its keys file again (a rotated
// key works, a retired one is refused, a broken file keeps the keys in
// force) and reopens its access log after logrotate moved it.
TEST(ApiKeys, HangupRotatesKeysAndReopensTheAccessLog) {
  const std::string dir = ::testing::TempDir() + "/tandem_hup_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string keys = dir + "/keys", log = dir + "/access.jsonl";
  std::ofstream(keys) << "sk-old\n";
  Cluster cluster(cluster_model("tiny-mixtral"),
                  {.attention_nodes = 1,
                   .expert_nodes = 1,
                   .http = true,
                   .router_tuning = "api_keys_file: " + keys + ", access_log: " + log});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  const auto with = [&](const std::string& key) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + key);
    return generate(cluster.stub(), greedy("hello", 2), std::chrono::seconds(60), &ctx).status.error_code();
  };
  const auto http_with = [&](const std::string& key) {
    httplib::Client http("127.0.0.1", cluster.http_port());
    auto res = http.Post("/v1/completions", {{"Authorization", "Bearer " + key}},
                         json{{"prompt", "hi"}, {"max_tokens", 1}}.dump(), "application/json");
    return res ? res->status : -1;
  };
  ASSERT_EQ(with("sk-old"), grpc::StatusCode::OK);
  ASSERT_EQ(with("sk-new"), grpc::StatusCode::UNAUTHENTICATED);
  const pid_t router = router_pid(cluster.serve_pid());
  ASSERT_GT(router, 0);

  std::filesystem::rename(log, log + ".1");  // logrotate
  std::ofstream(keys) << "sk-new\n";
  ASSERT_EQ(kill(cluster.serve_pid(), SIGHUP), 0);
  bool rotated = false;
  for (int i = 0; i < 50 && !rotated; ++i) {
    rotated = with("sk-new") == grpc::StatusCode::OK;
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(rotated) << "the new key is not accepted after SIGHUP";
  EXPECT_EQ(with("sk-old"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(http_with("sk-new"), 200);  // the HTTP API shares the router's keys
  EXPECT_EQ(http_with("sk-old"), 401);
  EXPECT_EQ(router_pid(cluster.serve_pid()), router) << "reloaded in place, not restarted";
  // Calls after the reload go to the reopened file, earlier ones stayed in the moved one.
  const auto count = [](const std::string& path) {
    std::ifstream in(path);
    size_t n = 0;
    for (std::string line; std::getline(in, line);) ++n;
    return n;
  };
  // The moved file: sk-old served, sk-new refused (and any tries before the
  // reload); the reopened one: the call that saw the new key (the log is
  // reopened before the keys change), sk-old refused, the HTTP call.
  EXPECT_GE(count(log + ".1"), 2u);
  EXPECT_GE(count(log), 3u);

  // A broken file on the next SIGHUP: the keys in force stay.
  std::ofstream(keys) << "# emptied by mistake\n";
  ASSERT_EQ(kill(cluster.serve_pid(), SIGHUP), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(with("sk-new"), grpc::StatusCode::OK);
  EXPECT_EQ(router_pid(cluster.serve_pid()), router);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tandem
