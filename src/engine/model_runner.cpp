#include "tandem/engine/model_runner.h"

#include "tandem/engine/expert_executor.h"

#include <algorithm>
#include <cmath>

namespace tandem::engine {

namespace k = tandem::kernels::cpu;

namespace {
void add_bias(float* y, const float* b, int64_t n, int64_t dim) {
  if (!b) return;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < dim; ++j) y[i * dim + j] += b[j];
}
template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
}  // namespace

ModelRunner::ModelRunner(const model::ModelConfig& config, const model::ModelWeights& weights, KvCache* cache)
    : config_(config), weights_(weights), cache_(cache), inv_freq_(config.rope.inv_freq(config.head_dim)) {}

void ModelRunner::embed(const ForwardBatch& b, float* hidden) {
  k::embedding(weights_.embed_tokens, b.tokens.data(), hidden, b.num_tokens(), config_.hidden_size);
}

void ModelRunner::attention(int64_t layer, const ForwardBatch& b, float* hidden, float* moe_in) {
  const auto& c = config_;
  const auto& L = weights_.layers[static_cast<size_t>(layer)];
  const int64_t T = b.num_tokens(), H = c.hidden_size, D = c.head_dim;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  float* x = grow(x_, static_cast<size_t>(T * H));
  float* q = grow(q_, static_cast<size_t>(T * qd));
  float* kk = grow(k_, static_cast<size_t>(T * kvd));
  float* v = grow(v_, static_cast<size_t>(T * kvd));
  float* a = grow(attn_, static_cast<size_t>(T * qd));
  float* o = grow(o_, static_cast<size_t>(T * H));

  k::rmsnorm(hidden, L.input_norm, x, T, H, c.rms_norm_eps);
  k::linear(x, L.attn.q, q, T, H, qd);
  k::linear(x, L.attn.k, kk, T, H, kvd);
  k::linear(x, L.attn.v, v, T, H, kvd);
  add_bias(q, L.attn.q_bias, T, qd);
  add_bias(kk, L.attn.k_bias, T, kvd);
  add_bias(v, L.attn.v_bias, T, kvd);
  if (L.attn.q_norm) {  // Qwen3: per-head RMSNorm before RoPE
    k::rmsnorm(q, L.attn.q_norm, q, T * c.num_heads, D, c.rms_norm_eps);
    k::rmsnorm(kk, L.attn.k_norm, kk, T * c.num_kv_heads, D, c.rms_norm_eps);
  }
  const float scaling = static_cast<float>(c.rope.attention_scaling);
  k::rope_neox(q, b.positions.data(), inv_freq_.data(), T, c.num_heads, D, D, scaling);
  k::rope_neox(kk, b.positions.data(), inv_freq_.data(), T, c.num_kv_heads, D, D, scaling);

  k::PagedKv kv = cache_->layer(layer);
  k::kv_cache_write(kk, v, b.slots.data(), T, kv);
  k::attention_paged(q, a, T, c.num_heads, kv, b.block_tables.data(), b.max_blocks_per_seq, b.seq_of_token.data(),
                     b.ctx_len.data(), 1.0f / std::sqrt(static_cast<float>(D)));
  k::linear(a, L.attn.o, o, T, qd, H);
  k::add_rmsnorm(hidden, o, L.post_attention_norm, moe_in, T, H, c.rms_norm_eps);
}

void ModelRunner::route(int64_t layer, const float* moe_in, int64_t n, int32_t* topk_idx, float* topk_w) {
  const auto& c = config_;
  const auto& L = weights_.layers[static_cast<size_t>(layer)];
  float* logits = grow(gate_logits_, static_cast<size_t>(n * c.moe.num_experts));
  k::linear(moe_in, L.router, logits, n, c.hidden_size, c.moe.num_experts);
  k::GateParams p;
  p.num_experts = c.moe.num_experts;
  p.top_k = c.moe.top_k;
  p.scoring = c.moe.scoring == model::RouterScoring::kSigmoid ? k::GateScoring::kSigmoid : k::GateScoring::kSoftmax;
  p.renormalize = c.moe.norm_topk_prob;
  p.routed_scaling = c.moe.routed_scaling;
  p.n_group = c.moe.n_group;
  p.topk_group = c.moe.topk_group;
  k::moe_gate_topk(logits, topk_idx, topk_w, n, p);
}

void ModelRunner::experts(int64_t layer, const float* moe_in, int64_t n, const int32_t* topk_idx,
                          const float* topk_w, float* out) {
  const auto& c = config_;
  const auto& L = weights_.layers[static_cast<size_t>(layer)];
  const int64_t E = c.moe.num_experts, K = c.moe.top_k, H = c.hidden_size, I = c.moe.expert_intermediate;
  const int64_t rows = n * K;
  int32_t* offsets = grow(offsets_, static_cast<size_t>(E + 1));
  int32_t* row_token = grow(row_token_, static_cast<size_t>(rows));
  float* row_weight = grow(row_weight_, static_cast<size_t>(rows));
  k::moe_permute(topk_idx, topk_w, n, K, E, offsets, row_token, row_weight);

  // Only the experts this node holds take part: the others' rows are skipped by
  // presenting them as empty (their rows still exist in the permutation).
  std::vector<k::ExpertWeights> ew(static_cast<size_t>(E));
  std::vector<int32_t> local_offsets(static_cast<size_t>(E + 1));
  int64_t max_rows = 0;
  std::vector<int32_t> keep;  // permuted rows that belong to held experts
  keep.reserve(static_cast<size_t>(rows));
  for (int64_t e = 0; e < E; ++e) {
    local_offsets[static_cast<size_t>(e)] = static_cast<int32_t>(keep.size());
    const auto& f = L.experts[static_cast<size_t>(e)];
    if (!f.loaded()) continue;
    ew[static_cast<size_t>(e)] = {f.gate, f.up, f.down};
    for (int32_t r = offsets[e]; r < offsets[e + 1]; ++r) keep.push_back(r);
    max_rows = std::max<int64_t>(max_rows, offsets[e + 1] - offsets[e]);
  }
  local_offsets[static_cast<size_t>(E)] = static_cast<int32_t>(keep.size());
  const int64_t nk = static_cast<int64_t>(keep.size());
  if (nk == 0) return;
  std::vector<int32_t> src_token(static_cast<size_t>(nk));
  std::vector<float> w(static_cast<size_t>(nk));
  for (int64_t i = 0; i < nk; ++i) {
    src_token[static_cast<size_t>(i)] = row_token[keep[static_cast<size_t>(i)]];
    w[static_cast<size_t>(i)] = row_weight[keep[static_cast<size_t>(i)]];
  }
  float* xp = grow(xperm_, static_cast<size_t>(nk * H));
  float* yp = grow(yperm_, static_cast<size_t>(nk * H));
  float* scratch = grow(ffn_scratch_, static_cast<size_t>(3 * std::max<int64_t>(max_rows, 1) * I));
  k::gather_rows(moe_in, src_token.data(), xp, nk, H);
  k::grouped_swiglu(xp, yp, local_offsets.data(), E, ew.data(), H, I, scratch);
  k::scatter_add_weighted(yp, src_token.data(), w.data(), out, nk, H);
}

void ModelRunner::ffn(const model::FfnWeights& f, int64_t inter, const float* x, int64_t n, float* out) {
  const int64_t H = config_.hidden_size;
  std::vector<int32_t> offsets{0, static_cast<int32_t>(n)};
  k::ExpertWeights ew{f.gate, f.up, f.down};
  std::vector<float> y(static_cast<size_t>(n * H));
  std::vector<float> scratch(static_cast<size_t>(3 * n * inter));
  k::grouped_swiglu(x, y.data(), offsets.data(), 1, &ew, H, inter, scratch.data());
  for (int64_t i = 0; i < n * H; ++i) out[i] += y[static_cast<size_t>(i)];
}

void ModelRunner::local_ffn(int64_t layer, const float* moe_in, int64_t n, float* out) {
  const auto& c = config_;
  const auto& L = weights_.layers[static_cast<size_t>(layer)];
  const int64_t H = c.hidden_size;
  if (!L.is_moe) {
    ffn(L.dense, c.dense_intermediate, moe_in, n, out);
    return;
  }
  if (!L.shared.loaded()) return;
  std::vector<float> y(static_cast<size_t>(n * H), 0.0f);
  ffn(L.shared, c.moe.shared_expert_intermediate, moe_in, n, y.data());
  std::vector<float> g(static_cast<size_t>(n), 1.0f);
  if (L.shared_gate) {
    k::linear(moe_in, L.shared_gate, g.data(), n, H, 1);
    for (auto& v : g) v = 1.0f / (1.0f + std::exp(-v));
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < H; ++j) out[i * H + j] += g[static_cast<size_t>(i)] * y[static_cast<size_t>(i * H + j)];
}

void ModelRunner::lm_head(const float* hidden, const std::vector<int32_t>& rows, float* logits) {
  const int64_t H = config_.hidden_size, R = static_cast<int64_t>(rows.size());
  std::vector<float> x(static_cast<size_t>(R * H));
  for (int64_t r = 0; r < R; ++r)
    std::copy_n(hidden + static_cast<int64_t>(rows[static_cast<size_t>(r)]) * H, H, x.data() + r * H);
  k::rmsnorm(x.data(), weights_.final_norm, x.data(), R, H, config_.rms_norm_eps);
  k::linear(x.data(), weights_.lm_head, logits, R, H, config_.vocab_size);
}

void ModelRunner::forward(const ForwardBatch& b, std::vector<float>& logits) {
  // One code path for every shape: a single micro-batch with the experts here.
  LocalExpertExecutor local(*this);
  Status st = forward_pipelined(*this, b, 1, local, logits);
  (void)st;  // the local executor cannot fail
}

}  // namespace tandem::engine
