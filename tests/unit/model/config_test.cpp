#include <gtest/gtest.h>

#include <cmath>

#include "tandem/model/config.h"

namespace tandem::model {
namespace {

const char* kMixtral = R"({
  "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
  "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
  "num_local_experts": 8, "num_experts_per_tok": 2, "sliding_window": null, "eos_token_id": 2,
  "torch_dtype": "bfloat16"})";

TEST(ModelConfig, ParsesMixtral) {
  auto c = ModelConfig::from_json(kMixtral, "config.json");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->arch, Architecture::kMixtral);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->moe.num_experts, 8);
  EXPECT_EQ(c->moe.top_k, 2);
  EXPECT_TRUE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->rope.theta, 1e6);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c->layer_is_moe, (std::vector<bool>{true, true}));
}

TEST(ModelConfig, ParsesQwen3MoeWithDenseLayersAndRopeParameters) {
  auto c = ModelConfig::from_json(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 512, "hidden_size": 64,
    "intermediate_size": 128, "moe_intermediate_size": 48, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "num_experts": 16,
    "num_experts_per_tok": 4, "norm_topk_prob": true, "mlp_only_layers": [0], "decoder_sparse_step": 1,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}, "eos_token_id": [7, 9]})",
                                  "q/config.json");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->arch, Architecture::kQwen3Moe);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->rope.theta, 5000.0);
  EXPECT_EQ(c->layer_is_moe, (std::vector<bool>{false, true, true, true}));
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{7, 9}));
}

TEST(ModelConfig, RopeInvFreqMatchesDefinition) {
  RopeConfig r;
  r.theta = 10000.0;
  auto f = r.inv_freq(8);
  ASSERT_EQ(f.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], std::pow(10000.0, -2.0 * i / 8), 1e-7);
}

void expect_error(const std::string& json, StatusCode code, const std::string& needle) {
  auto c = ModelConfig::from_json(json, "bad/config.json");
  ASSERT_FALSE(c.is_ok()) << "accepted: " << json;
  EXPECT_EQ(c.status().code(), code) << c.status().to_string();
  EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().to_string();
  EXPECT_NE(c.status().message().find("bad/config.json"), std::string::npos) << c.status().to_string();
}

std::string mixtral_with(const std::string& key, const std::string& value) {
  std::string s = kMixtral;
  auto pos = s.find("\"" + key + "\"");
  if (pos == std::string::npos) return s.substr(0, s.size() - 1) + ", \"" + key + "\": " + value + "}";
  auto colon = s.find(':', pos);
  auto end = s.find_first_of(",}", colon);
  return s.substr(0, colon + 1) + " " + value + s.substr(end);
}

TEST(ModelConfig, RejectsBadFieldsNamingTheKey) {
  expect_error("{not json", StatusCode::kInvalidArgument, "not valid JSON");
  expect_error(mixtral_with("hidden_size", "\"64\""), StatusCode::kInvalidArgument, "hidden_size");
  expect_error(mixtral_with("hidden_size", "-1"), StatusCode::kInvalidArgument, "hidden_size");
  expect_error(mixtral_with("num_key_value_heads", "3"), StatusCode::kInvalidArgument, "num_key_value_heads");
  expect_error(mixtral_with("num_experts_per_tok", "9"), StatusCode::kInvalidArgument, "num_experts_per_tok");
  expect_error(mixtral_with("sliding_window", "4096"), StatusCode::kUnimplemented, "sliding_window");
  expect_error(mixtral_with("architectures", "[\"LlamaForCausalLM\"]"), StatusCode::kUnimplemented,
               "LlamaForCausalLM");
  expect_error(mixtral_with("rope_scaling", R"({"rope_type": "yarn", "factor": 4.0})"), StatusCode::kUnimplemented,
               "yarn");
  std::string no_vocab = kMixtral;
  no_vocab.replace(no_vocab.find("\"vocab_size\": 1024,"), 19, "");
  expect_error(no_vocab, StatusCode::kInvalidArgument, "vocab_size");
}

}  // namespace
}  // namespace tandem::model
