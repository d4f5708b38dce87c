// Loading generated checkpoints, their alternative layouts, and broken ones.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using testing::fresh_dir;
using testing::tiny_model;

std::string copy_model(const std::string& src, const std::string& name) {
  std::string dst = fresh_dir(name);
  fs::copy(src, dst, fs::copy_options::recursive);
  return dst;
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& f) {
  nlohmann::json j;
  {
    std::ifstream in(dir + "/config.json");
    in >> j;
  }
  f(j);
  std::ofstream(dir + "/config.json") << j.dump(2);
}

Status open_and_load(const std::string& dir) {
  auto ck = model::Checkpoint::open(dir);
  if (!ck.is_ok()) return ck.status();
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  return w.is_ok() ? Status::ok() : w.status();
}

std::vector<int32_t> greedy(const model::ModelConfig& c, const model::ModelWeights& w, std::vector<int32_t> prompt) {
  auto eng = engine::Engine::create(c, w, {});
  engine::GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = 8;
  r.sampling.temperature = 0;
  auto res = (*eng)->generate({r});
  EXPECT_TRUE(res.is_ok()) << res.status().to_string();
  return (*res)[0].tokens;
}

TEST(Checkpoint, GeneratedModelHasHuggingFaceFiles) {
  const auto& m = tiny_model("tiny-mixtral");
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json"})
    EXPECT_TRUE(fs::exists(fs::path(m.dir) / f)) << f;
  EXPECT_FALSE(m.ck.tokenizer_config.chat_template.empty());
  EXPECT_EQ(m.ck.config.arch, model::Architecture::kMixtral);
  EXPECT_FALSE(m.ck.stop_token_ids.empty());
  EXPECT_NE(m.ck.weights->find("model.layers.0.block_sparse_moe.experts.7.w2.weight"), nullptr);
}

TEST(Checkpoint, MakeModelIsDeterministic) {
  model::MakeModelOptions o{.preset = "tiny-qwen3-moe", .seed = 5, .out_dir = fresh_dir("det_a")};
  ASSERT_TRUE(model::make_model(o).is_ok());
  auto a = o.out_dir;
  o.out_dir = fresh_dir("det_b");
  ASSERT_TRUE(model::make_model(o).is_ok());
  for (const char* f : {"model.safetensors", "tokenizer.json", "config.json"}) {
    std::ifstream x(a + "/" + f, std::ios::binary), y(o.out_dir + "/" + f, std::ios::binary);
    std::string sx((std::istreambuf_iterator<char>(x)), {}), sy((std::istreambuf_iterator<char>(y)), {});
    EXPECT_FALSE(sx.empty());
    EXPECT_EQ(sx, sy) << f;
  }
}

TEST(Checkpoint, Bf16AndF32CheckpointsAgreeClosely) {
  const auto& f32 = tiny_model("tiny-mixtral", DType::kF32);
  const auto& bf16 = tiny_model("tiny-mixtral", DType::kBF16);
  auto ids = *f32.ck.tokenizer->encode("Numbers and rounding");
  // Same seed, different storage precision: the first greedy token agrees.
  EXPECT_EQ(greedy(f32.ck.config, *f32.weights, ids)[0], greedy(bf16.ck.config, *bf16.weights, ids)[0]);
}

// transformers v5 can save experts fused (mlp.experts.gate_up_proj / down_proj);
// both layouts must give identical results.
TEST(Checkpoint, FusedExpertLayoutEqualsLegacyLayout) {
  const auto& m = tiny_model("tiny-mixtral");
  const auto& c = m.ck.config;
  std::string dir = copy_model(m.dir, "fused");
  std::vector<model::TensorToWrite> out;
  const int64_t E = c.moe.num_experts, I = c.moe.expert_intermediate, H = c.hidden_size;
  auto raw = [&](const std::string& name) {
    const auto* t = m.ck.weights->find(name);
    return std::vector<std::byte>(t->data, t->data + t->nbytes);
  };
  for (const auto& name : m.ck.weights->names()) {
    if (name.find(".experts.") != std::string::npos) continue;
    const auto* t = m.ck.weights->find(name);
    std::string n = name;
    auto pos = n.find("block_sparse_moe.gate");
    if (pos != std::string::npos) n.replace(pos, 16, "mlp");
    out.push_back({n, t->dtype, t->shape, raw(name)});
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string lp = "model.layers." + std::to_string(l) + ".";
    model::TensorToWrite gu{lp + "mlp.experts.gate_up_proj", DType::kF32, {E, 2 * I, H}, {}};
    model::TensorToWrite dn{lp + "mlp.experts.down_proj", DType::kF32, {E, H, I}, {}};
    for (int64_t e = 0; e < E; ++e) {
      const std::string ep = lp + "block_sparse_moe.experts." + std::to_string(e) + ".";
      for (const char* w : {"w1", "w3"}) {
        auto b = raw(ep + w + ".weight");
        gu.data.insert(gu.data.end(), b.begin(), b.end());
      }
      auto b = raw(ep + "w2.weight");
      dn.data.insert(dn.data.end(), b.begin(), b.end());
    }
    out.push_back(std::move(gu));
    out.push_back(std::move(dn));
  }
  fs::remove(fs::path(dir) / "model.safetensors");
  ASSERT_TRUE(model::write_checkpoint_weights(dir, out, /*max_shard_bytes=*/200 * 1024).is_ok());
  ASSERT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));  // sharded too
  auto ck = model::Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  auto ids = *m.ck.tokenizer->encode("Fused or not, the same");
  EXPECT_EQ(greedy(c, *m.weights, ids), greedy(ck->config, **w, ids));
}

TEST(Checkpoint, ExpertRangeLoadsOnlyThoseExperts) {
  const auto& m = tiny_model("tiny-mixtral");
  auto w = model::ModelWeights::load(m.ck.config, *m.ck.weights, {.attention_side = false, .expert_begin = 2, .expert_end = 5});
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  EXPECT_EQ((*w)->embed_tokens, nullptr);
  for (int e = 0; e < 8; ++e) EXPECT_EQ((*w)->layers[0].experts[e].loaded(), e >= 2 && e < 5) << e;
  auto bad = model::ModelWeights::load(m.ck.config, *m.ck.weights, {.expert_begin = 6, .expert_end = 9});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(Checkpoint, MismatchedConfigNamesTensorAndShapes) {
  std::string dir = copy_model(tiny_model("tiny-mixtral").dir, "mismatch");
  edit_config(dir, [](auto& j) { j["intermediate_size"] = 96; });
  Status st = open_and_load(dir);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("model.safetensors"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("experts.0.w1.weight"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("[96, 64]"), std::string::npos) << st.message();
}

TEST(Checkpoint, MissingTensorIsNamed) {
  std::string dir = copy_model(tiny_model("tiny-mixtral").dir, "missing");
  edit_config(dir, [](auto& j) { j["num_hidden_layers"] = 3; });
  Status st = open_and_load(dir);
  EXPECT_EQ(st.code(), StatusCode::kNotFound) << st.to_string();
  EXPECT_NE(st.message().find("model.layers.2."), std::string::npos) << st.message();
}

TEST(Checkpoint, TruncatedWeightsAreRefusedNamingTheFile) {
  std::string dir = copy_model(tiny_model("tiny-mixtral").dir, "truncated");
  auto p = fs::path(dir) / "model.safetensors";
  fs::resize_file(p, fs::file_size(p) - 100);
  Status st = open_and_load(dir);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("model.safetensors"), std::string::npos) << st.message();
}

TEST(Checkpoint, TokenizerLargerThanVocabIsRefused) {
  std::string dir = copy_model(tiny_model("tiny-mixtral").dir, "vocab");
  edit_config(dir, [](auto& j) { j["vocab_size"] = 100; });
  Status st = open_and_load(dir);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("vocab_size"), std::string::npos) << st.message();
}

TEST(Checkpoint, MissingDirectoryAndConfig) {
  EXPECT_EQ(open_and_load("/nonexistent/model").code(), StatusCode::kNotFound);
  std::string dir = copy_model(tiny_model("tiny-mixtral").dir, "noconfig");
  fs::remove(fs::path(dir) / "config.json");
  Status st = open_and_load(dir);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace tandem
