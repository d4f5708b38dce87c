#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tandem/api/channel.h"
#include "tandem/api/deployment.h"

namespace tandem::api {
namespace {

TEST(Deployment, ParsesShippedLocalConfig) {
  auto c = DeploymentConfig::from_file(std::string(TANDEM_SOURCE_DIR) + "/configs/local.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->model_path, "models/small-mixtral");
  EXPECT_EQ(c->served_name, "small-mixtral");
  EXPECT_EQ(c->attention_nodes, 2);
  EXPECT_EQ(c->expert_nodes, 2);
  EXPECT_EQ(c->micro_batches, 2);
  EXPECT_EQ(c->router.port, 50051);
  EXPECT_EQ(c->attention_endpoint(1).port, 50101);
  EXPECT_EQ(c->transport, "ucx");
}

TEST(Deployment, RoundTripsThroughYaml) {
  auto c = DeploymentConfig::from_yaml("model: {path: /m/x}\ncluster: {expert_nodes: 3, micro_batches: 3}\n", "a.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  auto d = DeploymentConfig::from_yaml(c->to_yaml(), "b.yaml");
  ASSERT_TRUE(d.is_ok()) << d.status().to_string() << "\n" << c->to_yaml();
  EXPECT_EQ(d->to_yaml(), c->to_yaml());
  EXPECT_EQ(d->expert_nodes, 3);
}

// Prefix caching on the nodes and prefix affinity in the router: on unless
// turned off, round-tripped, and a non-boolean is refused naming the key.
TEST(Deployment, PrefixCachingKeys) {
  auto on = DeploymentConfig::from_yaml("model: {path: m}\n", "a.yaml");
  ASSERT_TRUE(on.is_ok());
  EXPECT_TRUE(on->prefix_caching);
  EXPECT_TRUE(on->prefix_affinity);
  auto off = DeploymentConfig::from_yaml(
      "model: {path: m}\nattention: {prefix_caching: false}\nrouter: {prefix_affinity: false}\n", "b.yaml");
  ASSERT_TRUE(off.is_ok()) << off.status().to_string();
  EXPECT_FALSE(off->prefix_caching);
  EXPECT_FALSE(off->prefix_affinity);
  auto again = DeploymentConfig::from_yaml(off->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_FALSE(again->prefix_caching);
  EXPECT_FALSE(again->prefix_affinity);
  auto bad = DeploymentConfig::from_yaml("model: {path: m}\nattention: {prefix_caching: sometimes}\n", "bad.yaml");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("attention.prefix_caching"), std::string::npos) << bad.status().message();
}

TEST(Deployment, DrainTimeout) {
  auto d = DeploymentConfig::from_yaml("model: {path: m}\n", "a.yaml");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(d->drain_timeout_s, 30);
  auto set = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {drain_timeout_s: 0}\n", "b.yaml");
  ASSERT_TRUE(set.is_ok()) << set.status().to_string();
  EXPECT_EQ(set->drain_timeout_s, 0);
  auto again = DeploymentConfig::from_yaml(set->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->drain_timeout_s, 0);
  auto bad = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {drain_timeout_s: -1}\n", "bad.yaml");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("router.drain_timeout_s"), std::string::npos) << bad.status().message();
}

TEST(Deployment, ToolCallParser) {
  auto d = DeploymentConfig::from_yaml("model: {path: m}\n", "a.yaml");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(d->tool_call_parser, "auto");
  auto set = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {tool_call_parser: mistral}\n", "b.yaml");
  ASSERT_TRUE(set.is_ok()) << set.status().to_string();
  auto again = DeploymentConfig::from_yaml(set->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->tool_call_parser, "mistral");
  auto bad = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {tool_call_parser: llama3_json}\n", "bad.yaml");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("router.tool_call_parser"), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("llama3_json"), std::string::npos) << bad.status().message();
  EXPECT_EQ(d->reasoning_parser, "none");
  auto thinking = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {reasoning_parser: deepseek_r1}\n", "c.yaml");
  ASSERT_TRUE(thinking.is_ok()) << thinking.status().to_string();
  EXPECT_EQ(DeploymentConfig::from_yaml(thinking->to_yaml(), "again.yaml")->reasoning_parser, "deepseek_r1");
  auto wrong = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {reasoning_parser: granite}\n", "bad.yaml");
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_NE(wrong.status().message().find("router.reasoning_parser"), std::string::npos) << wrong.status().message();
}

TEST(Deployment, MaxPromptLogprobRows) {
  auto d = DeploymentConfig::from_yaml("model: {path: m}\n", "a.yaml");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(d->max_prompt_logprob_rows, 512);
  auto set = DeploymentConfig::from_yaml("model: {path: m}\nattention: {max_prompt_logprob_rows: 64}\n", "b.yaml");
  ASSERT_TRUE(set.is_ok()) << set.status().to_string();
  auto again = DeploymentConfig::from_yaml(set->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok());
  EXPECT_EQ(again->max_prompt_logprob_rows, 64);
  auto bad = DeploymentConfig::from_yaml("model: {path: m}\nattention: {max_prompt_logprob_rows: 0}\n", "bad.yaml");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("attention.max_prompt_logprob_rows"), std::string::npos)
      << bad.status().message();
}

void expect_refused(const std::string& yaml, const std::string& key_path, const std::string& what = "") {
  auto c = DeploymentConfig::from_yaml(yaml, "bad.yaml");
  ASSERT_FALSE(c.is_ok()) << yaml;
  const std::string& m = c.status().message();
  EXPECT_NE(m.find("bad.yaml"), std::string::npos) << m;
  EXPECT_NE(m.find(key_path), std::string::npos) << m;
  if (!what.empty()) {
    EXPECT_NE(m.find(what), std::string::npos) << m;
  }
}

TEST(Deployment, RefusesBadYamlWithKeyPath) {
  expect_refused("model: {path: m}\nclustr: {}\n", "clustr", "unknown key");
  expect_refused("model: {path: m}\ncluster: {expert_node: 2}\n", "cluster.expert_node", "unknown key");
  expect_refused("model: {path: m}\ncluster: {expert_nodes: two}\n", "cluster.expert_nodes", "integer");
  expect_refused("model: {path: m}\ncluster: {micro_batches: 0}\n", "cluster.micro_batches", "[1, 16]");
  expect_refused("model: {path: m}\nrouter: {listen: localhost}\n", "router.listen", "host:port");
  expect_refused("model: {path: m}\nrouter: {listen: 'h:99999'}\n", "router.listen", "65535");
  expect_refused("model: {path: m}\ntransport: {backend: carrier-pigeon}\n", "transport.backend");
  expect_refused("cluster: {expert_nodes: 2}\n", "model.path", "required");
  expect_refused("model: [1, 2]\n", "model", "mapping");
  expect_refused("model: {path: m}\nattention: {base_port: 50051}\n", "attention.base_port", "collide");
  expect_refused("model: {path: m\n", "not valid YAML");
}

TEST(Deployment, AcceptsBothTransportBackends) {
  for (const std::string backend : {"tcp", "ucx"}) {
    auto c = DeploymentConfig::from_yaml("model: {path: m}\ntransport: {backend: " + backend + "}\n", "d.yaml");
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    EXPECT_EQ(c->transport, backend);
    EXPECT_FALSE(c->transport_shared_memory);
  }
  auto shm = DeploymentConfig::from_yaml("model: {path: m}\ntransport: {backend: ucx, shared_memory: true}\n", "d.yaml");
  ASSERT_TRUE(shm.is_ok()) << shm.status().to_string();
  EXPECT_TRUE(shm->transport_shared_memory);
  auto again = DeploymentConfig::from_yaml(shm->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_TRUE(again->transport_shared_memory);
  expect_refused("model: {path: m}\ntransport: {backend: tcp, shared_memory: true}\n", "transport.shared_memory",
                 "backend: ucx");
  expect_refused("model: {path: m}\ntransport: {backend: ucx, shared_memory: maybe}\n", "transport.shared_memory",
                 "true/false");
}

TEST(Deployment, ValidatesAgainstModel) {
  auto c = DeploymentConfig::from_yaml("model: {path: m}\ncluster: {expert_nodes: 9}\n", "d.yaml");
  ASSERT_TRUE(c.is_ok());
  Status st = c->validate_against_model(8, 1024, size_t{1} << 34);
  EXPECT_NE(st.message().find("cluster.expert_nodes"), std::string::npos) << st.message();
  c->expert_nodes = 2;
  st = c->validate_against_model(8, 1 << 20, size_t{1} << 30);
  EXPECT_NE(st.message().find("attention.kv_blocks"), std::string::npos) << st.message();
  EXPECT_TRUE(c->validate_against_model(8, 1024, size_t{1} << 34).is_ok());
}

TEST(Deployment, CpuListsParseAndRoundTrip) {
  EXPECT_EQ(*parse_cpu_list("3"), (std::vector<int>{3}));
  EXPECT_EQ(*parse_cpu_list("4-6,0,5"), (std::vector<int>{0, 4, 5, 6}));
  EXPECT_EQ(format_cpu_list({0, 1, 2, 5, 7, 8}), "0-2,5,7-8");
  for (const char* bad : {"", "a", "1-", "-1", "3-1", "1,,2", "99999", "1 2"}) {
    auto r = parse_cpu_list(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
  auto c = DeploymentConfig::from_yaml("model: {path: m}\nattention: {cpus: '0'}\nexpert: {cpus: 1-3}\n", "d.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->attention_cpus, (std::vector<int>{0}));
  EXPECT_EQ(c->expert_cpus, (std::vector<int>{1, 2, 3}));
  auto again = DeploymentConfig::from_yaml(c->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(again->expert_cpus, c->expert_cpus);
  expect_refused("model: {path: m}\nexpert: {cpus: 2-x}\n", "expert.cpus", "'2-x'");
}

// cluster.device is the default of both roles; each role may override it
// (GPU attention with CPU experts, say), and the GPU slots follow.
TEST(Deployment, PerRoleDevicesDefaultToTheClusterDevice) {
  auto c = DeploymentConfig::from_yaml("model: {path: m}\ncluster: {device: cuda, attention_nodes: 2}\n", "d.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->attention_on(), "cuda");
  EXPECT_EQ(c->experts_on(), "cuda");
  EXPECT_EQ(c->expert_gpu_slot(1), 3);  // after the two attention nodes

  auto mixed = DeploymentConfig::from_yaml("model: {path: m}\nexpert: {device: cuda}\n", "d.yaml");
  ASSERT_TRUE(mixed.is_ok()) << mixed.status().to_string();
  EXPECT_EQ(mixed->attention_on(), "cpu");
  EXPECT_EQ(mixed->experts_on(), "cuda");
  EXPECT_TRUE(mixed->uses_cuda());
  EXPECT_EQ(mixed->expert_gpu_slot(0), 0);
  auto again = DeploymentConfig::from_yaml(mixed->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(again->attention_on(), "cpu");
  EXPECT_EQ(again->experts_on(), "cuda");

  auto cpu = DeploymentConfig::from_yaml("model: {path: m}\n", "d.yaml");
  ASSERT_TRUE(cpu.is_ok());
  EXPECT_FALSE(cpu->uses_cuda());
  expect_refused("model: {path: m}\nattention: {device: tpu}\n", "attention.device", "'tpu'");
  expect_refused("model: {path: m}\ncluster: {device: gpu}\n", "cluster.device", "'gpu'");
  // The compute dtype of GPU nodes: refused where no node is on a GPU.
  auto bf16 = DeploymentConfig::from_yaml("model: {path: m}\ncluster: {device: cuda, dtype: bf16}\n", "d.yaml");
  ASSERT_TRUE(bf16.is_ok()) << bf16.status().to_string();
  EXPECT_EQ(bf16->dtype, "bf16");
  auto bf16_again = DeploymentConfig::from_yaml(bf16->to_yaml(), "again.yaml");
  ASSERT_TRUE(bf16_again.is_ok()) << bf16_again.status().to_string();
  EXPECT_EQ(bf16_again->dtype, "bf16");
  expect_refused("model: {path: m}\ncluster: {dtype: bf16}\n", "cluster.dtype", "on the CPU");
  expect_refused("model: {path: m}\ncluster: {device: cuda, dtype: fp8}\n", "cluster.dtype", "'fp8'");
  // The OpenAI-compatible HTTP API: off unless set, round-tripped, not on router.listen's port.
  EXPECT_EQ(cpu->http.port, 0);
  auto http = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {http_listen: 0.0.0.0:8080}\n", "d.yaml");
  ASSERT_TRUE(http.is_ok()) << http.status().to_string();
  EXPECT_EQ(http->http.to_string(), "0.0.0.0:8080");
  auto http_again = DeploymentConfig::from_yaml(http->to_yaml(), "again.yaml");
  ASSERT_TRUE(http_again.is_ok()) << http_again.status().to_string();
  EXPECT_EQ(http_again->http.to_string(), "0.0.0.0:8080");
  expect_refused("model: {path: m}\nrouter: {listen: 127.0.0.1:9000, http_listen: 127.0.0.1:9000}\n",
                 "router.http_listen", "router.listen");
  expect_refused("model: {path: m}\nrouter: {http_listen: localhost}\n", "router.http_listen", "host:port");
  expect_refused("model: {path: m}\nrouter: {http_listen: 127.0.0.1:50100}\n", "attention.base_port", "collide");
  // How GPU nodes run: CUDA graphs and the expert GEMMs, round-tripped, and
  // refused where they would have nothing to apply to.
  auto tuned = DeploymentConfig::from_yaml(
      "model: {path: m}\ncluster: {device: cuda, cuda_graphs: true, expert_gemm: device}\n", "d.yaml");
  ASSERT_TRUE(tuned.is_ok()) << tuned.status().to_string();
  EXPECT_TRUE(tuned->cuda_graphs);
  EXPECT_EQ(tuned->expert_gemm, "device");
  auto tuned_again = DeploymentConfig::from_yaml(tuned->to_yaml(), "again.yaml");
  ASSERT_TRUE(tuned_again.is_ok()) << tuned_again.status().to_string();
  EXPECT_TRUE(tuned_again->cuda_graphs);
  EXPECT_EQ(tuned_again->expert_gemm, "device");
  EXPECT_FALSE(cpu->cuda_graphs);
  EXPECT_EQ(cpu->expert_gemm, "per-expert");
  expect_refused("model: {path: m}\ncluster: {cuda_graphs: true}\n", "cluster.cuda_graphs", "on the CPU");
  expect_refused("model: {path: m}\ncluster: {device: cuda, cuda_graphs: maybe}\n", "cluster.cuda_graphs", "");
  expect_refused("model: {path: m}\ncluster: {device: cuda, expert_gemm: cutlass}\n", "cluster.expert_gemm",
                 "'cutlass'");
  expect_refused("model: {path: m}\nattention: {device: cuda}\ncluster: {expert_gemm: batched}\n",
                 "cluster.expert_gemm", "expert nodes here are on the CPU");
  // The GPU-direct data plane needs both roles on GPUs.
  auto ipc = DeploymentConfig::from_yaml("model: {path: m}\ncluster: {device: cuda}\ntransport: {backend: cuda_ipc}\n",
                                         "d.yaml");
  ASSERT_TRUE(ipc.is_ok()) << ipc.status().to_string();
  EXPECT_EQ(ipc->transport, "cuda_ipc");
  expect_refused("model: {path: m}\nattention: {device: cuda}\ntransport: {backend: cuda_ipc}\n",
                 "transport.backend", "needs attention and expert nodes on cuda");
}

// NCCL send/recv, the comparison backend for several GPUs: both roles on
// GPUs, and no link with both ends on one GPU.
TEST(Deployment, NcclNeedsGpuNodesOnDifferentGpus) {
  expect_refused("model: {path: m}\nexpert: {device: cuda}\ntransport: {backend: nccl}\n", "transport.backend",
                 "needs attention and expert nodes on cuda");
  expect_refused("model: {path: m}\ntransport: {backend: mpi}\n", "transport.backend",
                 "must be tcp, ucx, cuda_ipc or nccl, got 'mpi'");
  auto one_each = DeploymentConfig::from_yaml(
      "model: {path: m}\ncluster: {device: cuda, attention_nodes: 1, expert_nodes: 1}\ntransport: {backend: nccl}\n",
      "d.yaml");
  ASSERT_TRUE(one_each.is_ok()) << one_each.status().to_string();
  EXPECT_EQ(one_each->transport, "nccl");
  // One GPU: both nodes on device 0.
  Status shared = one_each->check_nccl_placement(1);
  EXPECT_EQ(shared.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(shared.message().find("d.yaml: transport.backend: nccl"), std::string::npos) << shared.message();
  EXPECT_NE(shared.message().find("attention node 0 and expert node 0 would share GPU 0"), std::string::npos)
      << shared.message();
  EXPECT_NE(shared.message().find("cuda_ipc"), std::string::npos) << shared.message();
  EXPECT_TRUE(one_each->check_nccl_placement(2).is_ok());
  // Round-robin wraps: 2 attention + 1 expert node on 2 GPUs put the expert
  // node back on GPU 0, with attention node 0.
  auto three = DeploymentConfig::from_yaml(
      "model: {path: m}\ncluster: {device: cuda, attention_nodes: 2, expert_nodes: 1}\ntransport: {backend: nccl}\n",
      "d.yaml");
  ASSERT_TRUE(three.is_ok()) << three.status().to_string();
  Status wrapped = three->check_nccl_placement(2);
  EXPECT_NE(wrapped.message().find("attention node 0 and expert node 0 would share GPU 0"), std::string::npos)
      << wrapped.message();
  EXPECT_TRUE(three->check_nccl_placement(3).is_ok());
  // Other backends do not care.
  auto ipc = DeploymentConfig::from_yaml("model: {path: m}\ncluster: {device: cuda}\ntransport: {backend: cuda_ipc}\n",
                                         "d.yaml");
  ASSERT_TRUE(ipc.is_ok());
  EXPECT_TRUE(ipc->check_nccl_placement(1).is_ok());
}

}  // namespace
}  // namespace tandem::api

namespace tandem::api {
namespace {

// router.api_keys inline and from a file (one per line, # comments, read
// by accepted_api_keys() only: other roles never open it): both accepted,
// the file's keys not written back, a relative file found beside the
// deployment file, bad keys and files refused naming the key without
// showing the key, empty settings refused rather than turning the check off.
TEST(Deployment, ApiKeys) {
  auto none = DeploymentConfig::from_yaml("model: {path: m}\n", "a.yaml");
  ASSERT_TRUE(none.is_ok());
  ASSERT_TRUE(none->accepted_api_keys().is_ok());
  EXPECT_TRUE(none->accepted_api_keys()->empty());
  const std::string dir =
      (std::filesystem::path(::testing::TempDir()) / ("tandem_api_keys_" + std::to_string(::getpid()))).lexically_normal();
  std::filesystem::create_directories(dir);
  const std::string file = dir + "/keys.txt";
  {
    std::ofstream(file) << "\xEF\xBB\xBF# ops team\nsk-file-1\n\n \t sk-file-2 \t\r\n";
  }
  // Relative to the deployment file's directory.
  auto both = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {api_keys: [sk-inline], api_keys_file: keys.txt}\n",
                                          dir + "/deploy.yaml");
  ASSERT_TRUE(both.is_ok()) << both.status().to_string();
  EXPECT_EQ(both->api_keys_file, file);
  auto keys = both->accepted_api_keys();
  ASSERT_TRUE(keys.is_ok()) << keys.status().to_string();
  EXPECT_EQ(*keys, (std::vector<std::string>{"sk-inline", "sk-file-1", "sk-file-2"}));
  const std::string yaml = both->to_yaml();
  EXPECT_EQ(yaml.find("sk-file-1"), std::string::npos) << yaml;
  auto again = DeploymentConfig::from_yaml(yaml, "again.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  ASSERT_TRUE(again->accepted_api_keys().is_ok());
  EXPECT_EQ(*again->accepted_api_keys(), *keys);

  const auto refused = [](const std::string& router, const std::string& key) {
    auto bad = DeploymentConfig::from_yaml("model: {path: m}\nrouter: " + router + "\n", "bad.yaml");
    Status st = bad.is_ok() ? bad->accepted_api_keys().status() : bad.status();
    EXPECT_FALSE(st.is_ok()) << router;
    EXPECT_NE(st.message().find(key), std::string::npos) << st.message();
    return st.message();
  };
  EXPECT_EQ(refused("{api_keys: ['sk with space']}", "router.api_keys[0]").find("sk with space"), std::string::npos);
  refused("{api_keys: sk-one}", "router.api_keys");
  refused("{api_keys: ['']}", "router.api_keys[0]");
  refused("{api_keys: []}", "an empty list");
  refused("{api_keys_file: ''}", "router.api_keys_file: empty");
  // The file is the router's to read: parsing never opens it.
  auto missing = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {api_keys_file: /nonexistent/keys}\n", "m.yaml");
  ASSERT_TRUE(missing.is_ok()) << missing.status().to_string();
  refused("{api_keys_file: /nonexistent/keys}", "router.api_keys_file: cannot read");
  {
    std::ofstream(file) << "# nothing but a comment\n";
  }
  refused("{api_keys_file: " + file + "}", "holds no key");
  {
    std::ofstream(file) << "sk-ok\nsk bad\n";
  }
  EXPECT_EQ(refused("{api_keys_file: " + file + "}", "line 2").find("sk bad"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tandem::api

namespace tandem::api {
namespace {

// router.tls_cert_file / tls_key_file: both or neither, found beside the
// deployment file, read only by server_tls(); the fixture certificate names
// localhost.
TEST(Deployment, Tls) {
  auto off = DeploymentConfig::from_yaml("model: {path: m}\n", "a.yaml");
  ASSERT_TRUE(off.is_ok());
  EXPECT_FALSE(off->tls());
  const std::string dir = std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/tls";
  auto on = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {tls_cert_file: server.crt, tls_key_file: server.key}\n",
                                        dir + "/deploy.yaml");
  ASSERT_TRUE(on.is_ok()) << on.status().to_string();
  EXPECT_EQ(on->tls_cert_file, dir + "/server.crt");
  auto pems = on->server_tls();
  ASSERT_TRUE(pems.is_ok()) << pems.status().to_string();
  EXPECT_NE(pems->cert_pem.find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_NE(pems->key_pem.find("PRIVATE KEY"), std::string::npos);
  auto name = certificate_name(pems->cert_pem);
  ASSERT_TRUE(name.is_ok()) << name.status().to_string();
  EXPECT_EQ(*name, "localhost");
  EXPECT_FALSE(certificate_name("not a certificate").is_ok());
  const auto read = [&](const std::string& file) {
    std::ifstream in(dir + "/" + file);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  };
  // Only an IPv6 name: that one (clients ignore the common name next to alternative names).
  auto v6 = certificate_name(read("ipv6_only.crt"));
  ASSERT_TRUE(v6.is_ok()) << v6.status().to_string();
  EXPECT_EQ(*v6, "::1");
  // The key must be the certificate's.
  EXPECT_TRUE(check_server_tls(pems->cert_pem, pems->key_pem).is_ok());
  Status wrong = check_server_tls(pems->cert_pem, read("other.key"));
  EXPECT_NE(wrong.message().find("not the private key of router.tls_cert_file"), std::string::npos) << wrong.message();
  EXPECT_NE(check_server_tls(pems->cert_pem, "garbage").message().find("router.tls_key_file"), std::string::npos);
  EXPECT_NE(check_server_tls("garbage", pems->key_pem).message().find("router.tls_cert_file"), std::string::npos);
  auto empty = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {tls_cert_file: '', tls_key_file: ''}\n", "e.yaml");
  ASSERT_FALSE(empty.is_ok());
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos) << empty.status().message();
  auto again = DeploymentConfig::from_yaml(on->to_yaml(), "again.yaml");
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(again->tls_key_file, on->tls_key_file);

  auto half = DeploymentConfig::from_yaml("model: {path: m}\nrouter: {tls_cert_file: c.pem}\n", "h.yaml");
  ASSERT_FALSE(half.is_ok());
  EXPECT_NE(half.status().message().find("router.tls_key_file"), std::string::npos) << half.status().message();
  auto missing = DeploymentConfig::from_yaml(
      "model: {path: m}\nrouter: {tls_cert_file: /nonexistent/c.pem, tls_key_file: /nonexistent/k.pem}\n", "m.yaml");
  ASSERT_TRUE(missing.is_ok());  // parsing never opens them
  auto unread = missing->server_tls();
  ASSERT_FALSE(unread.is_ok());
  EXPECT_NE(unread.status().message().find("router.tls_cert_file: cannot read '/nonexistent/c.pem'"), std::string::npos)
      << unread.status().message();
}

}  // namespace
}  // namespace tandem::api
