// Binds a checkpoint's tensors to the model description: every tensor the config
// implies is looked up by its HuggingFace name (both the per-expert legacy layout
// and the fused transformers-v5 layout), its shape checked against config.json, and
// exposed as float32 (mapped directly when the file already holds aligned F32,
// converted otherwise). A node can load only the part it runs (attention side,
// or a contiguous range of experts).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/model/config.h"
#include "tandem/model/safetensors.h"

namespace tandem::model {

// One SwiGLU feed-forward: gate and up are [inter, hidden], down is [hidden, inter].
struct FfnWeights {
  const float* gate = nullptr;
  const float* up = nullptr;
  const float* down = nullptr;
  bool loaded() const { return gate != nullptr; }
};

struct AttentionWeights {
  const float* q = nullptr;  // [heads*head_dim, hidden]
  const float* k = nullptr;  // [kv_heads*head_dim, hidden]
  const float* v = nullptr;
  const float* o = nullptr;  // [hidden, heads*head_dim]
  const float* q_bias = nullptr;
  const float* k_bias = nullptr;
  const float* v_bias = nullptr;
  const float* q_norm = nullptr;  // [head_dim] (Qwen3)
  const float* k_norm = nullptr;
};

struct LayerWeights {
  const float* input_norm = nullptr;           // [hidden]
  const float* post_attention_norm = nullptr;  // [hidden]
  AttentionWeights attn;
  bool is_moe = true;
  const float* router = nullptr;        // [experts, hidden]
  std::vector<FfnWeights> experts;      // [experts]; unloaded ones are empty
  FfnWeights dense;                     // non-MoE layers
  FfnWeights shared;                    // Qwen2-MoE shared expert
  const float* shared_gate = nullptr;   // [1, hidden]
};

struct LoadOptions {
  bool attention_side = true;  // embeddings, norms, attention, router, LM head
  int64_t expert_begin = 0;    // experts [expert_begin, expert_end) of every MoE layer
  int64_t expert_end = -1;     // -1: all
};

class ModelWeights {
 public:
  static Result<std::unique_ptr<ModelWeights>> load(const ModelConfig& config, const WeightStore& store,
                                                    const LoadOptions& options = {});

  const float* embed_tokens = nullptr;  // [vocab, hidden]
  const float* final_norm = nullptr;    // [hidden]
  const float* lm_head = nullptr;       // [vocab, hidden] (aliases embed_tokens when tied)
  std::vector<LayerWeights> layers;
  int64_t expert_begin = 0;
  int64_t expert_end = 0;
  size_t owned_bytes() const;

 private:
  friend class WeightBinder;
  std::vector<std::vector<float>> owned_;
};

}  // namespace tandem::model
