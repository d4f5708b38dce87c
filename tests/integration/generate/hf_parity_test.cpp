// Parity with HuggingFace transformers: the fixtures under tests/fixtures/hf were
// recorded by scripts/hf_parity.py, which generated the same checkpoints with
// `tandem make-model` and ran them through transformers unchanged.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

std::string fixture_dir() {
  const char* env = std::getenv("TANDEM_HF_FIXTURES");
  return env ? env : std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/hf";
}

template <typename T>
std::vector<T> values(const model::TensorInfo* t) {
  std::vector<T> v(t->nbytes / sizeof(T));
  std::memcpy(v.data(), t->data, t->nbytes);
  return v;
}

// max|a - b| / max(1, max|b|), the tolerance measure of the parity protocol.
double rel_err(const float* a, const float* b, size_t n) {
  double scale = 1, err = 0;
  for (size_t i = 0; i < n; ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return err / scale;
}

class HfParity : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParity, TokensPrefillLogitsAndGreedyDecodeMatchTransformers) {
  const std::string path = fixture_dir() + "/" + GetParam() + ".safetensors";
  if (!fs::exists(path)) GTEST_SKIP() << "no fixture " << path << " (make it with scripts/hf_parity.py)";
  auto fx = model::SafetensorsFile::open(path);
  ASSERT_TRUE(fx.is_ok()) << fx.status().to_string();
  const auto& meta = (*fx)->metadata();
  ASSERT_EQ(meta.at("dtype"), "F32");
  const auto& m = testing::tiny_model(GetParam(), DType::kF32, std::stoull(meta.at("seed")));
  const auto& c = m.ck.config;
  auto prompts = nlohmann::json::parse(meta.at("prompts"));

  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    const std::string p = "p" + std::to_string(i) + ".";
    auto hf_ids = values<int32_t>((*fx)->find(p + "input_ids"));
    auto ids = m.ck.tokenizer->encode(prompts[i].get<std::string>());
    ASSERT_TRUE(ids.is_ok());
    EXPECT_EQ(*ids, hf_ids) << "tokenizer differs from HF";

    // Prefill: logits at every position.
    std::vector<float> logits = testing::prefill_logits(c, *m.weights, hf_ids, /*all_rows=*/true);
    auto ref = values<float>((*fx)->find(p + "prefill_logits"));
    ASSERT_EQ(logits.size(), ref.size());
    const double err = rel_err(logits.data(), ref.data(), ref.size());
    std::printf("[ parity ] %s prompt %zu: prefill logits max rel err %.3g over %zu values\n", GetParam().c_str(), i, err, ref.size());
    EXPECT_LT(err, 1e-3);

    // Greedy decode through the engine: same tokens as HF with its KV cache.
    auto eng = engine::Engine::create(c, *m.weights, {.num_blocks = 32, .block_size = 4});
    engine::GenerationRequest req;
    req.prompt = hf_ids;
    req.sampling.temperature = 0;
    auto hf_tokens = values<int32_t>((*fx)->find(p + "greedy_tokens"));
    req.max_tokens = static_cast<int32_t>(hf_tokens.size());
    auto res = (*eng)->generate({req});
    ASSERT_TRUE(res.is_ok()) << res.status().to_string();
    EXPECT_EQ((*res)[0].tokens, hf_tokens);

    // Prompt log-probabilities (a loglikelihood evaluation's scores) are the
    // log-softmax of transformers' logits at the position before each token.
    req.prompt_logprobs = 0;
    req.max_tokens = 0;
    auto scored = (*eng)->generate({req});
    ASSERT_TRUE(scored.is_ok()) << scored.status().to_string();
    ASSERT_EQ((*scored)[0].prompt_logprobs.size(), hf_ids.size() - 1);
    const auto V = static_cast<size_t>(c.vocab_size);
    double worst = 0;
    for (size_t t = 1; t < hf_ids.size(); ++t) {
      const float* row = ref.data() + (t - 1) * V;
      const double mx = *std::max_element(row, row + V);
      double z = 0;
      for (size_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(row[v]) - mx);
      const double want = row[static_cast<size_t>(hf_ids[t])] - mx - std::log(z);
      worst = std::max(worst, std::abs((*scored)[0].prompt_logprobs[t - 1].logprob - want));
    }
    std::printf("[ parity ] %s prompt %zu: prompt logprobs max abs err %.3g\n", GetParam().c_str(), i, worst);
    EXPECT_LT(worst, 1e-3);
  }
}

// Checkpoints written by transformers' save_pretrained (BF16, sharded index,
// legacy per-expert names; Qwen2-MoE with shared expert, qkv bias and a dense
// layer) load unchanged and compute what transformers computes.
class HfWritten : public ::testing::TestWithParam<std::string> {};

TEST_P(HfWritten, LoadsAndMatchesTransformers) {
  const std::string dir = fixture_dir() + "/" + GetParam();
  if (!fs::exists(dir + "/reference.safetensors")) GTEST_SKIP() << "no fixture " << dir;
  auto ck = model::Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  EXPECT_FALSE(ck->tokenizer_config.chat_template.empty()) << "chat_template.jinja not picked up";
  auto fx = model::SafetensorsFile::open(dir + "/reference.safetensors");
  ASSERT_TRUE(fx.is_ok()) << fx.status().to_string();
  const auto& c = ck->config;
  auto prompts = nlohmann::json::parse((*fx)->metadata().at("prompts"));
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    const std::string p = "p" + std::to_string(i) + ".";
    auto ids = values<int32_t>((*fx)->find(p + "input_ids"));
    EXPECT_EQ(*ck->tokenizer->encode(prompts[i].get<std::string>()), ids);
    auto eng = engine::Engine::create(c, **w, {.num_blocks = 32, .block_size = 4});
    engine::GenerationRequest req;
    req.prompt = ids;
    req.sampling.temperature = 0;
    auto want = values<int32_t>((*fx)->find(p + "greedy_tokens"));
    req.max_tokens = static_cast<int32_t>(want.size());
    auto res = (*eng)->generate({req});
    ASSERT_TRUE(res.is_ok()) << res.status().to_string();
    EXPECT_EQ((*res)[0].tokens, want);

    std::vector<float> logits = testing::prefill_logits(c, **w, ids, /*all_rows=*/true);
    auto ref = values<float>((*fx)->find(p + "prefill_logits"));
    const double err = rel_err(logits.data(), ref.data(), ref.size());
    std::printf("[ parity ] %s prompt %zu: prefill logits max rel err %.3g\n", GetParam().c_str(), i, err);
    EXPECT_LT(err, 1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(Written, HfWritten, ::testing::Values("hf-mixtral", "hf-qwen2-moe", "hf-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

INSTANTIATE_TEST_SUITE_P(Presets, HfParity, ::testing::Values("tiny-mixtral", "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace tandem
