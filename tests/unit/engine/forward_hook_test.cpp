// EngineOptions::forward: an engine whose steps run through an injected
// forward (as a GPU runner is plugged in) keeps only block bookkeeping and
// gives the tokens of the built-in forward.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "tandem/engine/engine.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/make_model.h"

namespace tandem::engine {
namespace {

TEST(ForwardHook, InjectedForwardGivesTheBuiltInTokens) {
  const std::string dir = ::testing::TempDir() + "/forward_hook_" + std::to_string(getpid());
  ASSERT_TRUE(model::make_model({.preset = "tiny-qwen3-moe", .seed = 4, .out_dir = dir, .dtype = DType::kF32}).is_ok());
  auto ck = model::Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  const auto& c = ck->config;
  auto w = model::ModelWeights::load(c, *ck->weights);
  ASSERT_TRUE(w.is_ok());

  std::vector<GenerationRequest> reqs(3);
  for (size_t i = 0; i < reqs.size(); ++i) {
    for (int t = 0; t < 5 + 4 * static_cast<int>(i); ++t) reqs[i].prompt.push_back((t * 13 + 7 * static_cast<int>(i)) % 200 + 3);
    reqs[i].max_tokens = 6;
    reqs[i].sampling.temperature = i == 1 ? 0.8f : 0.0f;
    reqs[i].seed = 11 + i;
  }
  EngineOptions plain;
  plain.num_blocks = 32;
  plain.block_size = 4;
  auto base = Engine::create(c, **w, plain);
  ASSERT_TRUE(base.is_ok());
  auto want = (*base)->generate(reqs);
  ASSERT_TRUE(want.is_ok()) << want.status().to_string();

  // The "device": a runner with its own cache of the same shape, indexed by the
  // block ids the hooked engine hands out.
  const KvCacheShape shape{c.num_layers, plain.num_blocks, plain.block_size, c.num_kv_heads, c.head_dim};
  auto device_cache = KvCache::create(shape, shape.bytes());
  ASSERT_TRUE(device_cache.is_ok());
  ModelRunner device(c, **w, device_cache->get());
  int steps = 0;
  EngineOptions hooked = plain;
  hooked.forward = [&](const ForwardBatch& b, std::vector<float>& logits) {
    ++steps;
    device.forward(b, logits);
    return Status::ok();
  };
  auto eng = Engine::create(c, **w, hooked);
  ASSERT_TRUE(eng.is_ok());
  auto got = (*eng)->generate(reqs);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_GT(steps, 5);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << "request " << i;

  // A failing forward ends the requests with its error, not a crash or a hang.
  hooked.forward = [](const ForwardBatch&, std::vector<float>&) { return unavailable("device lost"); };
  auto failing = Engine::create(c, **w, hooked);
  ASSERT_TRUE(failing.is_ok());
  auto res = (*failing)->generate(reqs);
  EXPECT_EQ(res.status().code(), StatusCode::kUnavailable) << res.status().to_string();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tandem::engine
