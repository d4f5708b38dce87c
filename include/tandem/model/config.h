// The model description parsed from a HuggingFace config.json. One struct covers
// every supported architecture; per-architecture differences are expressed as
// data (which norms exist, how the router scores, which layers are sparse), so
// adding Qwen2-MoE or DeepSeek means new fields, not new code paths everywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem::model {

enum class Architecture {
  kMixtral,   // MixtralForCausalLM
  kQwen2Moe,  // Qwen2MoeForCausalLM (shared expert with sigmoid gate, qkv bias)
  kQwen3Moe,  // Qwen3MoeForCausalLM (per-head q/k RMSNorm, explicit head_dim)
};

std::string_view architecture_name(Architecture a);

enum class RouterScoring { kSoftmax, kSigmoid };

struct RopeConfig {
  std::string type = "default";  // only "default" is implemented; others are refused at load
  double theta = 10000.0;
  double attention_scaling = 1.0;
  // inv_freq[i] = theta^(-2i/rot_dim), i < rot_dim/2.
  std::vector<float> inv_freq(int64_t rot_dim) const;
};

struct MoeConfig {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_intermediate = 0;
  RouterScoring scoring = RouterScoring::kSoftmax;
  bool norm_topk_prob = true;
  float routed_scaling = 1.0f;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  int64_t shared_expert_intermediate = 0;  // 0: no shared expert
  bool shared_expert_gate = false;         // Qwen2-MoE: sigmoid(x·w) scales the shared expert
};

struct ModelConfig {
  Architecture arch = Architecture::kMixtral;
  std::string model_type;  // "mixtral", "qwen3_moe", ...
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t dense_intermediate = 0;  // MLP width of non-MoE layers
  int64_t max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  RopeConfig rope;
  bool qk_norm = false;         // Qwen3: RMSNorm over head_dim on q and k, before RoPE
  bool attention_bias = false;  // bias on q, k, v projections
  bool tie_word_embeddings = false;
  MoeConfig moe;
  std::vector<bool> layer_is_moe;  // [num_layers]
  DType dtype = DType::kBF16;      // torch_dtype / dtype
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }

  // Parses config.json text; `source` names the file in error messages.
  static Result<ModelConfig> from_json(std::string_view text, const std::string& source);
  static Result<ModelConfig> from_file(const std::string& path);
};

}  // namespace tandem::model
