// The expert batcher merges concurrent requests into one pass per layer and
// must give every request what a pass of its own would.
#include "tandem/expert/expert_batcher.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include "tandem/model/checkpoint.h"
#include "tandem/model/make_model.h"
#include "tandem/model/weights.h"

namespace tandem::expert {
namespace {

struct Case {
  int64_t layer = 0, n = 0;
  std::vector<float> x, w;
  std::vector<int32_t> ids;
};

class ExpertBatcherTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((std::filesystem::path(::testing::TempDir()) /
                            ("batcher_model_" + std::to_string(getpid()))).string());
    ASSERT_TRUE(model::make_model({.preset = "tiny-mixtral", .seed = 3, .out_dir = *dir_, .dtype = DType::kF32}).is_ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::string* dir_;
};
std::string* ExpertBatcherTest::dir_ = nullptr;

TEST_F(ExpertBatcherTest, ConcurrentRequestsAreMergedAndEachGetsItsOwnResult) {
  auto ck = model::Checkpoint::open(*dir_);
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  const auto& c = ck->config;
  auto weights = model::ModelWeights::load(c, *ck->weights);
  ASSERT_TRUE(weights.is_ok());
  const int64_t H = c.hidden_size, K = c.moe.top_k, E = c.moe.num_experts;
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < c.num_layers; ++l)
    if (c.layer_is_moe[static_cast<size_t>(l)]) moe_layers.push_back(l);

  constexpr int kThreads = 6, kPerThread = 25;
  std::mt19937 g(7);
  std::vector<std::vector<Case>> cases(kThreads);
  for (auto& mine : cases)
    for (int i = 0; i < kPerThread; ++i) {
      Case k;
      k.layer = moe_layers[g() % moe_layers.size()];
      k.n = 1 + static_cast<int64_t>(g() % 9);
      std::normal_distribution<float> nd;
      for (int64_t j = 0; j < k.n * H; ++j) k.x.push_back(nd(g));
      for (int64_t t = 0; t < k.n; ++t)
        for (int64_t s = 0; s < K; ++s) {
          k.ids.push_back(static_cast<int32_t>((t + s * 3 + static_cast<int64_t>(g() % E)) % E));
          k.w.push_back(0.25f + 0.5f * static_cast<float>(g() % 100) / 100.0f);
        }
      mine.push_back(std::move(k));
    }

  ExpertBatcher batcher(c, **weights);
  std::vector<std::vector<std::vector<float>>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (const Case& k : cases[static_cast<size_t>(t)]) {
        std::vector<float> out(static_cast<size_t>(k.n * H), 123.0f);  // must be overwritten, not added to
        EXPECT_TRUE(batcher.run(k.layer, k.x.data(), k.n, k.ids.data(), k.w.data(), out.data()).is_ok());
        got[static_cast<size_t>(t)].push_back(std::move(out));
      }
    });
  for (auto& t : threads) t.join();

  engine::ModelRunner alone(c, **weights, nullptr);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kPerThread; ++i) {
      const Case& k = cases[static_cast<size_t>(t)][static_cast<size_t>(i)];
      std::vector<float> want(static_cast<size_t>(k.n * H), 0.0f);
      alone.experts(k.layer, k.x.data(), k.n, k.ids.data(), k.w.data(), want.data());
      const auto& have = got[static_cast<size_t>(t)][static_cast<size_t>(i)];
      double err = 0, norm = 0;
      for (size_t j = 0; j < want.size(); ++j) {
        err = std::max(err, std::abs(static_cast<double>(have[j]) - want[j]));
        norm = std::max(norm, std::abs(static_cast<double>(want[j])));
      }
      EXPECT_LE(err, 1e-5 * std::max(norm, 1.0)) << "thread " << t << " request " << i;
    }
  const auto stats = batcher.stats();
  EXPECT_EQ(stats.requests, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_LT(stats.launches, stats.requests) << "no two concurrent requests of a layer were merged";
  EXPECT_GT(stats.busy_s, 0.0);
  // Every (token, slot) of every request counted once, at its expert.
  std::vector<uint64_t> want(static_cast<size_t>(E), 0);
  for (const auto& mine : cases)
    for (const Case& k : mine)
      for (int32_t id : k.ids) ++want[static_cast<size_t>(id)];
  EXPECT_EQ(stats.expert_tokens, want);
}

// A failing pass (a GPU error on a GPU expert node) fails each request it
// carried, with the pass's message, and the batcher keeps serving.
TEST(ExpertBatcher, AnErrorOfThePassReachesItsRequests) {
  model::ModelConfig c;
  c.hidden_size = 4;
  c.moe.top_k = 1;
  int calls = 0;
  ExpertBatcher batcher(c, [&](int64_t layer, const float*, int64_t n, const int32_t*, const float*, float* out) {
    ++calls;
    if (layer == 1) return internal_error("CUDA experts of layer 1: cudaErrorIllegalAddress");
    std::fill(out, out + n * 4, 1.0f);
    return Status::ok();
  });
  std::vector<float> x(8, 0.5f), w(2, 1.0f), out(8, 0.0f);
  std::vector<int32_t> ids(2, 0);
  const Status bad = batcher.run(1, x.data(), 2, ids.data(), w.data(), out.data());
  EXPECT_EQ(bad.code(), StatusCode::kInternal);
  EXPECT_NE(bad.message().find("cudaErrorIllegalAddress"), std::string::npos) << bad.to_string();
  EXPECT_TRUE(batcher.run(0, x.data(), 2, ids.data(), w.data(), out.data()).is_ok());
  EXPECT_EQ(out, std::vector<float>(8, 1.0f));
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace tandem::expert
