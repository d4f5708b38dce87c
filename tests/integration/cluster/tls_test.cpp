// A cluster whose router serves TLS (router.tls_cert_file / tls_key_file,
// the self-signed fixture of tests/fixtures/tls): gRPC and HTTPS clients that
// trust the certificate are served; plaintext clients and clients expecting
// another name are not; `tandem serve`, `tandem client` and `tandem bench`
// work over it.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <string>

#include "cluster_harness.h"
#include "tandem/api/channel.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::Cluster;
using testing::cluster_model;
using testing::generate;
using testing::greedy;

TEST(Tls, RouterServesGrpcAndHttpsOverTls) {
  // `tandem serve` itself waited for the router over TLS before the harness did.
  Cluster cluster(cluster_model("tiny-mixtral"), {.attention_nodes = 1, .expert_nodes = 1, .http = true, .tls = true});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  const std::string ca = Cluster::tls_dir() + "/server.crt";

  auto served = generate(cluster.stub(), greedy("hello", 3));
  ASSERT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_EQ(served.tokens.size(), 3u);

  // Plaintext, or TLS expecting another name: no answer.
  auto plain = tandem::v1::Generation::NewStub(api::open_channel(cluster.router_address()));
  auto refused = generate(*plain, greedy("hello", 3), std::chrono::seconds(5));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.status.error_message();
  auto other = tandem::v1::Generation::NewStub(
      api::open_channel(cluster.router_address(), *api::client_tls(ca, "other.example.com")));
  refused = generate(*other, greedy("hello", 3), std::chrono::seconds(5));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.status.error_message();
  // The name the certificate carries, dialled by address (as `tandem serve` does).
  auto named = tandem::v1::Generation::NewStub(
      api::open_channel(cluster.router_address(), *api::client_tls(ca, "localhost")));
  EXPECT_TRUE(generate(*named, greedy("hello", 2)).status.ok());

  // HTTPS.
  httplib::Client https("https://127.0.0.1:" + std::to_string(cluster.http_port()));
  https.set_ca_cert_path(ca.c_str());
  https.enable_server_certificate_verification(true);
  https.set_read_timeout(60, 0);
  auto res = https.Post("/v1/completions", json{{"prompt", "hello"}, {"max_tokens", 3}, {"temperature", 0}}.dump(),
                        "application/json");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["usage"]["completion_tokens"], 3);
  auto health = https.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  // Plain HTTP to the HTTPS port gets no HTTP answer.
  httplib::Client plain_http("127.0.0.1", cluster.http_port());
  plain_http.set_read_timeout(5, 0);
  auto no = plain_http.Get("/health");
  EXPECT_TRUE(!no || no->status != 200);

  int rc = 0;
  std::string out = testing::shell(testing::tandem_bin() + " client --server " + cluster.router_address() +
                                       " --prompt hi --max-tokens 2 --tls-ca " + ca,
                                   rc);
  EXPECT_EQ(rc, 0) << out;
  out = testing::shell(testing::tandem_bin() + " bench --server " + cluster.router_address() + " --http 127.0.0.1:" +
                           std::to_string(cluster.http_port()) + " --tls-ca " + ca +
                           " --tls-server-name localhost --api both --requests 2 --concurrency 2 --prompt-tokens 8 --output-tokens 2",
                       rc);
  EXPECT_EQ(rc, 0) << out;
}

}  // namespace
}  // namespace tandem
