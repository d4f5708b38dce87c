// End-to-end single-process generation on generated tiny checkpoints.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include "naive_forward.h"
#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

using testing::tiny_model;

std::unique_ptr<engine::Engine> make_engine(const testing::LoadedModel& m, engine::EngineOptions o = {}) {
  auto e = engine::Engine::create(m.ck.config, *m.weights, o);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  return std::move(e).value();
}

std::vector<int32_t> prompt_ids(const testing::LoadedModel& m, const std::string& text) {
  auto ids = m.ck.tokenizer->encode(text);
  EXPECT_TRUE(ids.is_ok()) << ids.status().to_string();
  return *ids;
}

// log Σ exp(row), in double precision: a log-softmax's normaliser.
template <typename T>
double log_normaliser(const T* row, size_t n) {
  const double mx = *std::max_element(row, row + n);
  double z = 0;
  for (size_t v = 0; v < n; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
  return mx + std::log(z);
}

engine::GenerationRequest greedy_request(const testing::LoadedModel& m, const std::string& text, int32_t max_tokens) {
  engine::GenerationRequest req;
  req.prompt = prompt_ids(m, text);
  req.max_tokens = max_tokens;
  req.sampling.temperature = 0;
  return req;
}

class EngineOnPreset : public ::testing::TestWithParam<std::string> {};

// Greedy decode through the paged KV cache equals recomputing the whole sequence
// from scratch every step in double precision.
TEST_P(EngineOnPreset, GreedyDecodeMatchesFullRecompute) {
  const auto& m = tiny_model(GetParam());
  auto eng = make_engine(m, {.num_blocks = 64, .block_size = 4});
  engine::GenerationRequest req = greedy_request(m, "The quick brown fox jumps over the lazy dog.", 12);
  auto res = eng->generate({req});
  ASSERT_TRUE(res.is_ok()) << res.status().to_string();
  const auto& got = (*res)[0].tokens;
  ASSERT_EQ(got.size(), 12u);

  std::vector<int32_t> seq = req.prompt;
  for (size_t step = 0; step < got.size(); ++step) {
    auto logits = testing::naive_last_logits(m.ck.config, *m.weights, seq);
    std::vector<size_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 2, order.end(),
                      [&](size_t a, size_t b) { return logits[a] > logits[b]; });
    const double margin = logits[order[0]] - logits[order[1]];
    if (margin < 1e-4) {
      GTEST_LOG_(INFO) << "stopping comparison at step " << step << ": reference top-2 margin " << margin;
      break;
    }
    ASSERT_EQ(got[step], static_cast<int32_t>(order[0])) << "step " << step << " margin " << margin;
    seq.push_back(got[step]);
  }
}

TEST_P(EngineOnPreset, PrefillLogitsMatchFullRecompute) {
  const auto& m = tiny_model(GetParam());
  const auto& c = m.ck.config;
  std::vector<int32_t> toks = prompt_ids(m, "Serving mixture-of-experts models on two cores.");
  std::vector<float> logits = testing::prefill_logits(c, *m.weights, toks, /*all_rows=*/false);
  auto ref = testing::naive_last_logits(c, *m.weights, toks);
  double max_ref = 1, max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(ref[i]));
    max_err = std::max(max_err, std::abs(ref[i] - logits[i]));
  }
  EXPECT_LT(max_err / max_ref, 1e-4) << "max abs error " << max_err;
}

// Each generated token's log-probability and its top alternatives are the
// log-softmax of the model's logits as the double-precision recompute gives
// them, for a sampled request too (before temperature and top-p).
TEST_P(EngineOnPreset, LogprobsAreTheModelsLogSoftmax) {
  const auto& m = tiny_model(GetParam());
  auto eng = make_engine(m, {.num_blocks = 64, .block_size = 4});
  engine::GenerationRequest req;
  req.prompt = prompt_ids(m, "Log probabilities, please.");
  req.max_tokens = 5;
  req.seed = 3;
  req.logprobs = 3;
  for (float temperature : {0.0f, 0.8f}) {
    req.sampling = {.temperature = temperature, .top_k = 0, .top_p = 0.9f};
    auto res = eng->generate({req});
    ASSERT_TRUE(res.is_ok()) << res.status().to_string();
    const auto& r = (*res)[0];
    ASSERT_EQ(r.logprobs.size(), r.tokens.size());
    std::vector<int32_t> seq = req.prompt;
    for (size_t s = 0; s < r.tokens.size(); ++s) {
      const auto ref = testing::naive_last_logits(m.ck.config, *m.weights, seq);
      const double log_z = log_normaliser(ref.data(), ref.size());
      const auto& lp = r.logprobs[s];
      EXPECT_NEAR(lp.logprob, ref[static_cast<size_t>(r.tokens[s])] - log_z, 1e-3) << "step " << s;
      ASSERT_EQ(lp.top.size(), 3u);
      for (size_t k = 0; k < lp.top.size(); ++k) {
        EXPECT_NEAR(lp.top[k].second, ref[static_cast<size_t>(lp.top[k].first)] - log_z, 1e-3);
        if (k > 0) {
          EXPECT_GE(lp.top[k - 1].second, lp.top[k].second);
        }
      }
      if (temperature == 0) {
        EXPECT_EQ(lp.top[0].first, r.tokens[s]);
        EXPECT_EQ(lp.top[0].second, lp.logprob);
      }
      seq.push_back(r.tokens[s]);
    }
  }
  req.logprobs = -1;
  auto none = eng->generate({req});
  ASSERT_TRUE(none.is_ok());
  EXPECT_TRUE((*none)[0].logprobs.empty());
  req.logprobs = engine::kMaxTopLogprobs + 1;
  auto bad = eng->generate({req});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("logprobs"), std::string::npos) << bad.status().message();
}

// Prompt log-probabilities (what lm-eval's loglikelihood scores) are the
// log-softmax of the logits at the position before each prompt token, as a
// whole-prompt forward gives them, also when the prompt is prefilled in
// chunks smaller than itself and a step's logits rows are bounded; with
// max_tokens 0 nothing is generated.
TEST_P(EngineOnPreset, PromptLogprobsAreTheModelsLogSoftmax) {
  const auto& m = tiny_model(GetParam());
  const auto& c = m.ck.config;
  engine::GenerationRequest req;
  req.prompt = prompt_ids(m, "Score every token of this prompt, from the second to the last one.");
  ASSERT_GE(req.prompt.size(), 10u);
  req.prompt_logprobs = 2;
  req.max_tokens = 0;
  const auto ref = testing::prefill_logits(c, *m.weights, req.prompt, /*all_rows=*/true);
  const auto V = static_cast<size_t>(c.vocab_size);
  for (int64_t chunk : {int64_t{2048}, int64_t{3}}) {
    SCOPED_TRACE("max_batch_tokens " + std::to_string(chunk));
    auto eng = make_engine(m, {.num_blocks = 64, .block_size = 4, .max_batch_tokens = chunk});
    auto res = eng->generate({req});
    ASSERT_TRUE(res.is_ok()) << res.status().to_string();
    const auto& r = (*res)[0];
    EXPECT_TRUE(r.tokens.empty());
    EXPECT_EQ(r.finish, engine::FinishReason::kLength);
    ASSERT_EQ(r.prompt_logprobs.size(), req.prompt.size() - 1);
    for (size_t i = 1; i < req.prompt.size(); ++i) {
      const float* row = ref.data() + (i - 1) * V;
      const double log_z = log_normaliser(row, V);
      const auto& lp = r.prompt_logprobs[i - 1];
      EXPECT_NEAR(lp.logprob, row[static_cast<size_t>(req.prompt[i])] - log_z, 1e-3) << "prompt token " << i;
      ASSERT_EQ(lp.top.size(), 2u);
      EXPECT_NEAR(lp.top[0].second, *std::max_element(row, row + V) - log_z, 1e-3);
    }
  }
  // Scoring and generating in one request: the same scores, then the tokens a
  // plain request gets.
  auto eng = make_engine(m, {.num_blocks = 64, .block_size = 4});
  engine::GenerationRequest plain = req;
  plain.prompt_logprobs = -1;
  plain.max_tokens = 4;
  plain.sampling.temperature = 0;
  req.max_tokens = 4;
  req.sampling.temperature = 0;
  auto both = eng->generate({req, plain});
  ASSERT_TRUE(both.is_ok()) << both.status().to_string();
  EXPECT_EQ((*both)[0].tokens, (*both)[1].tokens);
  EXPECT_EQ((*both)[0].prompt_logprobs.size(), req.prompt.size() - 1);
  EXPECT_TRUE((*both)[1].prompt_logprobs.empty());
  // max_tokens 0 means nothing without scores to return.
  plain.max_tokens = 0;
  auto bad = eng->generate({plain});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("max_tokens"), std::string::npos) << bad.status().message();
  req.prompt_logprobs = engine::kMaxTopLogprobs + 1;
  bad = eng->generate({req});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("prompt_logprobs"), std::string::npos) << bad.status().message();
}

// Bias and penalties steer greedy decoding exactly as their definitions say
// (checked against the double-precision recompute with the definitions
// applied here), and the reported log-probabilities stay the model's own.
TEST_P(EngineOnPreset, BiasAndPenaltiesSteerSamplingNotLogprobs) {
  const auto& m = tiny_model(GetParam());
  auto eng = make_engine(m, {.num_blocks = 64, .block_size = 4});
  engine::GenerationRequest req = greedy_request(m, "Penalties, penalties, penalties.", 10);
  req.logprobs = 0;
  auto plain = eng->generate({req});
  ASSERT_TRUE(plain.is_ok());
  const int32_t first = (*plain)[0].tokens[0];
  req.adjust.logit_bias = {{first, -100.0f}, {7, 1.5f}};
  req.adjust.presence_penalty = 0.4f;
  req.adjust.frequency_penalty = 0.3f;
  req.adjust.repetition_penalty = 1.5f;
  auto res = eng->generate({req});
  ASSERT_TRUE(res.is_ok()) << res.status().to_string();
  const auto& got = (*res)[0].tokens;
  ASSERT_EQ(got.size(), 10u);
  EXPECT_NE(got[0], first) << "a banned token was generated";

  std::vector<int32_t> seq = req.prompt;
  std::map<int32_t, int> generated;
  size_t compared = 0;
  for (size_t step = 0; step < got.size(); ++step, ++compared) {
    const auto raw = testing::naive_last_logits(m.ck.config, *m.weights, seq);
    auto logits = raw;
    for (const auto& [t, b] : req.adjust.logit_bias) logits[static_cast<size_t>(t)] += b;
    std::set<int32_t> seen(req.prompt.begin(), req.prompt.end());
    for (const auto& [t, n] : generated) seen.insert(t);
    for (int32_t t : seen) {
      double& x = logits[static_cast<size_t>(t)];
      x = x > 0 ? x / 1.5 : x * 1.5;
    }
    for (const auto& [t, n] : generated) logits[static_cast<size_t>(t)] -= 0.3 * n + 0.4;
    std::vector<size_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 2, order.end(),
                      [&](size_t a, size_t b) { return logits[a] > logits[b]; });
    if (logits[order[0]] - logits[order[1]] < 1e-4) break;  // a tie: either is right
    ASSERT_EQ(got[step], static_cast<int32_t>(order[0])) << "step " << step;
    // The log-probability is the unadjusted model's.
    EXPECT_NEAR((*res)[0].logprobs[step].logprob,
                raw[static_cast<size_t>(got[step])] - log_normaliser(raw.data(), raw.size()), 1e-3);
    ++generated[got[step]];
    seq.push_back(got[step]);
  }
  EXPECT_GE(compared, 6u) << "too few steps before a tie to tell";

  // Out of range: refused naming the field.
  for (auto bad : {std::function<void(engine::GenerationRequest&)>([](auto& r) { r.adjust.presence_penalty = 2.5f; }),
                   std::function<void(engine::GenerationRequest&)>([](auto& r) { r.adjust.repetition_penalty = 0; }),
                   std::function<void(engine::GenerationRequest&)>(
                       [&](auto& r) { r.adjust.logit_bias = {{static_cast<int32_t>(m.ck.config.vocab_size), 1.0f}}; })}) {
    auto r = req;
    bad(r);
    auto refused = eng->generate({r});
    ASSERT_FALSE(refused.is_ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status().to_string();
  }
}

// min_tokens keeps the stop tokens out until that many tokens are out (then
// they stop the sequence again); min_p at 1 keeps only the most likely token
// (sampling becomes greedy), and below 1 every sampled token is at least
// min_p as likely as the most likely one.
TEST_P(EngineOnPreset, MinTokensAndMinP) {
  const auto& m = tiny_model(GetParam());
  auto eng = make_engine(m, {.num_blocks = 64, .block_size = 4});
  engine::GenerationRequest req = greedy_request(m, "Minimum lengths and minimum probabilities.", 8);
  auto plain = eng->generate({req});
  ASSERT_TRUE(plain.is_ok());
  const auto greedy_tokens = (*plain)[0].tokens;
  const int32_t stop = greedy_tokens[1];
  req.stop_token_ids = {stop};
  auto stopped = eng->generate({req});
  ASSERT_TRUE(stopped.is_ok());
  EXPECT_EQ((*stopped)[0].tokens.size(), 2u);
  req.adjust.min_tokens = 4;
  auto longer = eng->generate({req});
  ASSERT_TRUE(longer.is_ok()) << longer.status().to_string();
  const auto& got = (*longer)[0].tokens;
  ASSERT_GE(got.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NE(got[i], stop) << "a stop token before min_tokens, at " << i;
  if (got.size() < 8u) {
    EXPECT_EQ(got.back(), stop);
    EXPECT_EQ((*longer)[0].finish, engine::FinishReason::kStop);
  }
  // The boundary, whatever the model: with the stop token forced, it comes
  // right after the first min_tokens tokens.
  req.adjust.logit_bias = {{stop, 100.0f}};
  auto forced = eng->generate({req});
  ASSERT_TRUE(forced.is_ok());
  ASSERT_EQ((*forced)[0].tokens.size(), 5u);
  EXPECT_EQ((*forced)[0].tokens.back(), stop);
  EXPECT_EQ((*forced)[0].finish, engine::FinishReason::kStop);
  req.adjust.logit_bias.clear();
  req.adjust.min_tokens = 9;
  EXPECT_EQ(eng->generate({req}).status().code(), StatusCode::kInvalidArgument);

  req = {};
  req.prompt = prompt_ids(m, "Minimum lengths and minimum probabilities.");
  req.max_tokens = 8;
  req.sampling = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
  req.seed = 11;
  req.adjust.min_p = 1.0f;
  auto only_top = eng->generate({req});
  ASSERT_TRUE(only_top.is_ok());
  EXPECT_EQ((*only_top)[0].tokens, greedy_tokens);
  req.adjust.min_p = 0.3f;
  req.logprobs = 1;
  req.sampling.temperature = 1.5f;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    req.seed = seed;
    auto r = eng->generate({req});
    ASSERT_TRUE(r.is_ok());
    for (const auto& lp : (*r)[0].logprobs)  // p >= 0.3 p_max at T = 1.5: logprob >= top + 1.5 ln 0.3
      EXPECT_GE(lp.logprob, lp.top[0].second + 1.5 * std::log(0.3) - 1e-4);
  }
  req.adjust.min_p = 1.5f;
  EXPECT_EQ(eng->generate({req}).status().code(), StatusCode::kInvalidArgument);
}

std::shared_ptr<model::TokenGuide> guide_for(const testing::LoadedModel& m, const model::GuideSpec& spec) {
  static std::map<const testing::LoadedModel*, std::shared_ptr<const model::TokenVocabulary>> vocabularies;
  auto& vocab = vocabularies[&m];
  if (!vocab) vocab = model::TokenVocabulary::build(*m.ck.tokenizer, m.ck.config.vocab_size);
  auto automaton = model::compile_guide(spec);
  EXPECT_TRUE(automaton.is_ok()) << automaton.status().to_string();
  return std::make_shared<model::TokenGuide>(std::move(automaton).value(), vocab);
}

bool matches(const std::string& pattern, const std::string& text) {
  auto a = model::compile_regex(pattern);
  int32_t s = (*a)->start();
  for (char c : text) s = (*a)->next(s, static_cast<uint8_t>(c));
  return s != model::ByteAutomaton::kDead && (*a)->accepting(s);
}

// A random model held to a grammar writes only what the grammar allows, and
// stops as soon as the text is complete, greedy or sampled.
TEST_P(EngineOnPreset, GuidedOutputFollowsTheGrammar) {
  const auto& m = tiny_model(GetParam());
  auto eng = make_engine(m, {.num_blocks = 128, .block_size = 8});
  auto schema = model::json_schema_to_regex(R"({"type": "object", "properties": {"ok": {"type": "boolean"},
      "n": {"enum": [1, 2, 3]}, "tag": {"type": "string", "pattern": "[a-z]{1,5}"}}, "required": ["ok", "n", "tag"]})");
  ASSERT_TRUE(schema.is_ok());
  const std::vector<std::string> patterns = {model::choice_regex({"red", "green", "blue"}),
                                             R"([a-z]{3,6}@[a-z]{2,4}\.(com|org))", schema.value()};
  for (const std::string& pattern : patterns) {
    for (uint64_t seed = 0; seed < 4; ++seed) {
      engine::GenerationRequest req = greedy_request(m, "Answer in the requested format:", 64);
      if (seed > 0) {
        req.sampling = {.temperature = 1.5f, .top_k = 0, .top_p = 1.0f};
        req.seed = seed;
      }
      req.stop_token_ids = m.ck.stop_token_ids;
      req.guide = guide_for(m, {model::GuideSpec::Kind::kRegex, pattern});
      auto r = eng->generate({req});
      ASSERT_TRUE(r.is_ok()) << r.status().to_string();
      const auto& tokens = (*r)[0].tokens;
      const std::string text = m.ck.tokenizer->decode(tokens, true);
      EXPECT_TRUE(matches(pattern, text)) << pattern << " seed " << seed << ": '" << text << "'";
      EXPECT_EQ((*r)[0].finish, engine::FinishReason::kStop) << text;
      if (pattern == schema.value()) {
        const auto v = nlohmann::json::parse(text);
        EXPECT_TRUE(v["ok"].is_boolean() && v["n"].is_number_integer() && v["tag"].is_string()) << text;
      }
    }
  }
}

// Stop tokens come only where the text is complete; until then the grammar's
// tokens win even over a +100 bias; and any JSON object stays a valid prefix.
TEST_P(EngineOnPreset, GuidedStopTokensWaitForACompleteText) {
  const auto& m = tiny_model(GetParam());
  auto eng = make_engine(m, {.num_blocks = 128, .block_size = 8});
  ASSERT_FALSE(m.ck.stop_token_ids.empty());
  const int32_t eos = m.ck.stop_token_ids[0];
  engine::GenerationRequest req = greedy_request(m, "x", 10);
  req.stop_token_ids = {eos};
  req.adjust.logit_bias = {{eos, 100.0f}};
  req.guide = guide_for(m, {model::GuideSpec::Kind::kRegex, "x+"});
  auto r = eng->generate({req});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_EQ((*r)[0].tokens.size(), 2u);  // an x-token, then the forced stop token
  EXPECT_EQ((*r)[0].tokens.back(), eos);
  EXPECT_TRUE(matches("x+", m.ck.tokenizer->decode({(*r)[0].tokens[0]}, true)));

  req = greedy_request(m, "JSON:", 40);
  req.sampling = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
  req.stop_token_ids = {eos};
  req.logprobs = 2;
  req.guide = guide_for(m, {model::GuideSpec::Kind::kJsonObject, ""});
  for (uint64_t seed = 0; seed < 3; ++seed) {
    req.seed = seed;
    auto j = eng->generate({req});
    ASSERT_TRUE(j.is_ok()) << j.status().to_string();
    auto tokens = (*j)[0].tokens;
    if (!tokens.empty() && tokens.back() == eos) tokens.pop_back();
    const std::string text = m.ck.tokenizer->decode(tokens, true);
    auto a = model::json_object_automaton();
    int32_t s = a->start();
    for (char c : text) s = a->next(s, static_cast<uint8_t>(c));
    EXPECT_NE(s, model::ByteAutomaton::kDead) << text;
    if ((*j)[0].finish == engine::FinishReason::kStop) {
      EXPECT_TRUE(nlohmann::json::accept(text)) << text;
    }
    // Log-probabilities are the model's: at the first token (same prompt)
    // the alternatives equal an unguided run's, masked tokens included.
    auto free_req = req;
    free_req.guide.reset();
    auto unguided = eng->generate({free_req});
    ASSERT_TRUE(unguided.is_ok());
    ASSERT_FALSE((*j)[0].logprobs.empty());
    EXPECT_EQ((*j)[0].logprobs[0].top, (*unguided)[0].logprobs[0].top);
  }
  req.adjust.min_tokens = 2;
  EXPECT_EQ(eng->generate({req}).status().code(), StatusCode::kInvalidArgument);
}

// A guide whose vocabulary is not the model's is refused up front.
TEST(Engine, RefusesAGuideForAnotherVocabulary) {
  const auto& m = tiny_model("tiny-mixtral");
  auto eng = make_engine(m);
  engine::GenerationRequest req = greedy_request(m, "x", 4);
  req.guide = std::make_shared<model::TokenGuide>(model::json_object_automaton(),
                                                  model::TokenVocabulary::build(*m.ck.tokenizer, 7));
  auto r = eng->generate({req});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("guide"), std::string::npos);
}

TEST_P(EngineOnPreset, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const auto& m = tiny_model(GetParam());
  engine::GenerationRequest req;
  req.prompt = prompt_ids(m, "Once upon a time");
  req.max_tokens = 24;
  req.sampling = {.temperature = 1.0f, .top_k = 50, .top_p = 0.95f};
  req.seed = 1234;
  auto a = make_engine(m)->generate({req});
  auto b = make_engine(m)->generate({req});
  req.seed = 99;
  auto c = make_engine(m)->generate({req});
  ASSERT_TRUE(a.is_ok() && b.is_ok() && c.is_ok());
  EXPECT_EQ((*a)[0].tokens, (*b)[0].tokens);
  EXPECT_NE((*a)[0].tokens, (*c)[0].tokens);
}

// Several sequences batched together, with chunked prefill and small blocks,
// produce exactly what each produces alone.
TEST_P(EngineOnPreset, BatchedEqualsSequential) {
  const auto& m = tiny_model(GetParam());
  std::vector<engine::GenerationRequest> reqs;
  const char* prompts[] = {"Hello", "The cat sat on the mat and looked out of the window at the rain.",
                           "1 2 3 4 5 6 7 8 9 10", "Bonjour, comment allez-vous?"};
  uint64_t seed = 7;
  for (const char* p : prompts) {
    engine::GenerationRequest r;
    r.prompt = prompt_ids(m, p);
    r.max_tokens = 10;
    r.sampling.temperature = seed % 2 ? 0.9f : 0.0f;
    r.seed = seed++;
    reqs.push_back(r);
  }
  auto batched = make_engine(m, {.num_blocks = 64, .block_size = 4, .max_batch_tokens = 7})->generate(reqs);
  ASSERT_TRUE(batched.is_ok()) << batched.status().to_string();
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto alone = make_engine(m, {.num_blocks = 64, .block_size = 16})->generate({reqs[i]});
    ASSERT_TRUE(alone.is_ok());
    EXPECT_EQ((*batched)[i].tokens, (*alone)[0].tokens) << "request " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, EngineOnPreset, ::testing::Values("tiny-mixtral", "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Engine, StopsAtStopTokenAndReportsFinishReason) {
  const auto& m = tiny_model("tiny-mixtral");
  engine::GenerationRequest req = greedy_request(m, "Stop here", 8);
  auto free_run = make_engine(m)->generate({req});
  ASSERT_TRUE(free_run.is_ok());
  req.stop_token_ids = {(*free_run)[0].tokens[2]};
  auto stopped = make_engine(m)->generate({req});
  ASSERT_TRUE(stopped.is_ok());
  const auto& toks = (*stopped)[0].tokens;
  auto first = std::find(toks.begin(), toks.end(), req.stop_token_ids[0]);
  ASSERT_NE(first, toks.end());
  EXPECT_EQ(first + 1, toks.end());
  EXPECT_EQ((*stopped)[0].finish, engine::FinishReason::kStop);
  EXPECT_EQ((*free_run)[0].finish, engine::FinishReason::kLength);
}

TEST(Engine, RejectsInvalidRequestsNamingTheField) {
  const auto& m = tiny_model("tiny-mixtral");
  auto eng = make_engine(m, {.num_blocks = 4, .block_size = 4});
  engine::GenerationRequest r;
  r.prompt = {};
  EXPECT_NE(eng->generate({r}).status().message().find("prompt"), std::string::npos);
  r.prompt = {1, static_cast<int32_t>(m.ck.config.vocab_size)};
  EXPECT_NE(eng->generate({r}).status().message().find("prompt[1]"), std::string::npos);
  r.prompt = {1, 2};
  r.max_tokens = 0;
  EXPECT_NE(eng->generate({r}).status().message().find("max_tokens"), std::string::npos);
  r.max_tokens = 100;  // 102 tokens need 26 blocks of 4; the cache has 4
  auto full = eng->generate({r});
  EXPECT_EQ(full.status().code(), StatusCode::kResourceExhausted) << full.status().to_string();
  r.max_tokens = 4;
  r.sampling.top_p = 0;
  EXPECT_NE(eng->generate({r}).status().message().find("top_p"), std::string::npos);
}

TEST(Engine, FreesAllKvBlocksWhenDone) {
  const auto& m = tiny_model("tiny-mixtral");
  auto eng = make_engine(m, {.num_blocks = 32, .block_size = 4});
  engine::GenerationRequest r;
  r.prompt = prompt_ids(m, "Blocks come back");
  r.max_tokens = 9;
  ASSERT_TRUE(eng->generate({r, r, r}).is_ok());
  EXPECT_EQ(eng->kv_cache().allocator().num_free(), 32);
}

}  // namespace
}  // namespace tandem
