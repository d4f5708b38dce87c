// EngineOptions::forward: an engine whose steps run through an injected
// forward (as a GPU runner is plugged in) keeps only block bookkeeping and
// gives the tokens of the built-in forward.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "tandem/engine/engine.h"
#include "tandem/engine/expert_executor.h"
#include "tandem/engine/forward_stages.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/make_model.h"

namespace tandem::engine {
namespace {

// A generated FP32 checkpoint and its weights, removed at the end.
struct TinyModel {
  std::string dir;
  Result<model::Checkpoint> ck = internal_error("not opened");
  Result<std::unique_ptr<model::ModelWeights>> weights = internal_error("not loaded");
  TinyModel(const std::string& preset, uint64_t seed, const std::string& name)
      : dir(::testing::TempDir() + "/" + name + "_" + std::to_string(getpid())) {
    const Status made = model::make_model({.preset = preset, .seed = seed, .out_dir = dir, .dtype = DType::kF32});
    EXPECT_TRUE(made.is_ok()) << made.to_string();
    if (!made.is_ok()) return;
    ck = model::Checkpoint::open(dir);
    EXPECT_TRUE(ck.is_ok()) << ck.status().to_string();
    if (ck.is_ok()) weights = model::ModelWeights::load(ck->config, *ck->weights);
    EXPECT_TRUE(weights.is_ok()) << weights.status().to_string();
  }
  ~TinyModel() { std::filesystem::remove_all(dir); }
  bool ok() const { return ck.is_ok() && weights.is_ok(); }
};

// The "device": a runner with its own cache of the engine's shape, indexed by
// the block ids the hooked engine hands out.
struct Device {
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<ModelRunner> runner;
};
Device device_for(const model::ModelConfig& c, const model::ModelWeights& w, const EngineOptions& o) {
  const KvCacheShape shape{c.num_layers, o.num_blocks, o.block_size, c.num_kv_heads, c.head_dim};
  auto cache = KvCache::create(shape, shape.bytes());
  EXPECT_TRUE(cache.is_ok()) << cache.status().to_string();
  if (!cache.is_ok()) return {};
  Device d{std::move(cache).value(), nullptr};
  d.runner = std::make_unique<ModelRunner>(c, w, d.cache.get());
  return d;
}

TEST(ForwardHook, InjectedForwardGivesTheBuiltInTokens) {
  TinyModel tm("tiny-qwen3-moe", 4, "forward_hook");
  ASSERT_TRUE(tm.ok());
  const auto& c = tm.ck->config;
  auto& w = tm.weights;

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

  Device dev = device_for(c, **w, plain);
  ASSERT_TRUE(dev.runner);
  ModelRunner& device = *dev.runner;
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
}

// EngineOptions::forward_split: greedy rows come back as tokens, the others as
// packed logits (here through the pipeline's split head over CPU stages, as a
// GPU attention node does), and the engine gives the built-in tokens for a mix
// of greedy, top_k = 1 and sampled requests.
TEST(ForwardHook, SplitForwardGivesTheBuiltInTokens) {
  TinyModel tm("tiny-mixtral", 6, "forward_split");
  ASSERT_TRUE(tm.ok());
  const auto& c = tm.ck->config;
  auto& w = tm.weights;

  std::vector<GenerationRequest> reqs(4);
  for (size_t i = 0; i < reqs.size(); ++i) {
    for (int t = 0; t < 4 + 3 * static_cast<int>(i); ++t) reqs[i].prompt.push_back((t * 11 + 5 * static_cast<int>(i)) % 300 + 3);
    reqs[i].max_tokens = 7;
    reqs[i].seed = 21 + i;
  }
  reqs[0].sampling.temperature = 0.0f;                                 // greedy
  reqs[1].sampling.temperature = 0.9f;                                 // sampled
  reqs[2].sampling = {.temperature = 1.3f, .top_k = 1, .top_p = 1.0f};  // greedy by top_k
  reqs[3].sampling = {.temperature = 0.7f, .top_k = 20, .top_p = 0.9f};
  EngineOptions plain;
  plain.num_blocks = 48;
  plain.block_size = 4;
  plain.micro_batches = 2;
  auto base = Engine::create(c, **w, plain);
  ASSERT_TRUE(base.is_ok());
  auto want = (*base)->generate(reqs);
  ASSERT_TRUE(want.is_ok()) << want.status().to_string();

  Device dev = device_for(c, **w, plain);
  ASSERT_TRUE(dev.runner);
  ModelRunner& device = *dev.runner;
  CpuForwardStages stages(device);
  LocalExpertExecutor experts(device);
  size_t greedy_rows = 0, sampled_rows = 0;
  EngineOptions hooked = plain;
  hooked.forward_split = [&](const ForwardBatch& b, const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                             std::vector<int32_t>& tokens) {
    EXPECT_EQ(greedy.size(), b.logits_rows.size());
    Status st = forward_pipelined_split(stages, b, 2, experts, greedy, logits, tokens);
    for (size_t r = 0; r < greedy.size(); ++r) {
      (greedy[r] ? greedy_rows : sampled_rows) += 1;
      if (!greedy[r]) {
        EXPECT_EQ(tokens[r], -1) << "a sampled row has no argmax";
      }
    }
    EXPECT_EQ(logits.size(), static_cast<size_t>(std::count(greedy.begin(), greedy.end(), uint8_t{0})) *
                                 static_cast<size_t>(c.vocab_size));
    return st;
  };
  auto eng = Engine::create(c, **w, hooked);
  ASSERT_TRUE(eng.is_ok());
  auto got = (*eng)->generate(reqs);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(greedy_rows, 14u);   // requests 0 and 2, 7 tokens each
  EXPECT_EQ(sampled_rows, 14u);  // requests 1 and 3
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << "request " << i;
  // A greedy request that asks for log-probabilities needs its logits: its
  // rows come back as logits, and the tokens and log-probabilities are the
  // built-in ones.
  greedy_rows = sampled_rows = 0;
  reqs[0].logprobs = 2;
  auto want_lp = (*base)->generate(reqs);
  auto got_lp = (*eng)->generate(reqs);
  ASSERT_TRUE(want_lp.is_ok() && got_lp.is_ok());
  EXPECT_EQ(greedy_rows, 7u);
  EXPECT_EQ(sampled_rows, 21u);
  ASSERT_EQ((*got_lp)[0].logprobs.size(), 7u);
  EXPECT_EQ((*got_lp)[0].tokens, (*want_lp)[0].tokens);
  for (size_t s = 0; s < 7; ++s) {
    EXPECT_FLOAT_EQ((*got_lp)[0].logprobs[s].logprob, (*want_lp)[0].logprobs[s].logprob);
    EXPECT_EQ((*got_lp)[0].logprobs[s].top, (*want_lp)[0].logprobs[s].top);
  }
  reqs[0].logprobs = -1;
  // Rows that score a greedy request's prompt come back as logits too.
  greedy_rows = sampled_rows = 0;
  reqs[2].prompt_logprobs = 1;
  want_lp = (*base)->generate(reqs);
  got_lp = (*eng)->generate(reqs);
  ASSERT_TRUE(want_lp.is_ok() && got_lp.is_ok());
  const size_t scored = reqs[2].prompt.size() - 1;
  EXPECT_EQ(greedy_rows, 14u);
  EXPECT_EQ(sampled_rows, 14u + scored);
  ASSERT_EQ((*got_lp)[2].prompt_logprobs.size(), scored);
  EXPECT_EQ((*got_lp)[2].tokens, (*want_lp)[2].tokens);
  for (size_t s = 0; s < scored; ++s) {
    EXPECT_FLOAT_EQ((*got_lp)[2].prompt_logprobs[s].logprob, (*want_lp)[2].prompt_logprobs[s].logprob);
    EXPECT_EQ((*got_lp)[2].prompt_logprobs[s].top, (*want_lp)[2].prompt_logprobs[s].top);
  }
  reqs[2].prompt_logprobs = -1;
  // A greedy request with a logit bias needs its logits too (a device
  // argmax would not see the bias): its rows come back as logits and the
  // forced token wins.
  greedy_rows = sampled_rows = 0;
  reqs[0].adjust.logit_bias = {{42, 100.0f}};
  auto biased = (*eng)->generate(reqs);
  ASSERT_TRUE(biased.is_ok()) << biased.status().to_string();
  EXPECT_EQ(greedy_rows, 7u);    // request 2 only
  EXPECT_EQ(sampled_rows, 21u);  // requests 0, 1 and 3
  EXPECT_EQ((*biased)[0].tokens, std::vector<int32_t>(7, 42));
  reqs[0].adjust = {};
  // With min_tokens only its first rows need logits (the stop tokens are
  // banned there); after them the device argmax serves again.
  greedy_rows = sampled_rows = 0;
  reqs[0].adjust.min_tokens = 3;
  reqs[0].stop_token_ids = {42};
  auto want_min = (*base)->generate(reqs);
  auto got_min = (*eng)->generate(reqs);
  ASSERT_TRUE(want_min.is_ok() && got_min.is_ok());
  ASSERT_EQ((*got_min)[0].tokens.size(), 7u) << "request 0 met its stop token: pick another";
  EXPECT_EQ((*got_min)[0].tokens, (*want_min)[0].tokens);
  EXPECT_EQ(greedy_rows, 7u + 4u);
  EXPECT_EQ(sampled_rows, 14u + 3u);
  reqs[0].adjust = {};
  reqs[0].stop_token_ids.clear();
  // A greedy request under a grammar needs its logits (the device argmax
  // would not see the mask): its rows come back as logits, and its tokens
  // are the built-in engine's under the same grammar.
  {
    greedy_rows = sampled_rows = 0;
    auto automaton = model::compile_regex("[a-z]{7}");
    ASSERT_TRUE(automaton.is_ok());
    reqs[0].guide = std::make_shared<model::TokenGuide>(std::move(automaton).value(),
                                                        model::TokenVocabulary::build(*tm.ck->tokenizer, c.vocab_size));
    auto want_guided = (*base)->generate(reqs);
    auto got_guided = (*eng)->generate(reqs);
    ASSERT_TRUE(want_guided.is_ok() && got_guided.is_ok()) << got_guided.status().to_string();
    EXPECT_EQ((*got_guided)[0].tokens, (*want_guided)[0].tokens);
    EXPECT_EQ(greedy_rows, 7u);  // request 2 only
    EXPECT_EQ(sampled_rows, 14u + (*got_guided)[0].tokens.size());
    const std::string text = tm.ck->tokenizer->decode((*got_guided)[0].tokens);
    EXPECT_EQ(text.size(), 7u) << text;
    EXPECT_TRUE(std::all_of(text.begin(), text.end(), [](char ch) { return ch >= 'a' && ch <= 'z'; })) << text;
    reqs[0].guide.reset();
  }

  // A split forward that fails, or answers with a token outside the
  // vocabulary or too few logits, ends the requests with an error naming it
  // rather than reading out of bounds or feeding the token back.
  hooked.forward_split = [](const ForwardBatch&, const std::vector<uint8_t>&, std::vector<float>&,
                            std::vector<int32_t>&) { return unavailable("device lost"); };
  auto failing = Engine::create(c, **w, hooked);
  ASSERT_TRUE(failing.is_ok());
  EXPECT_EQ((*failing)->generate(reqs).status().code(), StatusCode::kUnavailable);
  hooked.forward_split = [&](const ForwardBatch& b, const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                             std::vector<int32_t>& tokens) {
    Status st = forward_pipelined_split(stages, b, 2, experts, greedy, logits, tokens);
    for (size_t r = 0; r < greedy.size(); ++r)
      if (greedy[r]) tokens[r] = static_cast<int32_t>(c.vocab_size);
    return st;
  };
  auto lying = Engine::create(c, **w, hooked);
  ASSERT_TRUE(lying.is_ok());
  auto bad = (*lying)->generate(reqs);
  EXPECT_EQ(bad.status().code(), StatusCode::kInternal) << bad.status().to_string();
  EXPECT_NE(bad.status().message().find("outside the vocabulary"), std::string::npos) << bad.status().to_string();
  hooked.forward_split = [&](const ForwardBatch& b, const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                             std::vector<int32_t>& tokens) {
    Status st = forward_pipelined_split(stages, b, 2, experts, greedy, logits, tokens);
    logits.resize(logits.size() / 2);
    return st;
  };
  auto short_logits = Engine::create(c, **w, hooked);
  ASSERT_TRUE(short_logits.is_ok());
  EXPECT_EQ((*short_logits)->generate(reqs).status().code(), StatusCode::kInternal);

  // Flags that do not match the rows are an argument error, not a crash.
  ForwardBatch one;
  one.tokens = {5};
  one.positions = {0};
  one.seq_of_token = {0};
  one.slots = {0};
  one.ctx_len = {1};
  one.block_tables = {0};
  one.max_blocks_per_seq = 1;
  one.logits_rows = {0};
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  EXPECT_EQ(forward_pipelined_split(stages, one, 1, experts, {1, 0}, logits, tokens).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::engine
