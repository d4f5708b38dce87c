#include "tandem/engine/cuda_runner.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <cstring>
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

// One forward batch's description in device memory.
struct DeviceBatch {
  kc::DeviceBuffer tokens, positions, seq_of_token, slots, ctx_len, block_tables, logits_rows;
  const ForwardBatch* host = nullptr;

  // Six small uploads; stream-ordered, so the buffers may be re-filled for the
  // next step without waiting.
  Status upload(const ForwardBatch& b) {
    host = &b;
    TANDEM_RETURN_IF_ERROR(upload_vector(tokens, b.tokens, "token ids").status());
    TANDEM_RETURN_IF_ERROR(upload_vector(positions, b.positions, "positions").status());
    TANDEM_RETURN_IF_ERROR(upload_vector(seq_of_token, b.seq_of_token, "sequence of token").status());
    TANDEM_RETURN_IF_ERROR(upload_vector(slots, b.slots, "KV slots").status());
    TANDEM_RETURN_IF_ERROR(upload_vector(ctx_len, b.ctx_len, "context lengths").status());
    TANDEM_RETURN_IF_ERROR(upload_vector(block_tables, b.block_tables, "block tables").status());
    return upload_vector(logits_rows, b.logits_rows, "logits rows").status();
  }
  int64_t num_tokens() const { return host->num_tokens(); }
};

// The residual stream of one batch (or micro-batch) between layers.
struct DeviceStream {
  kc::DeviceBuffer hidden, moe_in, moe_out;

  Status reserve(int64_t T, int64_t H) {
    const size_t th = static_cast<size_t>(T * H);
    TANDEM_RETURN_IF_ERROR(grow<float>(hidden, th, "hidden").status());
    TANDEM_RETURN_IF_ERROR(grow<float>(moe_in, th, "moe input").status());
    return grow<float>(moe_out, th, "moe output").status();
  }
  float* h() const { return hidden.as<float>(); }
  float* in() const { return moe_in.as<float>(); }
  float* out() const { return moe_out.as<float>(); }
};

// Where a micro-batch's routed tokens meet the host for the expert executor.
struct HostStage {
  kc::PinnedBuffer moe_in, topk_idx, topk_w, out;

  Status reserve(int64_t T, int64_t H, int64_t K) {
    TANDEM_RETURN_IF_ERROR(grow_pinned(moe_in, static_cast<size_t>(T * H) * sizeof(float), "staged moe input"));
    TANDEM_RETURN_IF_ERROR(grow_pinned(topk_idx, static_cast<size_t>(T * K) * sizeof(int32_t), "staged top-k ids"));
    TANDEM_RETURN_IF_ERROR(grow_pinned(topk_w, static_cast<size_t>(T * K) * sizeof(float), "staged top-k weights"));
    return grow_pinned(out, static_cast<size_t>(T * H) * sizeof(float), "staged expert output");
  }
  static Status grow_pinned(kc::PinnedBuffer& b, size_t bytes, const char* what) {
    if (b.size() >= std::max<size_t>(bytes, 1)) return Status::ok();
    b = kc::PinnedBuffer();
    TANDEM_ASSIGN_OR_RETURN(b, kc::PinnedBuffer::allocate(std::max<size_t>(bytes, 1), what));
    return Status::ok();
  }
};

}  // namespace

struct CudaModelRunner::Impl final : ForwardStages {
  const model::ModelConfig& c;
  KvCacheShape kv_shape;  // num_blocks 0: no KV cache (an expert node)
  std::vector<kc::DeviceBuffer> owned;
  std::unordered_map<const float*, const float*> uploaded;  // host tensor -> its device copy
  size_t device_bytes = 0;
  bool has_attention = false;    // embeddings, attention and head are on the device
  bool has_all_experts = false;  // every expert of every MoE layer is on the device

  const float *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr, *inv_freq = nullptr;
  std::vector<DeviceLayer> layers;
  kc::DeviceBuffer k_cache, v_cache;

  // Scratch of one layer, shared by whatever runs (one thread, one stream).
  kc::DeviceBuffer x, q, k, v, attn, o, gate_logits, topk_idx, topk_w;
  kc::DeviceBuffer offsets, row_token, row_weight, x_perm, y_perm, scratch, normed, selected, logits_buf;

  // The colocated forward's batch and residual stream.
  DeviceBatch batch;
  DeviceStream stream;

  // The pipeline stages' micro-batches.
  const std::vector<ForwardBatch>* mbs = nullptr;
  std::vector<DeviceBatch> mb_batches;
  std::vector<DeviceStream> mb_streams;
  std::vector<HostStage> mb_stages;

  // An expert node's host staging: [x | row_token | row_weight] in one upload.
  kc::PinnedBuffer expert_upload;
  kc::DeviceBuffer expert_in, expert_out;

  Impl(const model::ModelConfig& config, const KvCacheShape& kv) : c(config), kv_shape(kv) {}

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
    has_attention = w.embed_tokens != nullptr;
    has_all_experts = true;
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
        // Experts this process does not hold stay null: they never get rows.
        d.experts.resize(static_cast<size_t>(E));
        for (int64_t e = 0; e < E; ++e) {
          const model::FfnWeights& f = L.experts[static_cast<size_t>(e)];
          if (!f.loaded()) {
            has_all_experts = false;
            continue;
          }
          auto& xw = d.experts[static_cast<size_t>(e)];
          const std::string name = at + "expert " + std::to_string(e);
          TANDEM_ASSIGN_OR_RETURN(xw.gate, upload(f.gate, I * H, name + " gate"));
          TANDEM_ASSIGN_OR_RETURN(xw.up, upload(f.up, I * H, name + " up"));
          TANDEM_ASSIGN_OR_RETURN(xw.down, upload(f.down, H * I, name + " down"));
        }
      } else {
        const int64_t F = c.dense_intermediate;
        TANDEM_ASSIGN_OR_RETURN(d.dense.gate, upload(L.dense.gate, F * H, at + "mlp gate"));
        TANDEM_ASSIGN_OR_RETURN(d.dense.up, upload(L.dense.up, F * H, at + "mlp up"));
        TANDEM_ASSIGN_OR_RETURN(d.dense.down, upload(L.dense.down, H * F, at + "mlp down"));
      }
      layers.push_back(std::move(d));
    }
    if (kv_shape.num_blocks > 0) {
      const size_t per_layer = static_cast<size_t>(kv_shape.num_blocks * kv_shape.block_size * kv_shape.kv_heads *
                                                   kv_shape.head_dim) * sizeof(float);
      TANDEM_ASSIGN_OR_RETURN(k_cache, kc::DeviceBuffer::allocate(per_layer * kv_shape.num_layers, "KV cache (K)"));
      TANDEM_ASSIGN_OR_RETURN(v_cache, kc::DeviceBuffer::allocate(per_layer * kv_shape.num_layers, "KV cache (V)"));
      device_bytes += k_cache.size() + v_cache.size();
    }
    return kc::synchronize();
  }

  kernels::PagedKv cache_of(int64_t layer) const {
    const int64_t per_layer = kv_shape.num_blocks * kv_shape.block_size * kv_shape.kv_heads * kv_shape.head_dim;
    return {k_cache.as<float>() + layer * per_layer, v_cache.as<float>() + layer * per_layer, kv_shape.num_blocks,
            kv_shape.block_size, kv_shape.kv_heads, kv_shape.head_dim};
  }

  Status need_attention(const char* what) const {
    if (!has_attention || kv_shape.num_blocks == 0)
      return failed_precondition(std::string(what) + " needs the attention-side weights and a KV cache; this runner has " +
                                 (has_attention ? "no KV cache" : "only experts"));
    return Status::ok();
  }

  // hidden += (previous layer's FFN output, for l > 0); then attention; then
  // hidden += attention output and moe_in = post_attention_norm(hidden). The
  // previous FFN output joins the residual stream here, fused with this
  // layer's input norm (the CPU runner adds, then normalises).
  Status attention(int64_t l, const DeviceBatch& b, DeviceStream& s) {
    const int64_t T = b.num_tokens(), H = c.hidden_size, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
    const DeviceLayer& L = layers[static_cast<size_t>(l)];
    TANDEM_ASSIGN_OR_RETURN(float* xn, grow<float>(x, static_cast<size_t>(T * H), "normed hidden"));
    TANDEM_ASSIGN_OR_RETURN(float* qq, grow<float>(q, static_cast<size_t>(T * qd), "q"));
    TANDEM_ASSIGN_OR_RETURN(float* kk, grow<float>(k, static_cast<size_t>(T * kvd), "k"));
    TANDEM_ASSIGN_OR_RETURN(float* vv, grow<float>(v, static_cast<size_t>(T * kvd), "v"));
    TANDEM_ASSIGN_OR_RETURN(float* aa, grow<float>(attn, static_cast<size_t>(T * qd), "attention output"));
    TANDEM_ASSIGN_OR_RETURN(float* oo, grow<float>(o, static_cast<size_t>(T * H), "o_proj output"));
    const float eps = static_cast<float>(c.rms_norm_eps);
    const float rope_scaling = static_cast<float>(c.rope.attention_scaling);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const auto* pos = b.positions.as<int32_t>();
    if (l == 0)
      TANDEM_RETURN_IF_ERROR(kc::rmsnorm(s.h(), L.input_norm, xn, T, H, eps));
    else
      TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(s.h(), s.out(), L.input_norm, xn, T, H, eps));
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
    TANDEM_RETURN_IF_ERROR(kc::kv_cache_write(kk, vv, b.slots.as<int64_t>(), T, kv));
    TANDEM_RETURN_IF_ERROR(kc::attention_paged(qq, aa, T, c.num_heads, kv, b.block_tables.as<int32_t>(),
                                               b.host->max_blocks_per_seq, b.seq_of_token.as<int32_t>(),
                                               b.ctx_len.as<int32_t>(), scale));
    TANDEM_RETURN_IF_ERROR(kc::linear(aa, L.o, oo, T, qd, H));
    return kc::add_rmsnorm(s.h(), oo, L.post_norm, s.in(), T, H, eps);
  }

  // Router: top-k ids/weights of moe_in into the shared topk buffers.
  Status route(const DeviceLayer& L, const float* in, int64_t T) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k;
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
    return kc::moe_gate_topk(logits_d, idx, wts, T, p);
  }

  // out [T, H] += Σ w·expert(in) over `rows` permuted rows (row_token,
  // row_weight on the device) grouped by the host offsets.
  Status run_grouped(const DeviceLayer& L, const float* in, const int32_t* host_offsets, int64_t rows,
                     const int32_t* rt, const float* rw, float* out) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, I = c.moe.expert_intermediate;
    int64_t max_rows = 1;
    for (int64_t e = 0; e < E; ++e) max_rows = std::max<int64_t>(max_rows, host_offsets[e + 1] - host_offsets[e]);
    TANDEM_ASSIGN_OR_RETURN(float* xp, grow<float>(x_perm, static_cast<size_t>(rows * H), "permuted tokens"));
    TANDEM_ASSIGN_OR_RETURN(float* yp, grow<float>(y_perm, static_cast<size_t>(rows * H), "expert outputs"));
    TANDEM_ASSIGN_OR_RETURN(float* sc, grow<float>(scratch, static_cast<size_t>(3 * max_rows * I), "expert scratch"));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(in, rt, xp, rows, H));
    TANDEM_RETURN_IF_ERROR(kc::grouped_swiglu_host_offsets(xp, yp, host_offsets, E, L.experts.data(), H, I, sc));
    return kc::scatter_add_weighted(yp, rt, rw, out, rows, H);
  }

  // out [T, H] += Σ_k w·expert_k(in) with the routing in the topk buffers,
  // every expert on this device (colocated).
  Status local_experts(const DeviceLayer& L, const float* in, int64_t T, float* out) {
    const int64_t E = c.moe.num_experts, K = c.moe.top_k, rows = T * K;
    TANDEM_ASSIGN_OR_RETURN(int32_t* offs, grow<int32_t>(offsets, static_cast<size_t>(E + 1), "expert offsets"));
    TANDEM_ASSIGN_OR_RETURN(int32_t* rt, grow<int32_t>(row_token, static_cast<size_t>(rows), "row tokens"));
    TANDEM_ASSIGN_OR_RETURN(float* rw, grow<float>(row_weight, static_cast<size_t>(rows), "row weights"));
    TANDEM_RETURN_IF_ERROR(kc::moe_permute(topk_idx.as<int32_t>(), topk_w.as<float>(), T, K, E, offs, rt, rw));
    // cuBLAS takes each expert's row count from the host.
    std::vector<int32_t> host_offsets(static_cast<size_t>(E + 1));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_host(host_offsets.data(), offs, host_offsets.size() * sizeof(int32_t)));
    return run_grouped(L, in, host_offsets.data(), rows, rt, rw, out);
  }

  // A dense MLP is a grouped SwiGLU with one expert holding every row.
  Status dense_mlp(const DeviceLayer& L, const float* in, int64_t T, float* out) {
    const int32_t dense_offsets[2] = {0, static_cast<int32_t>(T)};
    const int64_t F = c.dense_intermediate;
    TANDEM_ASSIGN_OR_RETURN(float* sc, grow<float>(scratch, static_cast<size_t>(3 * T * F), "mlp scratch"));
    return kc::grouped_swiglu_host_offsets(in, out, dense_offsets, 1, &L.dense, c.hidden_size, F, sc);
  }

  // logits [R, vocab] into host memory: final norm over hidden + the last
  // layer's FFN output, for the batch's logits rows.
  Status head(const DeviceBatch& b, DeviceStream& s, float* host_logits) {
    const int64_t T = b.num_tokens(), H = c.hidden_size;
    const int64_t R = static_cast<int64_t>(b.host->logits_rows.size());
    if (R == 0) return Status::ok();
    TANDEM_ASSIGN_OR_RETURN(float* nr, grow<float>(normed, static_cast<size_t>(T * H), "final normed hidden"));
    TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(s.h(), s.out(), final_norm, nr, T, H, static_cast<float>(c.rms_norm_eps)));
    TANDEM_ASSIGN_OR_RETURN(float* sel, grow<float>(selected, static_cast<size_t>(R * H), "logits rows hidden"));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(nr, b.logits_rows.as<int32_t>(), sel, R, H));
    const size_t count = static_cast<size_t>(R * c.vocab_size);
    TANDEM_ASSIGN_OR_RETURN(float* lg, grow<float>(logits_buf, count, "logits"));
    TANDEM_RETURN_IF_ERROR(kc::linear(sel, lm_head, lg, R, H, c.vocab_size));
    return kc::copy_to_host(host_logits, lg, count * sizeof(float));
  }

  Status forward(const ForwardBatch& b, std::vector<float>& host_logits) {
    TANDEM_RETURN_IF_ERROR(need_attention("the colocated forward"));
    if (!has_all_experts)
      return failed_precondition("the colocated forward needs every expert; this runner holds a slice of them");
    const int64_t T = b.num_tokens(), H = c.hidden_size;
    host_logits.assign(b.logits_rows.size() * static_cast<size_t>(c.vocab_size), 0.0f);
    if (T == 0) return Status::ok();
    TANDEM_RETURN_IF_ERROR(batch.upload(b));
    TANDEM_RETURN_IF_ERROR(stream.reserve(T, H));
    TANDEM_RETURN_IF_ERROR(kc::embedding(embed, batch.tokens.as<int32_t>(), stream.h(), T, H));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const DeviceLayer& L = layers[static_cast<size_t>(l)];
      TANDEM_RETURN_IF_ERROR(attention(l, batch, stream));
      TANDEM_RETURN_IF_ERROR(kc::fill_zero(stream.out(), static_cast<size_t>(T * H) * sizeof(float)));
      if (L.is_moe) {
        TANDEM_RETURN_IF_ERROR(route(L, stream.in(), T));
        TANDEM_RETURN_IF_ERROR(local_experts(L, stream.in(), T, stream.out()));
      } else {
        TANDEM_RETURN_IF_ERROR(dense_mlp(L, stream.in(), T, stream.out()));
      }
    }
    if (b.logits_rows.empty()) return kc::synchronize();
    return head(batch, stream, host_logits.data());
  }

  // ---- ForwardStages: an attention node's side of the ping-pong pipeline ----

  const model::ModelConfig& config() const override { return c; }
  bool layer_is_moe(int64_t layer) const override { return layers[static_cast<size_t>(layer)].is_moe; }

  Status begin(const std::vector<ForwardBatch>& micro_batches) override {
    TANDEM_RETURN_IF_ERROR(need_attention("an attention node's forward"));
    const int64_t H = c.hidden_size, K = c.moe.top_k;
    mbs = &micro_batches;
    const size_t m = micro_batches.size();
    if (mb_batches.size() < m) {
      mb_batches.resize(m);
      mb_streams.resize(m);
      mb_stages.resize(m);
    }
    for (size_t i = 0; i < m; ++i) {
      const int64_t T = micro_batches[i].num_tokens();
      TANDEM_RETURN_IF_ERROR(mb_batches[i].upload(micro_batches[i]));
      TANDEM_RETURN_IF_ERROR(mb_streams[i].reserve(T, H));
      TANDEM_RETURN_IF_ERROR(mb_stages[i].reserve(T, H, K));
      TANDEM_RETURN_IF_ERROR(kc::embedding(embed, mb_batches[i].tokens.as<int32_t>(), mb_streams[i].h(), T, H));
    }
    return Status::ok();
  }

  Result<ExpertInputs> attend(int64_t l, size_t i) override {
    const DeviceLayer& L = layers[static_cast<size_t>(l)];
    DeviceStream& s = mb_streams[i];
    HostStage& st = mb_stages[i];
    const int64_t T = mb_batches[i].num_tokens(), H = c.hidden_size, K = c.moe.top_k;
    TANDEM_RETURN_IF_ERROR(attention(l, mb_batches[i], s));
    if (!L.is_moe) {
      TANDEM_RETURN_IF_ERROR(kc::fill_zero(s.out(), static_cast<size_t>(T * H) * sizeof(float)));
      TANDEM_RETURN_IF_ERROR(dense_mlp(L, s.in(), T, s.out()));
      return ExpertInputs{};
    }
    TANDEM_RETURN_IF_ERROR(route(L, s.in(), T));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_host_async(st.moe_in.data(), s.in(), static_cast<size_t>(T * H) * sizeof(float)));
    TANDEM_RETURN_IF_ERROR(
        kc::copy_to_host_async(st.topk_idx.data(), topk_idx.data(), static_cast<size_t>(T * K) * sizeof(int32_t)));
    TANDEM_RETURN_IF_ERROR(
        kc::copy_to_host_async(st.topk_w.data(), topk_w.data(), static_cast<size_t>(T * K) * sizeof(float)));
    // Also orders the previous layer's upload of st.out before it is zeroed.
    TANDEM_RETURN_IF_ERROR(kc::synchronize());
    std::fill_n(st.out.as<float>(), T * H, 0.0f);
    return ExpertInputs{st.moe_in.as<float>(), st.topk_idx.as<int32_t>(), st.topk_w.as<float>(), st.out.as<float>()};
  }

  Status land(int64_t l, size_t i) override {
    if (!layers[static_cast<size_t>(l)].is_moe) return Status::ok();  // the dense MLP's output is in place
    // The experts' sum becomes this micro-batch's FFN output, which the next
    // layer's input norm (or the final norm) adds into the residual stream.
    const int64_t T = mb_batches[i].num_tokens();
    return kc::copy_to_device(mb_streams[i].out(), mb_stages[i].out.data(),
                              static_cast<size_t>(T * c.hidden_size) * sizeof(float));
  }

  Status logits(std::vector<float>& host_logits) override {
    size_t rows = 0;
    for (const ForwardBatch& mb : *mbs) rows += mb.logits_rows.size();
    host_logits.resize(rows * static_cast<size_t>(c.vocab_size));
    size_t row = 0;
    for (size_t i = 0; i < mbs->size(); ++i) {
      TANDEM_RETURN_IF_ERROR(head(mb_batches[i], mb_streams[i], host_logits.data() + row * c.vocab_size));
      row += (*mbs)[i].logits_rows.size();
    }
    return kc::synchronize();
  }

  // ---- An expert node's experts ----

  Status host_experts(int64_t layer, const float* xin, int64_t n, const int32_t* ids, const float* w, float* out) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k;
    const DeviceLayer& L = layers[static_cast<size_t>(layer)];
    if (n == 0) return Status::ok();
    // The permutation is cheap and its sizes are needed on the host anyway
    // (cuBLAS): build it here, over the experts this runner holds.
    std::vector<int32_t> host_offsets(static_cast<size_t>(E + 1), 0);
    for (int64_t r = 0; r < n * K; ++r)
      if (L.experts[static_cast<size_t>(ids[r])].gate) ++host_offsets[static_cast<size_t>(ids[r]) + 1];
    for (int64_t e = 0; e < E; ++e) host_offsets[e + 1] += host_offsets[e];
    const int64_t rows = host_offsets[static_cast<size_t>(E)];
    const size_t x_bytes = static_cast<size_t>(n * H) * sizeof(float);
    const size_t index_bytes = static_cast<size_t>(rows) * sizeof(int32_t);
    const size_t total = x_bytes + 2 * index_bytes;
    TANDEM_RETURN_IF_ERROR(HostStage::grow_pinned(expert_upload, total, "staged expert input"));
    auto* bytes = expert_upload.as<std::byte>();
    std::memcpy(bytes, xin, x_bytes);
    auto* rt = reinterpret_cast<int32_t*>(bytes + x_bytes);
    auto* rw = reinterpret_cast<float*>(bytes + x_bytes + index_bytes);
    std::vector<int32_t> fill(host_offsets.begin(), host_offsets.end() - 1);
    for (int64_t r = 0; r < n * K; ++r) {
      const auto e = static_cast<size_t>(ids[r]);
      if (!L.experts[e].gate) continue;
      const int32_t at = fill[e]++;
      rt[at] = static_cast<int32_t>(r / K);
      rw[at] = w[r];
    }
    TANDEM_ASSIGN_OR_RETURN(std::byte * dev, grow<std::byte>(expert_in, total, "expert input"));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_device(dev, bytes, total));
    TANDEM_ASSIGN_OR_RETURN(float* y, grow<float>(expert_out, static_cast<size_t>(n * H), "expert output"));
    TANDEM_RETURN_IF_ERROR(kc::fill_zero(y, x_bytes));
    if (rows > 0)
      TANDEM_RETURN_IF_ERROR(run_grouped(L, reinterpret_cast<const float*>(dev), host_offsets.data(), rows,
                                         reinterpret_cast<const int32_t*>(dev + x_bytes),
                                         reinterpret_cast<const float*>(dev + x_bytes + index_bytes), y));
    return kc::copy_to_host(out, y, x_bytes);
  }
};

Result<int> use_cuda_device(int slot) {
  TANDEM_ASSIGN_OR_RETURN(const int count, kc::device_count());
  const int ordinal = slot % count;
  TANDEM_RETURN_IF_ERROR(kc::set_device(ordinal));
  return ordinal;
}

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
  if (!weights.embed_tokens) return invalid_argument("CUDA runner: the weights hold no attention side");
  TANDEM_RETURN_IF_ERROR(kc::device_count().status().with_context("CUDA runner"));
  auto impl = std::make_unique<Impl>(config, kv);
  TANDEM_RETURN_IF_ERROR(impl->load(weights).with_context("CUDA runner"));
  return std::unique_ptr<CudaModelRunner>(new CudaModelRunner(std::move(impl)));
}

Result<std::unique_ptr<CudaModelRunner>> CudaModelRunner::create_expert_side(const model::ModelConfig& config,
                                                                             const model::ModelWeights& weights) {
  TANDEM_RETURN_IF_ERROR(kc::device_count().status().with_context("CUDA expert runner"));
  auto impl = std::make_unique<Impl>(config, KvCacheShape{config.num_layers, 0, 0, config.num_kv_heads, config.head_dim});
  TANDEM_RETURN_IF_ERROR(impl->load(weights).with_context("CUDA expert runner"));
  return std::unique_ptr<CudaModelRunner>(new CudaModelRunner(std::move(impl)));
}

Status CudaModelRunner::forward(const ForwardBatch& batch, std::vector<float>& logits) {
  return impl_->forward(batch, logits).with_context("CUDA forward");
}

ForwardStages& CudaModelRunner::stages() { return *impl_; }

Status CudaModelRunner::experts(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w,
                                float* out) {
  return impl_->host_experts(layer, x, n, ids, w, out).with_context("CUDA experts of layer " + std::to_string(layer));
}

size_t CudaModelRunner::device_bytes() const { return impl_->device_bytes; }

}  // namespace tandem::engine
