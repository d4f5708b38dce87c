#include "tandem/engine/cuda_runner.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_map>

#include "tandem/kernels/cuda.h"

namespace tandem::engine {

namespace kc = tandem::kernels::cuda;

namespace {

struct DeviceLayer {
  const float *input_norm = nullptr, *post_norm = nullptr;
  const float *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  bool is_moe = true;
  const float* router = nullptr;
  std::vector<kernels::ExpertWeights> experts;  // host array of device pointers, as grouped_swiglu wants
  kernels::ExpertWeights dense;
};

// A device buffer that grows to the largest size asked of it.
template <typename T>
Result<T*> grow(kc::DeviceBuffer& b, size_t count, const char* what) {
  const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
  if (b.size() < bytes) {
    b = kc::DeviceBuffer();  // free first: the old contents are not needed
    TANDEM_ASSIGN_OR_RETURN(b, kc::DeviceBuffer::allocate(bytes, what));
  }
  return b.as<T>();
}

template <typename T>
Result<T*> upload_vector(kc::DeviceBuffer& b, const std::vector<T>& host, const char* what) {
  TANDEM_ASSIGN_OR_RETURN(T * d, grow<T>(b, host.size(), what));
  TANDEM_RETURN_IF_ERROR(kc::copy_to_device(d, host.data(), host.size() * sizeof(T)));
  return d;
}

}  // namespace

struct CudaModelRunner::Impl {
  const model::ModelConfig& c;
  KvCacheShape kv_shape;
  std::vector<kc::DeviceBuffer> owned;
  std::unordered_map<const float*, const float*> uploaded;  // host tensor -> its device copy
  size_t device_bytes = 0;

  const float *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr, *inv_freq = nullptr;
  std::vector<DeviceLayer> layers;
  kc::DeviceBuffer k_cache, v_cache;

  // Per-step inputs and activations, grown on demand.
  kc::DeviceBuffer tokens, positions, seq_of_token, slots, ctx_len, block_tables, logits_rows;
  kc::DeviceBuffer hidden, x, q, k, v, attn, o, moe_in, moe_out, gate_logits, topk_idx, topk_w;
  kc::DeviceBuffer offsets, row_token, row_weight, x_perm, y_perm, scratch, normed, selected, logits;

  Impl(const model::ModelConfig& config, const KvCacheShape& kv)
      : c(config), kv_shape(kv) {}

  Result<const float*> upload(const float* host, int64_t count, const std::string& what) {
    if (!host) return static_cast<const float*>(nullptr);
    if (auto it = uploaded.find(host); it != uploaded.end()) return it->second;  // tied embeddings
    TANDEM_ASSIGN_OR_RETURN(kc::DeviceBuffer b,
                            kc::DeviceBuffer::allocate(static_cast<size_t>(count) * sizeof(float), what));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_device(b.data(), host, static_cast<size_t>(count) * sizeof(float)));
    const float* d = b.as<float>();
    device_bytes += b.size();
    owned.push_back(std::move(b));
    uploaded.emplace(host, d);
    return d;
  }

  Status load(const model::ModelWeights& w) {
    const int64_t H = c.hidden_size, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
    const int64_t E = c.moe.num_experts, I = c.moe.expert_intermediate, V = c.vocab_size;
    TANDEM_ASSIGN_OR_RETURN(embed, upload(w.embed_tokens, V * H, "embed_tokens"));
    TANDEM_ASSIGN_OR_RETURN(final_norm, upload(w.final_norm, H, "final norm"));
    TANDEM_ASSIGN_OR_RETURN(lm_head, upload(w.lm_head, V * H, "lm_head"));
    const std::vector<float> freq = c.rope.inv_freq(D);
    TANDEM_ASSIGN_OR_RETURN(inv_freq, upload(freq.data(), static_cast<int64_t>(freq.size()), "rope inv_freq"));
    uploaded.erase(freq.data());  // a temporary: its address may come back for another tensor
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const model::LayerWeights& L = w.layers[l];
      const std::string at = "layer " + std::to_string(l) + " ";
      if (L.attn.q_bias || L.attn.k_bias || L.attn.v_bias)
        return unimplemented(at + "has attention biases (Qwen2-MoE): the CUDA runner does not add biases yet");
      if (L.shared.loaded())
        return unimplemented(at + "has a shared expert (Qwen2-MoE): the CUDA runner does not run it yet");
      DeviceLayer d;
      d.is_moe = L.is_moe;
      TANDEM_ASSIGN_OR_RETURN(d.input_norm, upload(L.input_norm, H, at + "input norm"));
      TANDEM_ASSIGN_OR_RETURN(d.post_norm, upload(L.post_attention_norm, H, at + "post-attention norm"));
      TANDEM_ASSIGN_OR_RETURN(d.q, upload(L.attn.q, qd * H, at + "q_proj"));
      TANDEM_ASSIGN_OR_RETURN(d.k, upload(L.attn.k, kvd * H, at + "k_proj"));
      TANDEM_ASSIGN_OR_RETURN(d.v, upload(L.attn.v, kvd * H, at + "v_proj"));
      TANDEM_ASSIGN_OR_RETURN(d.o, upload(L.attn.o, H * qd, at + "o_proj"));
      TANDEM_ASSIGN_OR_RETURN(d.q_norm, upload(L.attn.q_norm, D, at + "q_norm"));
      TANDEM_ASSIGN_OR_RETURN(d.k_norm, upload(L.attn.k_norm, D, at + "k_norm"));
      if (L.is_moe) {
        TANDEM_ASSIGN_OR_RETURN(d.router, upload(L.router, E * H, at + "router"));
        d.experts.resize(static_cast<size_t>(E));
        for (int64_t e = 0; e < E; ++e) {
          const model::FfnWeights& f = L.experts[static_cast<size_t>(e)];
          if (!f.loaded()) return unimplemented(at + "expert " + std::to_string(e) + " is not loaded: the CUDA runner holds every expert");
          auto& x = d.experts[static_cast<size_t>(e)];
          const std::string name = at + "expert " + std::to_string(e);
          TANDEM_ASSIGN_OR_RETURN(x.gate, upload(f.gate, I * H, name + " gate"));
          TANDEM_ASSIGN_OR_RETURN(x.up, upload(f.up, I * H, name + " up"));
          TANDEM_ASSIGN_OR_RETURN(x.down, upload(f.down, H * I, name + " down"));
        }
      } else {
        const int64_t F = c.dense_intermediate;
        TANDEM_ASSIGN_OR_RETURN(d.dense.gate, upload(L.dense.gate, F * H, at + "mlp gate"));
        TANDEM_ASSIGN_OR_RETURN(d.dense.up, upload(L.dense.up, F * H, at + "mlp up"));
        TANDEM_ASSIGN_OR_RETURN(d.dense.down, upload(L.dense.down, H * F, at + "mlp down"));
      }
      layers.push_back(std::move(d));
    }
    const size_t per_layer = static_cast<size_t>(kv_shape.num_blocks * kv_shape.block_size * kv_shape.kv_heads *
                                                 kv_shape.head_dim) * sizeof(float);
    TANDEM_ASSIGN_OR_RETURN(k_cache, kc::DeviceBuffer::allocate(per_layer * kv_shape.num_layers, "KV cache (K)"));
    TANDEM_ASSIGN_OR_RETURN(v_cache, kc::DeviceBuffer::allocate(per_layer * kv_shape.num_layers, "KV cache (V)"));
    device_bytes += k_cache.size() + v_cache.size();
    return kc::synchronize();
  }

  kernels::PagedKv cache_of(int64_t layer) const {
    const int64_t per_layer = kv_shape.num_blocks * kv_shape.block_size * kv_shape.kv_heads * kv_shape.head_dim;
    return {k_cache.as<float>() + layer * per_layer, v_cache.as<float>() + layer * per_layer, kv_shape.num_blocks,
            kv_shape.block_size, kv_shape.kv_heads, kv_shape.head_dim};
  }

  // moe_out [T, H] = Σ_k w·expert_k(moe_in): ModelRunner::route + experts.
  Status experts(const DeviceLayer& L, const float* in, int64_t T, float* out) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k, I = c.moe.expert_intermediate;
    TANDEM_ASSIGN_OR_RETURN(float* logits_d, grow<float>(gate_logits, static_cast<size_t>(T * E), "router logits"));
    TANDEM_RETURN_IF_ERROR(kc::linear(in, L.router, logits_d, T, H, E));
    TANDEM_ASSIGN_OR_RETURN(int32_t* idx, grow<int32_t>(topk_idx, static_cast<size_t>(T * K), "top-k ids"));
    TANDEM_ASSIGN_OR_RETURN(float* wts, grow<float>(topk_w, static_cast<size_t>(T * K), "top-k weights"));
    kernels::GateParams p;
    p.num_experts = E;
    p.top_k = K;
    p.scoring = c.moe.scoring == model::RouterScoring::kSigmoid ? kernels::GateScoring::kSigmoid
                                                                : kernels::GateScoring::kSoftmax;
    p.renormalize = c.moe.norm_topk_prob;
    p.routed_scaling = c.moe.routed_scaling;
    p.n_group = c.moe.n_group;
    p.topk_group = c.moe.topk_group;
    TANDEM_RETURN_IF_ERROR(kc::moe_gate_topk(logits_d, idx, wts, T, p));

    const int64_t rows = T * K;
    TANDEM_ASSIGN_OR_RETURN(int32_t* offs, grow<int32_t>(offsets, static_cast<size_t>(E + 1), "expert offsets"));
    TANDEM_ASSIGN_OR_RETURN(int32_t* rt, grow<int32_t>(row_token, static_cast<size_t>(rows), "row tokens"));
    TANDEM_ASSIGN_OR_RETURN(float* rw, grow<float>(row_weight, static_cast<size_t>(rows), "row weights"));
    TANDEM_RETURN_IF_ERROR(kc::moe_permute(idx, wts, T, K, E, offs, rt, rw));
    // cuBLAS takes each expert's row count from the host.
    std::vector<int32_t> host_offsets(static_cast<size_t>(E + 1));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_host(host_offsets.data(), offs, host_offsets.size() * sizeof(int32_t)));
    int64_t max_rows = 1;
    for (int64_t e = 0; e < E; ++e) max_rows = std::max<int64_t>(max_rows, host_offsets[e + 1] - host_offsets[e]);

    TANDEM_ASSIGN_OR_RETURN(float* xp, grow<float>(x_perm, static_cast<size_t>(rows * H), "permuted tokens"));
    TANDEM_ASSIGN_OR_RETURN(float* yp, grow<float>(y_perm, static_cast<size_t>(rows * H), "expert outputs"));
    TANDEM_ASSIGN_OR_RETURN(float* sc, grow<float>(scratch, static_cast<size_t>(3 * max_rows * I), "expert scratch"));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(in, rt, xp, rows, H));
    TANDEM_RETURN_IF_ERROR(kc::grouped_swiglu_host_offsets(xp, yp, host_offsets.data(), E, L.experts.data(), H, I, sc));
    return kc::scatter_add_weighted(yp, rt, rw, out, rows, H);
  }

  Status forward(const ForwardBatch& b, std::vector<float>& host_logits) {
    const int64_t T = b.num_tokens(), H = c.hidden_size, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
    const int64_t R = static_cast<int64_t>(b.logits_rows.size());
    host_logits.assign(static_cast<size_t>(R * c.vocab_size), 0.0f);
    if (T == 0) return Status::ok();
    TANDEM_ASSIGN_OR_RETURN(const int32_t* tok, upload_vector(tokens, b.tokens, "token ids"));
    TANDEM_ASSIGN_OR_RETURN(const int32_t* pos, upload_vector(positions, b.positions, "positions"));
    TANDEM_ASSIGN_OR_RETURN(const int32_t* seq, upload_vector(seq_of_token, b.seq_of_token, "sequence of token"));
    TANDEM_ASSIGN_OR_RETURN(const int64_t* slot, upload_vector(slots, b.slots, "KV slots"));
    TANDEM_ASSIGN_OR_RETURN(const int32_t* ctx, upload_vector(ctx_len, b.ctx_len, "context lengths"));
    TANDEM_ASSIGN_OR_RETURN(const int32_t* bt, upload_vector(block_tables, b.block_tables, "block tables"));

    const size_t th = static_cast<size_t>(T * H);
    TANDEM_ASSIGN_OR_RETURN(float* h, grow<float>(hidden, th, "hidden"));
    TANDEM_ASSIGN_OR_RETURN(float* xn, grow<float>(x, th, "normed hidden"));
    TANDEM_ASSIGN_OR_RETURN(float* qq, grow<float>(q, static_cast<size_t>(T * qd), "q"));
    TANDEM_ASSIGN_OR_RETURN(float* kk, grow<float>(k, static_cast<size_t>(T * kvd), "k"));
    TANDEM_ASSIGN_OR_RETURN(float* vv, grow<float>(v, static_cast<size_t>(T * kvd), "v"));
    TANDEM_ASSIGN_OR_RETURN(float* aa, grow<float>(attn, static_cast<size_t>(T * qd), "attention output"));
    TANDEM_ASSIGN_OR_RETURN(float* oo, grow<float>(o, th, "o_proj output"));
    TANDEM_ASSIGN_OR_RETURN(float* mi, grow<float>(moe_in, th, "moe input"));
    TANDEM_ASSIGN_OR_RETURN(float* mo, grow<float>(moe_out, th, "moe output"));

    const float eps = static_cast<float>(c.rms_norm_eps);
    const float rope_scaling = static_cast<float>(c.rope.attention_scaling);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    TANDEM_RETURN_IF_ERROR(kc::embedding(embed, tok, h, T, H));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const DeviceLayer& L = layers[static_cast<size_t>(l)];
      // The previous layer's FFN output joins the residual stream here, fused
      // with this layer's input norm (the CPU runner adds, then normalises).
      if (l == 0)
        TANDEM_RETURN_IF_ERROR(kc::rmsnorm(h, L.input_norm, xn, T, H, eps));
      else
        TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(h, mo, L.input_norm, xn, T, H, eps));
      TANDEM_RETURN_IF_ERROR(kc::linear(xn, L.q, qq, T, H, qd));
      TANDEM_RETURN_IF_ERROR(kc::linear(xn, L.k, kk, T, H, kvd));
      TANDEM_RETURN_IF_ERROR(kc::linear(xn, L.v, vv, T, H, kvd));
      if (L.q_norm) {
        TANDEM_RETURN_IF_ERROR(kc::rmsnorm(qq, L.q_norm, qq, T * c.num_heads, D, eps));
        TANDEM_RETURN_IF_ERROR(kc::rmsnorm(kk, L.k_norm, kk, T * c.num_kv_heads, D, eps));
      }
      TANDEM_RETURN_IF_ERROR(kc::rope_neox(qq, pos, inv_freq, T, c.num_heads, D, D, rope_scaling));
      TANDEM_RETURN_IF_ERROR(kc::rope_neox(kk, pos, inv_freq, T, c.num_kv_heads, D, D, rope_scaling));
      const kernels::PagedKv kv = cache_of(l);
      TANDEM_RETURN_IF_ERROR(kc::kv_cache_write(kk, vv, slot, T, kv));
      TANDEM_RETURN_IF_ERROR(
          kc::attention_paged(qq, aa, T, c.num_heads, kv, bt, b.max_blocks_per_seq, seq, ctx, scale));
      TANDEM_RETURN_IF_ERROR(kc::linear(aa, L.o, oo, T, qd, H));
      TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(h, oo, L.post_norm, mi, T, H, eps));
      TANDEM_RETURN_IF_ERROR(kc::fill_zero(mo, th * sizeof(float)));
      if (L.is_moe) {
        TANDEM_RETURN_IF_ERROR(experts(L, mi, T, mo));
      } else {
        // A dense MLP is a grouped SwiGLU with one expert holding every row.
        const int32_t dense_offsets[2] = {0, static_cast<int32_t>(T)};
        const int64_t F = c.dense_intermediate;
        TANDEM_ASSIGN_OR_RETURN(float* sc, grow<float>(scratch, static_cast<size_t>(3 * T * F), "mlp scratch"));
        TANDEM_RETURN_IF_ERROR(kc::grouped_swiglu_host_offsets(mi, mo, dense_offsets, 1, &L.dense, H, F, sc));
      }
    }
    if (R == 0) return kc::synchronize();
    TANDEM_ASSIGN_OR_RETURN(float* nr, grow<float>(normed, th, "final normed hidden"));
    TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(h, mo, final_norm, nr, T, H, eps));
    TANDEM_ASSIGN_OR_RETURN(const int32_t* rows, upload_vector(logits_rows, b.logits_rows, "logits rows"));
    TANDEM_ASSIGN_OR_RETURN(float* sel, grow<float>(selected, static_cast<size_t>(R * H), "logits rows hidden"));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(nr, rows, sel, R, H));
    TANDEM_ASSIGN_OR_RETURN(float* lg, grow<float>(logits, host_logits.size(), "logits"));
    TANDEM_RETURN_IF_ERROR(kc::linear(sel, lm_head, lg, R, H, c.vocab_size));
    return kc::copy_to_host(host_logits.data(), lg, host_logits.size() * sizeof(float));
  }
};

CudaModelRunner::CudaModelRunner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaModelRunner::~CudaModelRunner() = default;

Result<std::unique_ptr<CudaModelRunner>> CudaModelRunner::create(const model::ModelConfig& config,
                                                                 const model::ModelWeights& weights,
                                                                 const KvCacheShape& kv) {
  if (kv.num_layers != config.num_layers || kv.kv_heads != config.num_kv_heads || kv.head_dim != config.head_dim)
    return invalid_argument("CUDA runner: KV cache shape (" + std::to_string(kv.num_layers) + " layers, " +
                            std::to_string(kv.kv_heads) + " KV heads of " + std::to_string(kv.head_dim) +
                            ") does not match the model");
  if (kv.num_blocks <= 0 || kv.block_size <= 0) return invalid_argument("CUDA runner: empty KV cache");
  TANDEM_RETURN_IF_ERROR(kc::device_count().status().with_context("CUDA runner"));
  auto impl = std::make_unique<Impl>(config, kv);
  TANDEM_RETURN_IF_ERROR(impl->load(weights).with_context("CUDA runner"));
  return std::unique_ptr<CudaModelRunner>(new CudaModelRunner(std::move(impl)));
}

Status CudaModelRunner::forward(const ForwardBatch& batch, std::vector<float>& logits) {
  return impl_->forward(batch, logits).with_context("CUDA forward");
}

size_t CudaModelRunner::device_bytes() const { return impl_->device_bytes; }

}  // namespace tandem::engine
