// The forward pass of one model on the CPU backend, split at the points where the
// disaggregated cluster cuts it: embedding, per-layer attention (+ router), the
// experts, and the LM head. The single-process engine calls them in sequence; an
// attention node runs all but the experts and an expert node only the experts.
#pragma once

#include <cstdint>
#include <vector>

#include "tandem/engine/kv_cache.h"
#include "tandem/model/config.h"
#include "tandem/model/weights.h"

namespace tandem::engine {

// A batch of tokens from one or more sequences, already placed in the KV cache.
struct ForwardBatch {
  std::vector<int32_t> tokens;        // [T]
  std::vector<int32_t> positions;     // [T]
  std::vector<int32_t> seq_of_token;  // [T] row of block_tables
  std::vector<int64_t> slots;         // [T] KV slot for this token's K/V
  std::vector<int32_t> ctx_len;       // [T] positions visible to this token (pos + 1)
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  std::vector<int32_t> logits_rows;   // tokens whose next-token logits are wanted (increasing)

  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
};

class ModelRunner {
 public:
  // `cache` may be null on a node that runs no attention.
  ModelRunner(const model::ModelConfig& config, const model::ModelWeights& weights, KvCache* cache);

  // logits: [logits_rows, vocab].
  void forward(const ForwardBatch& batch, std::vector<float>& logits);

  // hidden [T, H] = embeddings of the batch's tokens.
  void embed(const ForwardBatch& batch, float* hidden);
  // hidden += attention(input_norm(hidden)); moe_in = post_attention_norm(hidden).
  void attention(int64_t layer, const ForwardBatch& batch, float* hidden, float* moe_in);
  // Router: topk_idx/topk_w [T, top_k] for moe_in [T, H].
  void route(int64_t layer, const float* moe_in, int64_t n, int32_t* topk_idx, float* topk_w);
  // out [T, H] += Σ_k w·expert_k(moe_in) over chosen experts this node holds.
  void experts(int64_t layer, const float* moe_in, int64_t n, const int32_t* topk_idx, const float* topk_w,
               float* out);
  // The feed-forward that stays on the attention side: the dense MLP of non-MoE
  // layers, or the shared expert of MoE layers. out [T, H] += it; no-op if none.
  void local_ffn(int64_t layer, const float* moe_in, int64_t n, float* out);
  // logits [rows, vocab] = lm_head(final_norm(hidden[rows])).
  void lm_head(const float* hidden, const std::vector<int32_t>& rows, float* logits);

  const model::ModelConfig& config() const { return config_; }
  bool layer_is_moe(int64_t layer) const { return weights_.layers[static_cast<size_t>(layer)].is_moe; }

 private:
  void ffn(const model::FfnWeights& w, int64_t inter, const float* x, int64_t n, float* out);

  const model::ModelConfig& config_;
  const model::ModelWeights& weights_;
  KvCache* cache_;
  std::vector<float> inv_freq_;
  // Scratch reused across calls (a runner is used by one thread at a time).
  std::vector<float> x_, q_, k_, v_, attn_, o_, gate_logits_, xperm_, yperm_, ffn_scratch_;
  std::vector<int32_t> offsets_, row_token_;
  std::vector<float> row_weight_;
};

}  // namespace tandem::engine
