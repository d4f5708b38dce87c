// The cluster as users run it: `tandem serve` with real role processes on
// loopback, driven through the public gRPC API.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <sstream>

#include "cluster_harness.h"
#include "tandem/api/deployment.h"
#include "tandem/engine/engine.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/weights.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterShape;
using testing::cluster_model;
using testing::generate;
using testing::greedy;
using testing::node_load;

std::vector<std::string> prompts(int n) {
  std::vector<std::string> p;
  for (int i = 0; i < n; ++i) p.push_back("Stream " + std::to_string(i) + ": the " + std::string(i % 5 + 1, 'a') + " case");
  return p;
}

// Logits after `tokens` from the single-process forward (one sequence, no batching).
std::vector<float> last_logits(const model::Checkpoint& ck, const model::ModelWeights& w, const std::vector<int32_t>& tokens) {
  const auto& c = ck.config;
  auto cache = engine::KvCache::create({c.num_layers, 256, 16, c.num_kv_heads, c.head_dim}, size_t{1} << 30);
  engine::ModelRunner runner(c, w, cache->get());
  engine::SequenceKv kv;
  (void)kv.reserve(**cache, static_cast<int64_t>(tokens.size()));
  engine::ForwardBatch b;
  for (size_t t = 0; t < tokens.size(); ++t) {
    b.tokens.push_back(tokens[t]);
    b.positions.push_back(static_cast<int32_t>(t));
    b.seq_of_token.push_back(0);
    b.slots.push_back(kv.slot(static_cast<int64_t>(t), 16));
    b.ctx_len.push_back(static_cast<int32_t>(t + 1));
  }
  b.block_tables = kv.blocks();
  b.max_blocks_per_seq = static_cast<int64_t>(kv.blocks().size());
  b.logits_rows = {static_cast<int32_t>(tokens.size() - 1)};
  std::vector<float> logits;
  runner.forward(b, logits);
  return logits;
}

// Token-for-token equality, except that where the two first differ the model
// must have been at a numerical tie: batches of different sizes round
// differently in the last bits (BLAS blocking), which may flip an argmax only
// when the two top logits are equal to within float rounding.
void expect_same_or_tied(const std::string& dir, const std::vector<int32_t>& prompt, const std::vector<int32_t>& got,
                         const std::vector<int32_t>& want, const std::string& what) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return;
  ASSERT_LT(i, std::min(got.size(), want.size())) << what << ": lengths differ";
  auto ck = model::Checkpoint::open(dir);
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  std::vector<int32_t> prefix = prompt;
  prefix.insert(prefix.end(), want.begin(), want.begin() + static_cast<long>(i));
  auto logits = last_logits(*ck, **w, prefix);
  const float gap = std::abs(logits[want[i]] - logits[got[i]]);
  EXPECT_LT(gap, 1e-4f) << what << ": differs at token " << i << " (" << got[i] << " vs " << want[i]
                        << ") where the logits differ by " << gap << ", not a tie";
  GTEST_LOG_(INFO) << what << ": tie at token " << i << " (logit gap " << gap << "), comparison stops there";
}

// Single-process greedy reference for the same prompts.
std::vector<std::vector<int32_t>> reference(const std::string& dir, const std::vector<std::string>& ps, int max_tokens) {
  auto ck = model::Checkpoint::open(dir);
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  auto eng = engine::Engine::create(ck->config, **w, {});
  std::vector<engine::GenerationRequest> reqs;
  for (const auto& p : ps) {
    engine::GenerationRequest r;
    r.prompt = *ck->tokenizer->encode(p, true);
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    r.stop_token_ids = ck->stop_token_ids;
    reqs.push_back(r);
  }
  auto res = (*eng)->generate(reqs);
  std::vector<std::vector<int32_t>> out;
  for (const auto& r : *res) out.push_back(r.tokens);
  return out;
}

class ClusterEquivalence : public ::testing::TestWithParam<std::tuple<std::string, int, int, int, std::string>> {};

// 16 concurrent streams through the cluster give, token for token, what the
// single-process engine gives.
TEST_P(ClusterEquivalence, ConcurrentGreedyStreamsMatchSingleProcess) {
  const auto& [preset, n_a, n_e, m, transport] = GetParam();
  const std::string& dir = cluster_model(preset);
  Cluster cluster(dir, {.attention_nodes = n_a, .expert_nodes = n_e, .micro_batches = m, .transport = transport});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  const auto ps = prompts(16);
  const auto want = reference(dir, ps, 12);
  std::vector<std::future<testing::Reply>> futs;
  for (const auto& p : ps)
    futs.push_back(std::async(std::launch::async, [&, p] { return generate(cluster.stub(), greedy(p, 12)); }));
  size_t generated = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    auto r = futs[i].get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    generated += r.tokens.size();
    auto ck = model::Checkpoint::open(dir);
    expect_same_or_tied(dir, *ck->tokenizer->encode(ps[i], true), r.tokens, want[i], "stream " + std::to_string(i));
    EXPECT_EQ(r.completion_tokens, r.tokens.size());
    EXPECT_NE(r.finish, tandem::v1::FINISH_REASON_UNSPECIFIED);
  }
  EXPECT_GT(generated, 4 * ps.size()) << "the streams compared tokens, not only early stops";
}

// GPU nodes (attention.device / expert.device: cuda) serve what the
// single-process CPU engine serves: all on the GPU, and each role alone on it.
// Runs where a GPU driver is present (scripts/gpu_check.sh), skips elsewhere.
struct GpuCase {
  const char* name;
  const char* attention_device;
  const char* expert_device;
  int n_a, n_e, m;
  const char* transport;
  const char* gpu_tuning = "";  // extra cluster: keys
};

void PrintTo(const GpuCase& k, std::ostream* os) { *os << k.name; }

class ClusterGpu : public ::testing::TestWithParam<GpuCase> {};

TEST_P(ClusterGpu, GpuNodesMatchSingleProcess) {
  if (!std::filesystem::exists("/dev/nvidiactl")) GTEST_SKIP() << "no GPU driver (/dev/nvidiactl): GPU nodes need a GPU";
  const GpuCase& k = GetParam();
  for (const char* preset : {"tiny-mixtral", "tiny-qwen3-moe"}) {
    const std::string& dir = cluster_model(preset);
    Cluster cluster(dir, {.attention_nodes = k.n_a, .expert_nodes = k.n_e, .micro_batches = k.m,
                          .transport = k.transport, .attention_device = k.attention_device,
                          .expert_device = k.expert_device, .gpu_tuning = k.gpu_tuning});
    ASSERT_TRUE(cluster.ready().is_ok()) << preset << ": " << cluster.ready().to_string();
    const auto ps = prompts(16);
    const auto want = reference(dir, ps, 12);
    std::vector<std::future<testing::Reply>> futs;
    for (const auto& p : ps)
      futs.push_back(std::async(std::launch::async, [&, p] { return generate(cluster.stub(), greedy(p, 12)); }));
    auto ck = model::Checkpoint::open(dir);
    for (size_t i = 0; i < ps.size(); ++i) {
      auto r = futs[i].get();
      ASSERT_TRUE(r.status.ok()) << preset << ": " << r.status.error_message();
      expect_same_or_tied(dir, *ck->tokenizer->encode(ps[i], true), r.tokens, want[i],
                          std::string(preset) + " stream " + std::to_string(i));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, ClusterGpu,
                         ::testing::Values(GpuCase{"all_gpu_ucx", "cuda", "cuda", 1, 2, 2, "ucx"},
                                           GpuCase{"all_gpu_cuda_ipc", "cuda", "cuda", 2, 2, 2, "cuda_ipc"},
                                           // Attention replayed from CUDA graphs, experts on the device-offset kernel.
                                           GpuCase{"all_gpu_cuda_ipc_graphs_device_experts", "cuda", "cuda", 1, 2, 2,
                                                   "cuda_ipc", "cuda_graphs: true, expert_gemm: device"},
                                           GpuCase{"gpu_attention_tcp", "cuda", "cpu", 2, 1, 3, "tcp"},
                                           GpuCase{"gpu_experts_ucx", "cpu", "cuda", 1, 2, 1, "ucx"}),
                         [](const auto& info) { return std::string(info.param.name); });

// Every shape over both data planes: gRPC streams (tcp) and the UCX M2N transport.
std::vector<std::tuple<std::string, int, int, int, std::string>> equivalence_cases() {
  std::vector<std::tuple<std::string, int, int, int, std::string>> v;
  for (const char* transport : {"tcp", "ucx"})
    for (const char* preset : {"tiny-mixtral", "tiny-qwen3-moe"})
      for (auto [n_a, n_e, m] : {std::tuple{1, 1, 1}, std::tuple{2, 2, 2}, std::tuple{2, 3, 3}})
        v.emplace_back(preset, n_a, n_e, m, transport);
  // Qwen2-MoE as transformers writes it (BF16, sharded): q/k/v biases, a
  // sigmoid-gated shared expert on the attention nodes, a dense layer
  // (mlp_only_layers), top-k weights not renormalised.
  v.emplace_back("hf-qwen2-moe", 2, 2, 2, "tcp");
  v.emplace_back("hf-qwen2-moe", 2, 3, 3, "ucx");
  // UCX with its shared-memory transports, on the largest shapes.
  v.emplace_back("tiny-mixtral", 2, 3, 3, "ucx-shm");
  v.emplace_back("tiny-qwen3-moe", 2, 3, 3, "ucx-shm");
  return v;
}

std::string equivalence_name(const ::testing::TestParamInfo<ClusterEquivalence::ParamType>& info) {
  const auto& [preset, n_a, n_e, m, transport] = info.param;
  std::string n = preset + "_a" + std::to_string(n_a) + "_e" + std::to_string(n_e) + "_m" + std::to_string(m) + "_" +
                  transport;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

std::string transport_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ClusterEquivalence, ::testing::ValuesIn(equivalence_cases()), equivalence_name);

class ClusterBehaviour : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster(cluster_model("tiny-mixtral"), {.attention_nodes = 2, .expert_nodes = 2, .micro_batches = 2});
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static Cluster* cluster_;
};
Cluster* ClusterBehaviour::cluster_ = nullptr;

TEST_F(ClusterBehaviour, InvalidRequestsNameTheField) {
  ASSERT_TRUE(cluster_->ready().is_ok()) << cluster_->ready().to_string();
  auto& stub = cluster_->stub();
  tandem::v1::GenerateRequest none;
  auto r = generate(stub, none);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("input"), std::string::npos) << r.status.error_message();
  auto bad_p = greedy("hi", 4);
  bad_p.mutable_sampling()->set_top_p(1.5f);
  r = generate(stub, bad_p);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("sampling.top_p"), std::string::npos);
  tandem::v1::GenerateRequest ids;
  ids.mutable_token_ids()->add_ids(999999);
  r = generate(stub, ids);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("token_ids"), std::string::npos);
  auto wrong_model = greedy("hi", 4);
  wrong_model.set_model("gpt-17");
  EXPECT_EQ(generate(stub, wrong_model).status.error_code(), grpc::StatusCode::NOT_FOUND);
  auto huge = greedy("hi", 4);
  huge.set_text(std::string(100000, 'x'));
  EXPECT_EQ(generate(stub, huge).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ClusterBehaviour, StopStringsEndTheStreamBeforeTheStopText) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  auto free_run = generate(cluster_->stub(), greedy("Stop strings", 16));
  ASSERT_TRUE(free_run.status.ok());
  ASSERT_GE(free_run.text.size(), 6u);
  // Three printable ASCII bytes from the second half (a stop string must be valid UTF-8).
  size_t at = std::string::npos;
  for (size_t i = free_run.text.size() / 2; i + 3 <= free_run.text.size() && at == std::string::npos; ++i)
    if (std::all_of(free_run.text.begin() + i, free_run.text.begin() + i + 3, [](char ch) { return ch > 32 && ch < 127; }))
      at = i;
  ASSERT_NE(at, std::string::npos) << free_run.text;
  const std::string stop = free_run.text.substr(at, 3);
  auto req = greedy("Stop strings", 16);
  req.mutable_sampling()->add_stop(stop);
  auto r = generate(cluster_->stub(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.finish, tandem::v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.text, free_run.text.substr(0, free_run.text.find(stop)));
}

TEST_F(ClusterBehaviour, ClientCancellationFreesKvBlocks) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  auto long_one = greedy("a long one", 2000);
  long_one.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext ctx;
  auto reader = cluster_->stub().Generate(&ctx, long_one);
  tandem::v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first)) << reader->Finish().error_message();  // running: cancel it now
  ctx.TryCancel();
  while (reader->Read(&first)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // Both attention nodes are back to an empty cache shortly after.
  for (int i = 0; i < 2; ++i) {
    auto stub = tandem::internal::v1::AttentionNode::NewStub(
        grpc::CreateChannel(cluster_->attention_address(i), grpc::InsecureChannelCredentials()));
    bool freed = false;
    for (int tries = 0; tries < 50 && !freed; ++tries) {
      grpc::ClientContext c;
      tandem::internal::v1::LoadRequest rq;
      tandem::internal::v1::LoadReply rp;
      ASSERT_TRUE(stub->Load(&c, rq, &rp).ok());
      freed = rp.free_blocks() == rp.total_blocks() && rp.running() == 0;
      if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(freed) << "attention node " << i;
  }
}

// Chat renders the model's chat template (ChatML for generated models) and
// generates from it exactly as Generate does from the rendered text's tokens.
TEST_F(ClusterBehaviour, ChatAppliesTheChatTemplate) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const auto chatted = testing::chat(cluster_->stub(), testing::greedy_chat("Hello there", 8));
  ASSERT_TRUE(chatted.status.ok()) << chatted.status.error_message();
  auto ck = model::Checkpoint::open(cluster_model("tiny-mixtral"));
  auto ids = ck->tokenizer->encode("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n");
  tandem::v1::GenerateRequest gen;
  for (int32_t id : *ids) gen.mutable_token_ids()->add_ids(static_cast<uint32_t>(id));
  gen.mutable_sampling()->set_temperature(0);
  gen.mutable_sampling()->set_max_tokens(8);
  auto direct = generate(cluster_->stub(), gen);
  ASSERT_TRUE(direct.status.ok());
  EXPECT_EQ(chatted.tokens, direct.tokens);
  const grpc::Status st = testing::chat(cluster_->stub(), tandem::v1::ChatRequest()).status;
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("messages"), std::string::npos);
}

tandem::v1::ChatRequest chat_request(const std::string& system, const std::string& user, uint32_t max_tokens) {
  tandem::v1::ChatRequest chat = testing::greedy_chat(system, max_tokens);
  chat.mutable_messages(0)->set_role("system");
  auto* u = chat.add_messages();
  u->set_role("user");
  u->set_content(user);
  return chat;
}

// A chat whose long system prompt an earlier chat had: the router sends it to
// the node that served that one (prefix affinity) although another node is
// idler, because recomputing the prompt there would cost more than the short
// request already running here; that node then takes the prompt's K/V from
// its prefix cache.
TEST_F(ClusterBehaviour, SharedSystemPromptIsServedFromTheSameNodesCache) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  std::string system = "You are the assistant of the prefix affinity test.";
  for (int i = 0; i < 12; ++i) system += " Rule " + std::to_string(i) + ": keep every answer short, polite and on topic.";
  auto ck = model::Checkpoint::open(cluster_model("tiny-mixtral"));
  const auto system_tokens = ck->tokenizer->encode(system);
  ASSERT_TRUE(system_tokens.is_ok());
  const int64_t blocks = static_cast<int64_t>(system_tokens->size()) / 4;  // the harness's kv_block_size
  ASSERT_GE(blocks, 32);
  auto hits = [&](int rank) { return node_load(*cluster_, rank).prefix_hit_tokens(); };
  auto run_chat = [&](const tandem::v1::ChatRequest& chat) { return testing::chat(cluster_->stub(), chat).status; };
  ASSERT_TRUE(run_chat(chat_request(system, "What is a block?", 4)).ok());
  // A short, unrelated chat keeps one node busy (the first, with both idle)...
  grpc::ClientContext long_ctx;
  tandem::v1::ChatRequest other;
  auto* m = other.add_messages();
  m->set_role("user");
  m->set_content("Talk for a long time.");
  other.mutable_sampling()->set_max_tokens(2000);
  other.mutable_sampling()->set_ignore_eos(true);
  auto long_reader = cluster_->stub().Chat(&long_ctx, other);
  tandem::v1::GenerateResponse first;
  ASSERT_TRUE(long_reader->Read(&first));
  // ...and the next chat with the long system prompt goes where that prompt is cached.
  const int64_t before[2] = {hits(0), hits(1)};
  ASSERT_TRUE(run_chat(chat_request(system, "And what is a page?", 4)).ok());
  const int64_t gained[2] = {hits(0) - before[0], hits(1) - before[1]};
  long_ctx.TryCancel();
  while (long_reader->Read(&first)) {
  }
  (void)long_reader->Finish();
  EXPECT_TRUE((gained[0] >= blocks * 4 && gained[1] == 0) || (gained[1] >= blocks * 4 && gained[0] == 0))
      << "prefix hit tokens gained: node 0 " << gained[0] << ", node 1 " << gained[1];
}

TEST_F(ClusterBehaviour, ListModelsDescribesTheModel) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  grpc::ClientContext ctx;
  tandem::v1::ListModelsRequest rq;
  tandem::v1::ListModelsResponse rp;
  ASSERT_TRUE(cluster_->stub().ListModels(&ctx, rq, &rp).ok());
  ASSERT_EQ(rp.models_size(), 1);
  EXPECT_EQ(rp.models(0).architecture(), "MixtralForCausalLM");
  EXPECT_EQ(rp.models(0).num_experts(), 8u);
}

// Node failures, over each data plane: the UCX one must also find a restarted
// expert node on its new data-plane port, and take a restarted attention node back.
class ClusterFailures : public ::testing::TestWithParam<std::string> {
 protected:
  ClusterShape shape() const {
    return {.attention_nodes = 2, .expert_nodes = 2, .micro_batches = 2, .transport = GetParam()};
  }
};

// Killing an attention node fails only its own requests; serve restarts it and
// the router serves again.
TEST_P(ClusterFailures, KilledAttentionNodeFailsOnlyItsRequestsAndIsRestarted) {
  Cluster cluster(cluster_model("tiny-mixtral"), shape());
  auto* cluster_ = &cluster;
  ASSERT_TRUE(cluster_->ready().is_ok()) << cluster_->ready().to_string();
  std::vector<std::future<testing::Reply>> futs;
  for (int i = 0; i < 6; ++i)
    futs.push_back(std::async(std::launch::async, [&, i] {
      auto req = greedy("survive " + std::to_string(i), 1000);
      req.mutable_sampling()->set_ignore_eos(true);
      return generate(cluster_->stub(), req, std::chrono::seconds(60));
    }));
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const pid_t victim = cluster_->role_pid("attention", 0);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  int failed = 0, ok = 0;
  for (auto& f : futs) {
    auto r = f.get();
    if (r.status.ok()) ++ok;
    else {
      ++failed;
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_GT(ok, 0) << "requests on the surviving node must complete";
  // Restarted by serve; the router reports SERVING again and requests succeed.
  ASSERT_TRUE(api::wait_until_serving(cluster_->router_address(), std::chrono::seconds(60)).is_ok());
  EXPECT_NE(cluster_->role_pid("attention", 0), victim);
  bool served = false;
  for (int i = 0; i < 20 && !served; ++i) {
    served = generate(cluster_->stub(), greedy("back again", 4)).status.ok();
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(served);
}

// Killing an expert node ends the in-flight requests with UNAVAILABLE promptly;
// the router reports NOT_SERVING until serve has restarted it, then serves again.
TEST_P(ClusterFailures, KilledExpertNodeEndsRequestsAndServingResumes) {
  Cluster cluster(cluster_model("tiny-mixtral"), shape());
  auto* cluster_ = &cluster;
  ASSERT_TRUE(cluster_->ready().is_ok()) << cluster_->ready().to_string();
  std::vector<std::future<testing::Reply>> futs;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i)
    futs.push_back(std::async(std::launch::async, [&, i] {
      auto req = greedy("experts " + std::to_string(i), 1500);
      req.mutable_sampling()->set_ignore_eos(true);
      return generate(cluster_->stub(), req, std::chrono::seconds(60));
    }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const pid_t victim = cluster_->role_pid("expert", 1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  for (auto& f : futs) {
    auto r = f.get();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << r.status.error_message() << " after " << r.tokens.size() << " tokens";
    EXPECT_NE(r.status.error_message().find("expert node"), std::string::npos) << r.status.error_message();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
  ASSERT_TRUE(api::wait_until_serving(cluster_->router_address(), std::chrono::seconds(60)).is_ok());
  EXPECT_NE(cluster_->role_pid("expert", 1), victim);
  bool served = false;
  for (int i = 0; i < 30 && !served; ++i) {
    served = generate(cluster_->stub(), greedy("experts are back", 4)).status.ok();
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(served);
}

INSTANTIATE_TEST_SUITE_P(Transports, ClusterFailures, ::testing::Values("tcp", "ucx", "ucx-shm"), transport_name);

TEST(ClusterAdmission, FullQueueIsResourceExhausted) {
  Cluster cluster(cluster_model("tiny-mixtral"), {.attention_nodes = 1, .max_running_sequences = 1, .max_queue = 1});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  std::vector<std::future<testing::Reply>> futs;
  for (int i = 0; i < 8; ++i)
    futs.push_back(std::async(std::launch::async, [&] {
      auto req = greedy("queue", 200);
      req.mutable_sampling()->set_ignore_eos(true);
      return generate(cluster.stub(), req);
    }));
  int exhausted = 0, ok = 0;
  for (auto& f : futs) {
    auto r = f.get();
    if (r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++exhausted;
    if (r.status.ok()) ++ok;
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
}

// SIGTERM to `tandem serve` drains: the router refuses new requests at once,
// lets the stream in flight run to its end (router.drain_timeout_s), then
// everything stops.
TEST(ClusterDrain, SigtermFinishesRequestsInFlightAndRefusesNewOnes) {
  Cluster cluster(cluster_model("tiny-mixtral"), {.drain_timeout_s = 60});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  // Streams as long as the model's context allows (max_tokens is clamped to
  // it), several at once so that draining them takes seconds.
  constexpr int kStreams = 2;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<tandem::v1::GenerateResponse>>> readers;
  std::vector<uint32_t> tokens(kStreams, 0);
  std::vector<tandem::v1::FinishReason> finish(kStreams, tandem::v1::FINISH_REASON_UNSPECIFIED);
  for (int i = 0; i < kStreams; ++i) {
    auto req = greedy("Drain me slowly, stream " + std::to_string(i), 100000);
    req.mutable_sampling()->set_ignore_eos(true);
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(cluster.stub().Generate(contexts.back().get(), req));
  }
  tandem::v1::GenerateResponse r;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(readers[i]->Read(&r));
    tokens[i] += static_cast<uint32_t>(r.token_ids_size());
  }
  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(cluster.serve_pid(), SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto late = tandem::v1::Generation::NewStub(
      grpc::CreateChannel(cluster.router_address(), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(generate(*late, greedy("too late", 4)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  for (int i = 0; i < kStreams; ++i) {
    while (readers[i]->Read(&r)) {
      tokens[i] += static_cast<uint32_t>(r.token_ids_size());
      if (r.finish_reason() != tandem::v1::FINISH_REASON_UNSPECIFIED) finish[i] = r.finish_reason();
    }
    const grpc::Status st = readers[i]->Finish();
    const double drained_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
    EXPECT_TRUE(st.ok()) << "stream " << i << ": " << st.error_message() << " after " << drained_s << " s of draining";
    EXPECT_EQ(finish[i], tandem::v1::FINISH_REASON_LENGTH) << "stream " << i;
    GTEST_LOG_(INFO) << "stream " << i << ": " << tokens[i] << " tokens, ended " << drained_s << " s after SIGTERM";
  }
  // Then serve stops its roles and exits.
  EXPECT_TRUE(cluster.wait_exit(std::chrono::seconds(30))) << "tandem serve did not exit after draining";
}

// Priority through the whole cluster: with one sequence at a time on the
// attention node, an urgent request preempts a long stream already running
// and is answered while that stream still runs (without priorities it would
// wait for the stream's end); the preempted stream then finishes whole.
TEST(ClusterPriority, UrgentRequestOvertakesARunningStream) {
  Cluster cluster(cluster_model("tiny-mixtral"), {.max_running_sequences = 1});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  auto slow = greedy("A long, unimportant stream", 600);
  slow.mutable_sampling()->set_ignore_eos(true);
  slow.set_priority(5);
  grpc::ClientContext ctx;
  auto reader = cluster.stub().Generate(&ctx, slow);
  tandem::v1::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));  // the stream is running
  auto urgent = greedy("Urgent", 4);
  urgent.mutable_sampling()->set_ignore_eos(true);
  urgent.set_priority(-1);
  const auto answered = generate(cluster.stub(), urgent);
  ASSERT_TRUE(answered.status.ok()) << answered.status.error_message();
  EXPECT_EQ(answered.tokens.size(), 4u);
  uint32_t slow_tokens = static_cast<uint32_t>(r.token_ids_size());
  while (reader->Read(&r)) {
    slow_tokens += static_cast<uint32_t>(r.token_ids_size());
    if (r.finish_reason() != tandem::v1::FINISH_REASON_UNSPECIFIED) {
      EXPECT_EQ(r.finish_reason(), tandem::v1::FINISH_REASON_LENGTH);
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(slow_tokens, 600u);
  EXPECT_GE(node_load(cluster, 0).preemptions(), 1) << "the urgent request did not preempt the stream";
}

TEST(ClusterConfig, BadYamlIsRefusedWithKeyPath) {
  const std::string path = ::testing::TempDir() + "/bad_cluster.yaml";
  std::ofstream(path) << "model: {path: " << cluster_model("tiny-mixtral") << "}\ncluster: {expert_nodes: 99}\n";
  int rc = 0;
  const std::string out = testing::shell(testing::tandem_bin() + " serve --config " + path, rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("cluster.expert_nodes"), std::string::npos) << out;
  EXPECT_NE(out.find("99 expert nodes"), std::string::npos) << out;
}

std::string read_proc(pid_t pid, const std::string& file) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/" + file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// attention.cpus / expert.cpus: each node runs on its CPUs with as many OpenMP
// threads, and still computes the same tokens.
TEST(ClusterConfig, NodesRunOnTheirCpus) {
  const std::string& dir = cluster_model("tiny-mixtral");
  Cluster cluster(dir, {.attention_nodes = 1, .expert_nodes = 2, .micro_batches = 2, .attention_cpus = "0",
                        .expert_cpus = "0-1"});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  for (auto [role, rank, cpus, threads] : {std::tuple{"attention", 0, "0", "1"}, std::tuple{"expert", 1, "0-1", "2"}}) {
    const pid_t pid = cluster.role_pid(role, rank);
    ASSERT_GT(pid, 0) << role;
    const std::string status = read_proc(pid, "status");
    EXPECT_NE(status.find(std::string("Cpus_allowed_list:\t") + cpus + "\n"), std::string::npos) << role << status;
    std::string env = read_proc(pid, "environ");
    std::replace(env.begin(), env.end(), '\0', '\n');
    EXPECT_NE(env.find(std::string("\nOMP_NUM_THREADS=") + threads + "\n"), std::string::npos) << role;
  }
  const auto want = reference(dir, {"pinned"}, 8);
  auto r = generate(cluster.stub(), greedy("pinned", 8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  auto ck = model::Checkpoint::open(dir);
  expect_same_or_tied(dir, *ck->tokenizer->encode("pinned", true), r.tokens, want[0], "pinned");
}

// `tandem status` reaches every node of a running cluster and shows where the
// attention nodes' step time went; a node that is down is named, not hidden.
TEST(ClusterStatus, ShowsEveryNodeAndTheStepBreakdown) {
  const std::string& dir = cluster_model("tiny-mixtral");
  Cluster cluster(dir, {.attention_nodes = 2, .expert_nodes = 2, .micro_batches = 2, .transport = "ucx"});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
  for (int i = 0; i < 4; ++i) {
    const auto r = generate(cluster.stub(), greedy("status " + std::to_string(i), 6));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  }
  auto status = [&](std::string& out) {
    int rc = 0;
    out = testing::shell(testing::tandem_bin() + " status --config " + cluster.config(), rc);
    return rc;
  };
  std::string out;
  EXPECT_EQ(status(out), 0) << out;
  for (const char* want : {"attention0", "attention1", "expert0", "expert1", "experts [0, 4)", "experts [4, 8)",
                           "data plane ucx", "cpu", "requests in", "per pass", "token slots",
                           "expert load (token slots, all layers): hottest expert", "the mean node"})
    EXPECT_NE(out.find(want), std::string::npos) << want << " in:\n" << out;
  // Steps were taken, and their time split: the wait column has a percentage.
  EXPECT_EQ(out.find("unreachable"), std::string::npos) << out;
  EXPECT_NE(out.find("%"), std::string::npos) << out;
  bool stepped = false;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("attention", 0) != 0) continue;
    std::istringstream f(line);
    std::string name, addr, device;
    long long running, waiting, steps;
    std::string blocks, prefix_hit;
    f >> name >> addr >> device >> running >> waiting >> blocks >> prefix_hit >> steps;
    // Four different prompts, each looked up in the prefix cache: a share, maybe 0.0%.
    EXPECT_TRUE(prefix_hit == "-" || prefix_hit.back() == '%') << line;
    stepped = stepped || steps > 0;
  }
  EXPECT_TRUE(stepped) << out;
  // A killed expert node is reported unreachable, with a failing exit status.
  const pid_t expert = cluster.role_pid("expert", 1);
  ASSERT_GT(expert, 0);
  kill(expert, SIGSTOP);
  EXPECT_NE(status(out), 0) << out;
  EXPECT_NE(out.find("unreachable"), std::string::npos) << out;
  kill(expert, SIGCONT);
}

// A node put on a GPU where none can be used is refused with the YAML key
// that asked for it, never run on the CPU behind the user's back.
TEST(ClusterConfig, CudaNodesWithoutAGpuAreRefusedNamingTheKey) {
  if (std::filesystem::exists("/dev/nvidiactl")) GTEST_SKIP() << "a GPU driver is present: the nodes would start";
  const std::string path = ::testing::TempDir() + "/cuda_cluster.yaml";
  std::ofstream(path) << "model: {path: " << cluster_model("tiny-mixtral") << "}\ncluster: {device: cuda}\n";
  auto run = [](const std::string& args, std::string& out) {
    int rc = 0;
    out = testing::shell(testing::tandem_bin() + " " + args, rc);
    return rc;
  };
  std::string out;
  for (const std::string role : {"serve", "expert --rank 0", "attention --rank 0"}) {
    EXPECT_NE(run(role + " --config " + path, out), 0) << role;
    EXPECT_NE(out.find("cluster.device: cuda"), std::string::npos) << role << ": " << out;
  }
  // A per-role key is named as such, and only that role is refused.
  const std::string mixed = ::testing::TempDir() + "/cuda_experts.yaml";
  std::ofstream(mixed) << "model: {path: " << cluster_model("tiny-mixtral") << "}\nexpert: {device: cuda}\n";
  for (const std::string role : {"serve", "expert --rank 0"}) {
    EXPECT_NE(run(role + " --config " + mixed, out), 0) << role;
    EXPECT_NE(out.find("expert.device: cuda"), std::string::npos) << role << ": " << out;
  }
  // So does the profiler, which measures the device the nodes would run on.
  EXPECT_NE(run("profile --reps 1 --out " + ::testing::TempDir() + "/p.yaml --config " + path, out), 0);
  EXPECT_NE(out.find("CUDA"), std::string::npos) << out;
  // The single-process forward says the same, and BF16 is a GPU-only dtype.
  const std::string gen = "generate --model " + cluster_model("tiny-mixtral") + " --prompt hi --max-tokens 2";
  EXPECT_NE(run(gen + " --device cuda", out), 0);
  EXPECT_NE(out.find("CUDA"), std::string::npos) << out;
  EXPECT_NE(run(gen + " --dtype bf16", out), 0);
  EXPECT_NE(out.find("--dtype bf16 needs --device cuda"), std::string::npos) << out;
}


// What `tandem plan` writes, `tandem serve` runs as it is: profile this
// machine, plan on the measured profile, serve the plan, answer a request.
TEST(ClusterConfig, PlannedDeploymentServesAsWritten) {
  const std::string dir = ::testing::TempDir() + "/planned_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::string model = cluster_model("tiny-mixtral");
  std::ofstream(dir + "/probe.yaml") << "model: {path: " << model << "}\n";
  int rc = 0;
  std::string out = testing::shell(testing::tandem_bin() + " profile --config " + dir +
                                       "/probe.yaml --reps 1 --threads 1 --out " + dir + "/measured.yaml",
                                   rc);
  ASSERT_EQ(rc, 0) << out;
  out = testing::shell(testing::tandem_bin() + " plan --model " + model + " --attention-hw " + dir +
                           "/measured.yaml --tpot-slo-ms 1000 --gpus 3 --out " + dir + "/plan.yaml",
                       rc);
  ASSERT_EQ(rc, 0) << out;
  auto planned = api::DeploymentConfig::from_file(dir + "/plan.yaml");
  ASSERT_TRUE(planned.is_ok()) << planned.status().to_string();
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string bin = testing::tandem_bin(), cfg = dir + "/plan.yaml";
    execl(bin.c_str(), bin.c_str(), "serve", "--config", cfg.c_str(), nullptr);
    _exit(127);
  }
  const std::string router = planned->router.to_string();
  Status up = api::wait_until_serving(router, std::chrono::seconds(60));
  if (up.is_ok()) {
    auto stub = tandem::v1::Generation::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
    auto r = generate(*stub, greedy("planned", 4));
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens.size(), 4u);
  }
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(up.is_ok()) << up.to_string() << "\n" << out;
  std::filesystem::remove_all(dir);
}

// transport.backend: nccl (NCCL send/recv between GPUs, the comparison
// backend): with two GPUs or more the nodes serve what the single-process
// engine serves; with one GPU `serve` refuses at start, since NCCL cannot put
// both ends of a link on one GPU; without a GPU it names the device key. So
// this test checks something on every machine instead of skipping.
TEST(ClusterNccl, ServesAcrossGpusOrSaysWhyNot) {
  const std::string& dir = cluster_model("tiny-mixtral");
  int rc = 0;
  const std::string listed = std::filesystem::exists("/dev/nvidiactl") ? testing::shell("nvidia-smi -L", rc) : "";
  int gpus = 0;
  for (size_t at = listed.find("GPU "); at != std::string::npos; at = listed.find("\nGPU ", at + 1)) ++gpus;
  if (gpus >= 2) {
    Cluster cluster(dir, {.attention_nodes = 1, .expert_nodes = 1, .micro_batches = 2, .transport = "nccl",
                          .attention_device = "cuda", .expert_device = "cuda"});
    ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();
    const auto ps = prompts(8);
    const auto want = reference(dir, ps, 12);
    auto ck = model::Checkpoint::open(dir);
    for (size_t i = 0; i < ps.size(); ++i) {
      auto r = generate(cluster.stub(), greedy(ps[i], 12));
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      expect_same_or_tied(dir, *ck->tokenizer->encode(ps[i], true), r.tokens, want[i], "stream " + std::to_string(i));
    }
    return;
  }
  const std::string path = ::testing::TempDir() + "/nccl_cluster.yaml";
  std::ofstream(path) << "model: {path: " << dir << "}\ncluster: {device: cuda}\ntransport: {backend: nccl}\n";
  const std::string out = testing::shell(testing::tandem_bin() + " serve --config " + path, rc);
  EXPECT_NE(rc, 0) << out;
  if (gpus == 1) {
    EXPECT_NE(out.find("transport.backend: nccl, but attention node 0 and expert node 0 would share GPU 0"),
              std::string::npos)
        << out;
  } else {
    EXPECT_NE(out.find("cluster.device: cuda"), std::string::npos) << out;
  }
}

TEST(ClusterConfig, UnavailableCpuIsRefusedAtStart) {
  const std::string path = ::testing::TempDir() + "/bad_cpus.yaml";
  std::ofstream(path) << "model: {path: " << cluster_model("tiny-mixtral") << "}\nexpert: {cpus: '4000'}\n";
  int rc = 0;
  const std::string out = testing::shell(testing::tandem_bin() + " serve --config " + path, rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("expert.cpus: CPU 4000 is not available"), std::string::npos) << out;
}

}  // namespace
}  // namespace tandem
