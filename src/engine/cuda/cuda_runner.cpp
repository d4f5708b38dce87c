#include "tandem/engine/cuda_runner.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <string>
#include <cstring>
#include <map>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "tandem/common/dtype.h"
#include "tandem/common/logging.h"
#include "tandem/kernels/cuda.h"

namespace tandem::engine {

namespace kc = tandem::kernels::cuda;

namespace {

// What the activation type T implies: its KV cache and expert weight structs.
template <typename T>
struct Types;
template <>
struct Types<float> {
  using Kv = kernels::PagedKv;
  using Experts = kernels::ExpertWeights;
};
template <>
struct Types<kc::Bf16> {
  using Kv = kc::PagedKvBf16;
  using Experts = kc::ExpertWeightsBf16;
};

template <typename T>
struct DeviceLayer {
  const T *input_norm = nullptr, *post_norm = nullptr;
  const T *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  bool is_moe = true;
  const T* router = nullptr;
  // Host array of device pointers, as grouped_swiglu wants; null for experts
  // this runner does not hold (they never get rows).
  std::vector<typename Types<T>::Experts> experts;
  // The same table in device memory, for grouped_swiglu_device; null unless
  // the runner runs ExpertGemm::kDevice.
  const typename Types<T>::Experts* experts_device = nullptr;
  typename Types<T>::Experts dense;
};

// Bumped whenever a runner buffer moves: captured CUDA graphs hold device
// pointers, so a graph is replayed only in the generation it was captured in.
std::atomic<uint64_t> g_buffer_generation{0};

// A device buffer that grows to the largest size asked of it.
template <typename T>
Result<T*> grow(kc::DeviceBuffer& b, size_t count, const char* what) {
  const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
  if (b.size() < bytes) {
    g_buffer_generation.fetch_add(1, std::memory_order_relaxed);
    b = kc::DeviceBuffer();  // free first: the old contents are not needed
    TANDEM_ASSIGN_OR_RETURN(b, kc::DeviceBuffer::allocate(bytes, what));
  }
  return b.as<T>();
}

Status grow_pinned(kc::PinnedBuffer& b, size_t bytes, const char* what) {
  if (b.size() >= std::max<size_t>(bytes, 1)) return Status::ok();
  b = kc::PinnedBuffer();
  TANDEM_ASSIGN_OR_RETURN(b, kc::PinnedBuffer::allocate(std::max<size_t>(bytes, 1), what));
  return Status::ok();
}

// One forward batch's description in device memory: packed on the host into
// one pinned buffer and uploaded with one copy (stream-ordered; the pinned
// buffer is rewritten only at the next upload, after the step's logits have
// come back, which synchronises the stream).
struct DeviceBatch {
  kc::PinnedBuffer staged;
  kc::DeviceBuffer packed;
  const ForwardBatch* host = nullptr;
  const int32_t *tokens = nullptr, *positions = nullptr, *seq_of_token = nullptr, *ctx_len = nullptr,
                *block_tables = nullptr, *logits_rows = nullptr;
  const int64_t* slots = nullptr;

  Status upload(const ForwardBatch& b) {
    host = &b;
    // slots (8-byte) first, so every part stays aligned.
    const std::array<const std::vector<int32_t>*, 6> parts = {&b.tokens, &b.positions, &b.seq_of_token,
                                                              &b.ctx_len, &b.block_tables, &b.logits_rows};
    size_t bytes = b.slots.size() * sizeof(int64_t);
    for (const auto* v : parts) bytes += v->size() * sizeof(int32_t);
    TANDEM_RETURN_IF_ERROR(grow_pinned(staged, bytes, "staged batch"));
    TANDEM_ASSIGN_OR_RETURN(std::byte * dev, grow<std::byte>(packed, bytes, "batch description"));
    auto* at = staged.as<std::byte>();
    std::memcpy(at, b.slots.data(), b.slots.size() * sizeof(int64_t));
    slots = reinterpret_cast<const int64_t*>(dev);
    size_t off = b.slots.size() * sizeof(int64_t);
    const int32_t** out[] = {&tokens, &positions, &seq_of_token, &ctx_len, &block_tables, &logits_rows};
    for (size_t i = 0; i < parts.size(); ++i) {
      std::memcpy(at + off, parts[i]->data(), parts[i]->size() * sizeof(int32_t));
      *out[i] = reinterpret_cast<const int32_t*>(dev + off);
      off += parts[i]->size() * sizeof(int32_t);
    }
    return kc::copy_to_device(dev, at, bytes);
  }
  int64_t num_tokens() const { return host->num_tokens(); }
};

// The residual stream of one batch (or micro-batch) between layers. `acc`
// (FP32) is where routed experts' outputs are summed; `ffn()` is the layer's
// feed-forward output in T that the next norm adds into `hidden` (for FP32 the
// same memory as acc).
template <typename T>
struct DeviceStream {
  kc::DeviceBuffer hidden, moe_in, acc, ffn_buf, moe_in_f32;

  Status reserve(int64_t n, int64_t H) {
    const size_t th = static_cast<size_t>(n * H);
    TANDEM_RETURN_IF_ERROR(grow<T>(hidden, th, "hidden").status());
    TANDEM_RETURN_IF_ERROR(grow<T>(moe_in, th, "moe input").status());
    TANDEM_RETURN_IF_ERROR(grow<float>(acc, th, "expert sum").status());
    if constexpr (!std::is_same_v<T, float>) TANDEM_RETURN_IF_ERROR(grow<T>(ffn_buf, th, "ffn output").status());
    return Status::ok();
  }
  // BF16 only: moe_in in FP32 for the expert exchange, per micro-batch so a
  // device-resident executor may still be reading it when the next one's is made.
  Status reserve_f32_in(int64_t n, int64_t H) {
    return grow<float>(moe_in_f32, static_cast<size_t>(n * H), "moe input (FP32)").status();
  }
  float* in_f32() const { return moe_in_f32.as<float>(); }
  T* h() const { return hidden.as<T>(); }
  T* in() const { return moe_in.as<T>(); }
  float* sum() const { return acc.as<float>(); }
  T* ffn() const {
    if constexpr (std::is_same_v<T, float>) return acc.as<float>();
    else return ffn_buf.as<T>();
  }
  // The experts' FP32 sum becomes the layer's FFN output.
  Status sum_to_ffn(int64_t n, int64_t H) const {
    if constexpr (std::is_same_v<T, float>) return Status::ok();
    else return kc::convert(sum(), ffn(), n * H);
  }
};

// Where a micro-batch's routed tokens meet the host for the expert executor
// (FP32, the wire format).
struct HostStage {
  kc::PinnedBuffer moe_in, topk_idx, topk_w, out;

  Status reserve(int64_t n, int64_t H, int64_t K) {
    TANDEM_RETURN_IF_ERROR(grow_pinned(moe_in, static_cast<size_t>(n * H) * sizeof(float), "staged moe input"));
    TANDEM_RETURN_IF_ERROR(grow_pinned(topk_idx, static_cast<size_t>(n * K) * sizeof(int32_t), "staged top-k ids"));
    TANDEM_RETURN_IF_ERROR(grow_pinned(topk_w, static_cast<size_t>(n * K) * sizeof(float), "staged top-k weights"));
    return grow_pinned(out, static_cast<size_t>(n * H) * sizeof(float), "staged expert output");
  }
};

}  // namespace

// The runner's interface over its two activation types.
struct CudaModelRunner::Impl : ForwardStages {
  virtual Status load(const model::ModelWeights& w) = 0;
  virtual Status forward(const ForwardBatch& b, std::vector<float>& host_logits) = 0;
  virtual Status forward_split(const ForwardBatch& b, const std::vector<uint8_t>& greedy,
                               std::vector<float>& host_logits, std::vector<int32_t>& tokens) = 0;
  virtual Status host_experts(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w,
                              float* out) = 0;
  virtual Result<const float*> device_experts(int64_t layer, const float* x, int64_t n, const int32_t* ids,
                                              const float* w) = 0;
  size_t device_bytes = 0;
  uint64_t graph_launches = 0;
  uint64_t whole_layer_graph_launches = 0;
  uint64_t device_expert_layers = 0;
};

namespace {

template <typename T>
struct Runner final : CudaModelRunner::Impl {
  using Kv = typename Types<T>::Kv;
  const model::ModelConfig& c;
  KvCacheShape kv_shape;  // num_blocks 0: no KV cache (an expert node)
  std::vector<kc::DeviceBuffer> owned;
  std::unordered_map<const float*, const T*> uploaded;  // host tensor -> its device copy
  bool has_attention = false;    // embeddings, attention and head are on the device
  bool has_all_experts = false;  // every expert of every MoE layer is on the device

  const T *embed = nullptr, *final_norm = nullptr, *lm_head = nullptr;
  const float* inv_freq = nullptr;
  std::vector<DeviceLayer<T>> layers;
  kc::DeviceBuffer k_cache, v_cache, inv_freq_buf;

  // Scratch of one layer, shared by whatever runs (one thread, one stream).
  kc::DeviceBuffer x, q, k, v, attn, o, gate_logits, topk_idx, topk_w, offsets, row_token, row_weight;
  kc::DeviceBuffer x_perm, y_perm, scratch, normed, selected, logits_buf, argmax_buf;
  kc::DeviceBuffer expert_tables;  // every MoE layer's experts_device

  // Captured per-layer work (the attention, or the whole layer), keyed by what
  // it covers, layer, batch and stream slots and shape.
  enum class Captured { kAttention, kWholeLayer };
  using GraphKey = std::tuple<Captured, int64_t, const DeviceBatch*, const DeviceStream<T>*, int64_t, int64_t>;
  struct GraphEntry {
    uint64_t generation = ~uint64_t{0};
    bool warmed = false;  // ran eagerly once in this generation
    kc::Graph graph;
  };
  bool use_graphs = false;
  ExpertGemm expert_gemm = ExpertGemm::kPerExpert;  // CudaRunnerOptions::experts
  std::map<GraphKey, GraphEntry> graphs;

  // The colocated forward's batch and residual stream.
  DeviceBatch batch;
  DeviceStream<T> stream;

  // The pipeline stages' micro-batches.
  const std::vector<ForwardBatch>* mbs = nullptr;
  std::vector<DeviceBatch> mb_batches;
  std::vector<DeviceStream<T>> mb_streams;
  std::vector<HostStage> mb_stages;
  bool device_exchange_ = false;  // this step's expert executor is device-resident

  // An expert node's host staging: [x | row_token | row_weight] in one upload.
  kc::PinnedBuffer expert_upload;
  kc::DeviceBuffer expert_in, expert_x, expert_out;

  Runner(const model::ModelConfig& config, const KvCacheShape& kv) : c(config), kv_shape(kv) {}

  // A weight tensor in T on the device (BF16: rounded to nearest even, as
  // torch's .to(bfloat16)).
  Result<const T*> upload(const float* host, int64_t count, const std::string& what) {
    if (!host) return static_cast<const T*>(nullptr);
    if (auto it = uploaded.find(host); it != uploaded.end()) return it->second;  // tied embeddings
    const size_t bytes = static_cast<size_t>(count) * sizeof(T);
    TANDEM_ASSIGN_OR_RETURN(kc::DeviceBuffer b, kc::DeviceBuffer::allocate(bytes, what));
    if constexpr (std::is_same_v<T, float>) {
      TANDEM_RETURN_IF_ERROR(kc::copy_to_device(b.data(), host, bytes));
    } else {
      std::vector<kc::Bf16> rounded(static_cast<size_t>(count));
      for (size_t i = 0; i < rounded.size(); ++i) rounded[i].bits = float_to_bf16(host[i]);
      // Returns once `rounded` may go (a copy from pageable memory).
      TANDEM_RETURN_IF_ERROR(kc::copy_to_device(b.data(), rounded.data(), bytes));
    }
    const T* d = b.template as<T>();
    device_bytes += b.size();
    owned.push_back(std::move(b));
    uploaded.emplace(host, d);
    return d;
  }

  Status load(const model::ModelWeights& w) override {
    const int64_t H = c.hidden_size, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
    const int64_t E = c.moe.num_experts, I = c.moe.expert_intermediate, V = c.vocab_size;
    has_attention = w.embed_tokens != nullptr;
    has_all_experts = true;
    TANDEM_ASSIGN_OR_RETURN(embed, upload(w.embed_tokens, V * H, "embed_tokens"));
    TANDEM_ASSIGN_OR_RETURN(final_norm, upload(w.final_norm, H, "final norm"));
    TANDEM_ASSIGN_OR_RETURN(lm_head, upload(w.lm_head, V * H, "lm_head"));
    // RoPE frequencies stay FP32 whatever T is.
    const std::vector<float> freq = c.rope.inv_freq(D);
    TANDEM_ASSIGN_OR_RETURN(float* f, grow<float>(inv_freq_buf, freq.size(), "rope inv_freq"));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_device(f, freq.data(), freq.size() * sizeof(float)));
    TANDEM_RETURN_IF_ERROR(kc::synchronize());
    inv_freq = f;
    for (size_t l = 0; l < w.layers.size(); ++l) {
      const model::LayerWeights& L = w.layers[l];
      const std::string at = "layer " + std::to_string(l) + " ";
      if (L.attn.q_bias || L.attn.k_bias || L.attn.v_bias)
        return unimplemented(at + "has attention biases (Qwen2-MoE): the CUDA runner does not add biases yet");
      if (L.shared.loaded())
        return unimplemented(at + "has a shared expert (Qwen2-MoE): the CUDA runner does not run it yet");
      DeviceLayer<T> d;
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
          const model::FfnWeights& fw = L.experts[static_cast<size_t>(e)];
          if (!fw.loaded()) {
            has_all_experts = false;
            continue;
          }
          auto& xw = d.experts[static_cast<size_t>(e)];
          const std::string name = at + "expert " + std::to_string(e);
          TANDEM_ASSIGN_OR_RETURN(xw.gate, upload(fw.gate, I * H, name + " gate"));
          TANDEM_ASSIGN_OR_RETURN(xw.up, upload(fw.up, I * H, name + " up"));
          TANDEM_ASSIGN_OR_RETURN(xw.down, upload(fw.down, H * I, name + " down"));
        }
      } else {
        const int64_t F = c.dense_intermediate;
        TANDEM_ASSIGN_OR_RETURN(d.dense.gate, upload(L.dense.gate, F * H, at + "mlp gate"));
        TANDEM_ASSIGN_OR_RETURN(d.dense.up, upload(L.dense.up, F * H, at + "mlp up"));
        TANDEM_ASSIGN_OR_RETURN(d.dense.down, upload(L.dense.down, H * F, at + "mlp down"));
      }
      layers.push_back(std::move(d));
    }
    if (expert_gemm == ExpertGemm::kDevice) TANDEM_RETURN_IF_ERROR(upload_expert_tables());
    if (kv_shape.num_blocks > 0) {
      const size_t per_layer = static_cast<size_t>(kv_shape.num_blocks * kv_shape.block_size * kv_shape.kv_heads *
                                                   kv_shape.head_dim) * sizeof(T);
      TANDEM_ASSIGN_OR_RETURN(k_cache, kc::DeviceBuffer::allocate(per_layer * kv_shape.num_layers, "KV cache (K)"));
      TANDEM_ASSIGN_OR_RETURN(v_cache, kc::DeviceBuffer::allocate(per_layer * kv_shape.num_layers, "KV cache (V)"));
      device_bytes += k_cache.size() + v_cache.size();
    }
    return kc::synchronize();
  }

  // One device table of expert pointers per MoE layer, in one allocation.
  Status upload_expert_tables() {
    using X = typename Types<T>::Experts;
    const auto E = static_cast<size_t>(c.moe.num_experts);
    std::vector<X> host(layers.size() * E);
    for (size_t l = 0; l < layers.size(); ++l)
      if (layers[l].is_moe) std::copy(layers[l].experts.begin(), layers[l].experts.end(), host.begin() + l * E);
    TANDEM_ASSIGN_OR_RETURN(X * d, grow<X>(expert_tables, host.size(), "expert pointer tables"));
    TANDEM_RETURN_IF_ERROR(kc::copy_to_device(d, host.data(), host.size() * sizeof(X)));
    for (size_t l = 0; l < layers.size(); ++l)
      if (layers[l].is_moe) layers[l].experts_device = d + l * E;
    return Status::ok();
  }

  // Whether n tokens' routed rows go to grouped_swiglu_device.
  bool device_experts_for(const DeviceLayer<T>& L, int64_t n) const {
    return L.experts_device != nullptr && n * c.moe.top_k <= kDeviceExpertRowsPerExpert * c.moe.num_experts;
  }

  Kv cache_of(int64_t layer) const {
    const int64_t per_layer = kv_shape.num_blocks * kv_shape.block_size * kv_shape.kv_heads * kv_shape.head_dim;
    return {k_cache.as<T>() + layer * per_layer, v_cache.as<T>() + layer * per_layer, kv_shape.num_blocks,
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
  Status attention(int64_t l, const DeviceBatch& b, DeviceStream<T>& s) {
    if (!use_graphs || !is_decode(b)) return attention_eager(l, b, s);
    return graphed(GraphKey{Captured::kAttention, l, &b, &s, b.num_tokens(), b.host->max_blocks_per_seq},
                   [&] { return attention_eager(l, b, s); });
  }

  // Decode: every sequence brings one token, so the shapes (tokens, block-table
  // width) repeat step after step and a layer's attention can be replayed.
  static bool is_decode(const DeviceBatch& b) {
    const ForwardBatch& h = *b.host;
    return h.max_blocks_per_seq > 0 &&
           h.num_tokens() == static_cast<int64_t>(h.block_tables.size()) / h.max_blocks_per_seq;
  }

  // A layer's work as a CUDA graph: seen once in this buffer generation, it
  // runs eagerly (which also sizes every buffer it uses); seen again, it is
  // captured and from then on replayed. Any failure to capture turns graphs
  // off for this runner, with one log line, and the work runs eagerly.
  template <typename Work>
  Status graphed(const GraphKey& key, const Work& work) {
    const uint64_t gen = g_buffer_generation.load(std::memory_order_relaxed);
    GraphEntry& e = graphs[key];
    if (e.generation == gen && !e.graph.empty()) return launch(key, e.graph);
    if (e.generation != gen || !e.warmed) {
      e = GraphEntry{};
      e.generation = gen;
      e.warmed = true;
      return work();
    }
    auto g = kc::Graph::capture([&] { return work(); });
    if (!g.is_ok() || g_buffer_generation.load(std::memory_order_relaxed) != gen) {
      TANDEM_LOG_WARN("CUDA graphs off for this runner: capturing layer {} failed: {}", std::get<1>(key),
                      g.is_ok() ? "a buffer moved during capture" : g.status().message());
      use_graphs = false;
      graphs.clear();
      return work();
    }
    e.graph = std::move(g).value();
    return launch(key, e.graph);
  }

  Status launch(const GraphKey& key, const kc::Graph& graph) {
    ++graph_launches;
    if (std::get<0>(key) == Captured::kWholeLayer) ++whole_layer_graph_launches;
    return graph.launch();
  }

  Status attention_eager(int64_t l, const DeviceBatch& b, DeviceStream<T>& s) {
    const int64_t n = b.num_tokens(), H = c.hidden_size, D = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
    const DeviceLayer<T>& L = layers[static_cast<size_t>(l)];
    TANDEM_ASSIGN_OR_RETURN(T * xn, grow<T>(x, static_cast<size_t>(n * H), "normed hidden"));
    TANDEM_ASSIGN_OR_RETURN(T * qq, grow<T>(q, static_cast<size_t>(n * qd), "q"));
    TANDEM_ASSIGN_OR_RETURN(T * kk, grow<T>(k, static_cast<size_t>(n * kvd), "k"));
    TANDEM_ASSIGN_OR_RETURN(T * vv, grow<T>(v, static_cast<size_t>(n * kvd), "v"));
    TANDEM_ASSIGN_OR_RETURN(T * aa, grow<T>(attn, static_cast<size_t>(n * qd), "attention output"));
    TANDEM_ASSIGN_OR_RETURN(T * oo, grow<T>(o, static_cast<size_t>(n * H), "o_proj output"));
    const float eps = static_cast<float>(c.rms_norm_eps);
    const float rope_scaling = static_cast<float>(c.rope.attention_scaling);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    if (l == 0)
      TANDEM_RETURN_IF_ERROR(kc::rmsnorm(s.h(), L.input_norm, xn, n, H, eps));
    else
      TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(s.h(), s.ffn(), L.input_norm, xn, n, H, eps));
    TANDEM_RETURN_IF_ERROR(kc::linear(xn, L.q, qq, n, H, qd));
    TANDEM_RETURN_IF_ERROR(kc::linear(xn, L.k, kk, n, H, kvd));
    TANDEM_RETURN_IF_ERROR(kc::linear(xn, L.v, vv, n, H, kvd));
    if (L.q_norm) {
      TANDEM_RETURN_IF_ERROR(kc::rmsnorm(qq, L.q_norm, qq, n * c.num_heads, D, eps));
      TANDEM_RETURN_IF_ERROR(kc::rmsnorm(kk, L.k_norm, kk, n * c.num_kv_heads, D, eps));
    }
    TANDEM_RETURN_IF_ERROR(kc::rope_neox(qq, b.positions, inv_freq, n, c.num_heads, D, D, rope_scaling));
    TANDEM_RETURN_IF_ERROR(kc::rope_neox(kk, b.positions, inv_freq, n, c.num_kv_heads, D, D, rope_scaling));
    const Kv kv = cache_of(l);
    TANDEM_RETURN_IF_ERROR(kc::kv_cache_write(kk, vv, b.slots, n, kv));
    TANDEM_RETURN_IF_ERROR(kc::attention_paged(qq, aa, n, c.num_heads, kv, b.block_tables, b.host->max_blocks_per_seq,
                                               b.seq_of_token, b.ctx_len, scale));
    TANDEM_RETURN_IF_ERROR(kc::linear(aa, L.o, oo, n, qd, H));
    return kc::add_rmsnorm(s.h(), oo, L.post_norm, s.in(), n, H, eps);
  }

  // Router: top-k ids/weights of moe_in into the shared topk buffers. The
  // logits are FP32 whatever T is.
  Status route(const DeviceLayer<T>& L, const T* in, int64_t n) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k;
    TANDEM_ASSIGN_OR_RETURN(float* logits_d, grow<float>(gate_logits, static_cast<size_t>(n * E), "router logits"));
    TANDEM_RETURN_IF_ERROR(kc::linear(in, L.router, logits_d, n, H, E));
    TANDEM_ASSIGN_OR_RETURN(int32_t * idx, grow<int32_t>(topk_idx, static_cast<size_t>(n * K), "top-k ids"));
    TANDEM_ASSIGN_OR_RETURN(float* wts, grow<float>(topk_w, static_cast<size_t>(n * K), "top-k weights"));
    kernels::GateParams p;
    p.num_experts = E;
    p.top_k = K;
    p.scoring = c.moe.scoring == model::RouterScoring::kSigmoid ? kernels::GateScoring::kSigmoid
                                                                : kernels::GateScoring::kSoftmax;
    p.renormalize = c.moe.norm_topk_prob;
    p.routed_scaling = c.moe.routed_scaling;
    p.n_group = c.moe.n_group;
    p.topk_group = c.moe.topk_group;
    return kc::moe_gate_topk(logits_d, idx, wts, n, p);
  }

  // sum [n, H] += Σ w·expert(in) over `rows` permuted rows (row_token,
  // row_weight on the device) grouped by expert offsets: `device_offsets` for
  // grouped_swiglu_device (nothing comes to the host), else `host_offsets`
  // for the cuBLAS paths.
  Status run_grouped(const DeviceLayer<T>& L, const T* in, const int32_t* host_offsets,
                     const int32_t* device_offsets, int64_t rows, const int32_t* rt, const float* rw, float* sum) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, I = c.moe.expert_intermediate;
    TANDEM_ASSIGN_OR_RETURN(T * xp, grow<T>(x_perm, static_cast<size_t>(rows * H), "permuted tokens"));
    TANDEM_ASSIGN_OR_RETURN(T * yp, grow<T>(y_perm, static_cast<size_t>(rows * H), "expert outputs"));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(in, rt, xp, rows, H));
    if (device_offsets) {
      TANDEM_ASSIGN_OR_RETURN(T * sc, grow<T>(scratch, static_cast<size_t>(rows * I), "expert scratch"));
      TANDEM_RETURN_IF_ERROR(kc::grouped_swiglu_device(xp, yp, device_offsets, E, L.experts_device, H, I, rows, sc));
      ++device_expert_layers;
    } else if (expert_gemm == ExpertGemm::kBatched) {
      TANDEM_RETURN_IF_ERROR(kc::grouped_swiglu_batched(xp, yp, host_offsets, E, L.experts.data(), H, I));
    } else {
      int64_t max_rows = 1;
      for (int64_t e = 0; e < E; ++e) max_rows = std::max<int64_t>(max_rows, host_offsets[e + 1] - host_offsets[e]);
      TANDEM_ASSIGN_OR_RETURN(T * sc, grow<T>(scratch, static_cast<size_t>(3 * max_rows * I), "expert scratch"));
      TANDEM_RETURN_IF_ERROR(kc::grouped_swiglu_host_offsets(xp, yp, host_offsets, E, L.experts.data(), H, I, sc));
    }
    return kc::scatter_add_weighted(yp, rt, rw, sum, rows, H);
  }

  // The stream's FFN output = Σ_k w·expert_k(moe_in) with the routing in the
  // topk buffers, every expert on this device (colocated).
  Status local_experts(const DeviceLayer<T>& L, DeviceStream<T>& s, int64_t n) {
    const int64_t E = c.moe.num_experts, K = c.moe.top_k, H = c.hidden_size, rows = n * K;
    TANDEM_ASSIGN_OR_RETURN(int32_t * offs, grow<int32_t>(offsets, static_cast<size_t>(E + 1), "expert offsets"));
    TANDEM_ASSIGN_OR_RETURN(int32_t * rt, grow<int32_t>(row_token, static_cast<size_t>(rows), "row tokens"));
    TANDEM_ASSIGN_OR_RETURN(float* rw, grow<float>(row_weight, static_cast<size_t>(rows), "row weights"));
    TANDEM_RETURN_IF_ERROR(kc::moe_permute(topk_idx.as<int32_t>(), topk_w.as<float>(), n, K, E, offs, rt, rw));
    const bool on_device = device_experts_for(L, n);
    std::vector<int32_t> host_offsets;
    if (!on_device) {
      // cuBLAS takes each expert's row count from the host.
      host_offsets.resize(static_cast<size_t>(E + 1));
      TANDEM_RETURN_IF_ERROR(kc::copy_to_host(host_offsets.data(), offs, host_offsets.size() * sizeof(int32_t)));
    }
    TANDEM_RETURN_IF_ERROR(kc::fill_zero(s.sum(), static_cast<size_t>(n * H) * sizeof(float)));
    TANDEM_RETURN_IF_ERROR(
        run_grouped(L, s.in(), host_offsets.data(), on_device ? offs : nullptr, rows, rt, rw, s.sum()));
    return s.sum_to_ffn(n, H);
  }

  // A dense MLP is a grouped SwiGLU with one expert holding every row; it
  // writes the FFN output directly.
  Status dense_mlp(const DeviceLayer<T>& L, DeviceStream<T>& s, int64_t n) {
    const int32_t dense_offsets[2] = {0, static_cast<int32_t>(n)};
    const int64_t F = c.dense_intermediate;
    TANDEM_ASSIGN_OR_RETURN(T * sc, grow<T>(scratch, static_cast<size_t>(3 * n * F), "mlp scratch"));
    return kc::grouped_swiglu_host_offsets(s.in(), s.ffn(), dense_offsets, 1, &L.dense, c.hidden_size, F, sc);
  }

  // logits [R, vocab] on the device (FP32): final norm over hidden + the last
  // layer's FFN output, for the batch's logits rows. Null when R is 0.
  Result<float*> device_logits(const DeviceBatch& b, DeviceStream<T>& s) {
    const int64_t n = b.num_tokens(), H = c.hidden_size;
    const int64_t R = static_cast<int64_t>(b.host->logits_rows.size());
    if (R == 0) return static_cast<float*>(nullptr);
    TANDEM_ASSIGN_OR_RETURN(T * nr, grow<T>(normed, static_cast<size_t>(n * H), "final normed hidden"));
    TANDEM_RETURN_IF_ERROR(kc::add_rmsnorm(s.h(), s.ffn(), final_norm, nr, n, H, static_cast<float>(c.rms_norm_eps)));
    TANDEM_ASSIGN_OR_RETURN(T * sel, grow<T>(selected, static_cast<size_t>(R * H), "logits rows hidden"));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(nr, b.logits_rows, sel, R, H));
    TANDEM_ASSIGN_OR_RETURN(float* lg, grow<float>(logits_buf, static_cast<size_t>(R * c.vocab_size), "logits"));
    TANDEM_RETURN_IF_ERROR(kc::linear(sel, lm_head, lg, R, H, c.vocab_size));
    return lg;
  }

  // logits [R, vocab] into host memory. Synchronises the stream.
  Status head(const DeviceBatch& b, DeviceStream<T>& s, float* host_logits) {
    TANDEM_ASSIGN_OR_RETURN(float* lg, device_logits(b, s));
    if (!lg) return kc::synchronize();
    const size_t count = b.host->logits_rows.size() * static_cast<size_t>(c.vocab_size);
    return kc::copy_to_host(host_logits, lg, count * sizeof(float));
  }

  // The same rows split (SplitForwardFn): greedy[r] rows as their argmax in
  // tokens[r], computed on the device (for every row: the caller resets the
  // others to -1), the others' logits appended to `packed`, adjacent rows in
  // one copy. The copies go to pageable memory, so they hold the host until
  // done; the caller still synchronises the stream before reading.
  Status head_split(const DeviceBatch& b, DeviceStream<T>& s, const uint8_t* greedy, std::vector<float>& packed,
                    size_t& packed_rows, int32_t* tokens) {
    TANDEM_ASSIGN_OR_RETURN(float* lg, device_logits(b, s));
    if (!lg) return Status::ok();
    const auto R = static_cast<int64_t>(b.host->logits_rows.size());
    const auto V = static_cast<size_t>(c.vocab_size);
    if (std::any_of(greedy, greedy + R, [](uint8_t g) { return g != 0; })) {
      TANDEM_ASSIGN_OR_RETURN(int32_t * ids, grow<int32_t>(argmax_buf, static_cast<size_t>(R), "argmax tokens"));
      TANDEM_RETURN_IF_ERROR(kc::argmax_rows(lg, R, c.vocab_size, ids));
      TANDEM_RETURN_IF_ERROR(kc::copy_to_host_async(tokens, ids, static_cast<size_t>(R) * sizeof(int32_t)));
    }
    // `packed` was sized for every row that is not greedy before any copy.
    for (int64_t r = 0; r < R;) {
      if (greedy[r]) {
        ++r;
        continue;
      }
      int64_t end = r + 1;
      while (end < R && !greedy[end]) ++end;
      const auto rows = static_cast<size_t>(end - r);
      TANDEM_RETURN_IF_ERROR(kc::copy_to_host_async(packed.data() + packed_rows * V, lg + static_cast<size_t>(r) * V,
                                                    rows * V * sizeof(float)));
      packed_rows += rows;
      r = end;
    }
    return Status::ok();
  }

  // After head_split's copies: rows that are not greedy carry -1.
  static void clear_sampled_tokens(const std::vector<uint8_t>& greedy, std::vector<int32_t>& tokens) {
    for (size_t r = 0; r < greedy.size(); ++r)
      if (!greedy[r]) tokens[r] = -1;
  }

  // Sizes the split outputs for `greedy` (one entry per logits row of the step).
  Status prepare_split(size_t rows, const std::vector<uint8_t>& greedy, std::vector<float>& packed,
                       std::vector<int32_t>& tokens) const {
    if (greedy.size() != rows)
      return invalid_argument("split logits: " + std::to_string(greedy.size()) + " greedy flags for " +
                              std::to_string(rows) + " logits rows");
    const auto sampled = static_cast<size_t>(std::count(greedy.begin(), greedy.end(), uint8_t{0}));
    packed.assign(sampled * static_cast<size_t>(c.vocab_size), 0.0f);
    tokens.assign(rows, -1);
    return Status::ok();
  }

  Status forward(const ForwardBatch& b, std::vector<float>& host_logits) override {
    host_logits.assign(b.logits_rows.size() * static_cast<size_t>(c.vocab_size), 0.0f);
    TANDEM_RETURN_IF_ERROR(forward_layers(b));
    if (b.num_tokens() == 0) return Status::ok();
    return head(batch, stream, host_logits.data());
  }

  Status forward_split(const ForwardBatch& b, const std::vector<uint8_t>& greedy, std::vector<float>& host_logits,
                       std::vector<int32_t>& tokens) override {
    TANDEM_RETURN_IF_ERROR(prepare_split(b.logits_rows.size(), greedy, host_logits, tokens));
    TANDEM_RETURN_IF_ERROR(forward_layers(b));
    if (b.num_tokens() == 0) return Status::ok();
    size_t packed_rows = 0;
    TANDEM_RETURN_IF_ERROR(head_split(batch, stream, greedy.data(), host_logits, packed_rows, tokens.data()));
    TANDEM_RETURN_IF_ERROR(kc::synchronize());
    clear_sampled_tokens(greedy, tokens);
    return Status::ok();
  }

  // The colocated forward up to the final norm: every layer of `b` on the
  // runner's own batch and stream.
  Status forward_layers(const ForwardBatch& b) {
    TANDEM_RETURN_IF_ERROR(need_attention("the colocated forward"));
    if (!has_all_experts)
      return failed_precondition("the colocated forward needs every expert; this runner holds a slice of them");
    const int64_t n = b.num_tokens(), H = c.hidden_size;
    if (n == 0) return Status::ok();
    TANDEM_RETURN_IF_ERROR(batch.upload(b));
    TANDEM_RETURN_IF_ERROR(stream.reserve(n, H));
    TANDEM_RETURN_IF_ERROR(kc::embedding(embed, batch.tokens, stream.h(), n, H));
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const DeviceLayer<T>& L = layers[static_cast<size_t>(l)];
      // A layer with nothing to bring to the host is replayed whole.
      if (use_graphs && is_decode(batch) && (!L.is_moe || device_experts_for(L, n))) {
        TANDEM_RETURN_IF_ERROR(
            graphed(GraphKey{Captured::kWholeLayer, l, &batch, &stream, n, b.max_blocks_per_seq},
                    [&] { return colocated_layer(l, batch, stream, /*graph_attention=*/false); }));
      } else {
        TANDEM_RETURN_IF_ERROR(colocated_layer(l, batch, stream, /*graph_attention=*/true));
      }
    }
    return Status::ok();
  }

  // One layer of the colocated forward; its attention alone may be replayed
  // from a graph when the whole layer is not.
  Status colocated_layer(int64_t l, const DeviceBatch& b, DeviceStream<T>& s, bool graph_attention) {
    const DeviceLayer<T>& L = layers[static_cast<size_t>(l)];
    const int64_t n = b.num_tokens();
    TANDEM_RETURN_IF_ERROR(graph_attention ? attention(l, b, s) : attention_eager(l, b, s));
    if (!L.is_moe) return dense_mlp(L, s, n);
    TANDEM_RETURN_IF_ERROR(route(L, s.in(), n));
    return local_experts(L, s, n);
  }

  // ---- ForwardStages: an attention node's side of the ping-pong pipeline ----

  const model::ModelConfig& config() const override { return c; }
  bool layer_is_moe(int64_t layer) const override { return layers[static_cast<size_t>(layer)].is_moe; }

  Status begin(const std::vector<ForwardBatch>& micro_batches, bool device_exchange) override {
    TANDEM_RETURN_IF_ERROR(need_attention("an attention node's forward"));
    device_exchange_ = device_exchange;
    const int64_t H = c.hidden_size, K = c.moe.top_k;
    mbs = &micro_batches;
    const size_t m = micro_batches.size();
    if (mb_batches.size() < m) {
      graphs.clear();  // keyed by the addresses of the slots that move now
      mb_batches.resize(m);
      mb_streams.resize(m);
      mb_stages.resize(m);
    }
    for (size_t i = 0; i < m; ++i) {
      const int64_t n = micro_batches[i].num_tokens();
      TANDEM_RETURN_IF_ERROR(mb_batches[i].upload(micro_batches[i]));
      TANDEM_RETURN_IF_ERROR(mb_streams[i].reserve(n, H));
      TANDEM_RETURN_IF_ERROR(mb_stages[i].reserve(n, H, K));
      TANDEM_RETURN_IF_ERROR(kc::embedding(embed, mb_batches[i].tokens, mb_streams[i].h(), n, H));
    }
    return Status::ok();
  }

  Result<ExpertInputs> attend(int64_t l, size_t i) override {
    const DeviceLayer<T>& L = layers[static_cast<size_t>(l)];
    DeviceStream<T>& s = mb_streams[i];
    HostStage& st = mb_stages[i];
    const int64_t n = mb_batches[i].num_tokens(), H = c.hidden_size, K = c.moe.top_k;
    TANDEM_RETURN_IF_ERROR(attention(l, mb_batches[i], s));
    if (!L.is_moe) {
      TANDEM_RETURN_IF_ERROR(dense_mlp(L, s, n));
      return ExpertInputs{};
    }
    TANDEM_RETURN_IF_ERROR(route(L, s.in(), n));
    // The expert exchange is in FP32 (the wire format).
    const float* in_f32 = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      in_f32 = s.in();
    } else {
      TANDEM_RETURN_IF_ERROR(s.reserve_f32_in(n, H));
      TANDEM_RETURN_IF_ERROR(kc::convert(s.in(), s.in_f32(), n * H));
      in_f32 = s.in_f32();
    }
    if (device_exchange_) {
      // A GPU data plane reads moe_in and adds into the sum on this stream;
      // only the routing comes to the host.
      TANDEM_RETURN_IF_ERROR(kc::fill_zero(s.sum(), static_cast<size_t>(n * H) * sizeof(float)));
      TANDEM_RETURN_IF_ERROR(
          kc::copy_to_host_async(st.topk_idx.data(), topk_idx.data(), static_cast<size_t>(n * K) * sizeof(int32_t)));
      TANDEM_RETURN_IF_ERROR(
          kc::copy_to_host_async(st.topk_w.data(), topk_w.data(), static_cast<size_t>(n * K) * sizeof(float)));
      TANDEM_RETURN_IF_ERROR(kc::synchronize());
      return ExpertInputs{in_f32, st.topk_idx.as<int32_t>(), st.topk_w.as<float>(), s.sum()};
    }
    TANDEM_RETURN_IF_ERROR(kc::copy_to_host_async(st.moe_in.data(), in_f32, static_cast<size_t>(n * H) * sizeof(float)));
    TANDEM_RETURN_IF_ERROR(
        kc::copy_to_host_async(st.topk_idx.data(), topk_idx.data(), static_cast<size_t>(n * K) * sizeof(int32_t)));
    TANDEM_RETURN_IF_ERROR(
        kc::copy_to_host_async(st.topk_w.data(), topk_w.data(), static_cast<size_t>(n * K) * sizeof(float)));
    // Also orders the previous layer's upload of st.out before it is zeroed.
    TANDEM_RETURN_IF_ERROR(kc::synchronize());
    std::fill_n(st.out.as<float>(), n * H, 0.0f);
    return ExpertInputs{st.moe_in.as<float>(), st.topk_idx.as<int32_t>(), st.topk_w.as<float>(), st.out.as<float>()};
  }

  Status land(int64_t l, size_t i) override {
    if (!layers[static_cast<size_t>(l)].is_moe) return Status::ok();  // the dense MLP's output is in place
    // The experts' sum becomes this micro-batch's FFN output, which the next
    // layer's input norm (or the final norm) adds into the residual stream.
    const int64_t n = mb_batches[i].num_tokens(), H = c.hidden_size;
    if (!device_exchange_)  // a GPU data plane has added into the sum on the device
      TANDEM_RETURN_IF_ERROR(kc::copy_to_device(mb_streams[i].sum(), mb_stages[i].out.data(),
                                                static_cast<size_t>(n * H) * sizeof(float)));
    return mb_streams[i].sum_to_ffn(n, H);
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

  Status logits_split(const std::vector<uint8_t>& greedy, std::vector<float>& host_logits,
                      std::vector<int32_t>& tokens) override {
    size_t rows = 0;
    for (const ForwardBatch& mb : *mbs) rows += mb.logits_rows.size();
    TANDEM_RETURN_IF_ERROR(prepare_split(rows, greedy, host_logits, tokens));
    size_t row = 0, packed_rows = 0;
    for (size_t i = 0; i < mbs->size(); ++i) {
      TANDEM_RETURN_IF_ERROR(
          head_split(mb_batches[i], mb_streams[i], greedy.data() + row, host_logits, packed_rows, tokens.data() + row));
      row += (*mbs)[i].logits_rows.size();
    }
    TANDEM_RETURN_IF_ERROR(kc::synchronize());
    clear_sampled_tokens(greedy, tokens);
    return Status::ok();
  }

  // ---- An expert node's experts ----

  // The expert side's core: the permutation over the experts this runner
  // holds is built on the host (cheap, and cuBLAS needs its sizes there
  // anyway) and uploaded in one copy, with x too when it comes from the host;
  // the sum [n, H] lands in expert_out (FP32).
  Result<float*> run_held_experts(int64_t layer, const float* x_host, const float* x_device, int64_t n,
                                  const int32_t* ids, const float* w) {
    const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k;
    const DeviceLayer<T>& L = layers[static_cast<size_t>(layer)];
    std::vector<int32_t> host_offsets(static_cast<size_t>(E + 1), 0);
    for (int64_t r = 0; r < n * K; ++r)
      if (L.experts[static_cast<size_t>(ids[r])].gate) ++host_offsets[static_cast<size_t>(ids[r]) + 1];
    for (int64_t e = 0; e < E; ++e) host_offsets[e + 1] += host_offsets[e];
    const int64_t rows = host_offsets[static_cast<size_t>(E)];
    const size_t x_bytes = static_cast<size_t>(n * H) * sizeof(float);
    const size_t x_upload = x_host ? x_bytes : 0;
    const size_t index_bytes = static_cast<size_t>(rows) * sizeof(int32_t);
    // grouped_swiglu_device takes the offsets from the device: they go up too.
    const bool on_device = device_experts_for(L, n);
    const size_t offsets_bytes = on_device ? host_offsets.size() * sizeof(int32_t) : 0;
    const size_t total = x_upload + 2 * index_bytes + offsets_bytes;
    // The previous call's upload from this buffer is complete: every call
    // ends with a synchronisation (host result) or its caller's.
    TANDEM_RETURN_IF_ERROR(grow_pinned(expert_upload, total, "staged expert input"));
    auto* bytes = expert_upload.as<std::byte>();
    if (x_host) std::memcpy(bytes, x_host, x_bytes);
    auto* rt = reinterpret_cast<int32_t*>(bytes + x_upload);
    auto* rw = reinterpret_cast<float*>(bytes + x_upload + index_bytes);
    if (on_device) std::memcpy(bytes + x_upload + 2 * index_bytes, host_offsets.data(), offsets_bytes);
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
    const float* x_f32 = x_host ? reinterpret_cast<const float*>(dev) : x_device;
    const T* x_dev = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      x_dev = x_f32;
    } else {
      TANDEM_ASSIGN_OR_RETURN(T * xc, grow<T>(expert_x, static_cast<size_t>(n * H), "expert input (BF16)"));
      TANDEM_RETURN_IF_ERROR(kc::convert(x_f32, xc, n * H));
      x_dev = xc;
    }
    TANDEM_ASSIGN_OR_RETURN(float* y, grow<float>(expert_out, static_cast<size_t>(n * H), "expert output"));
    TANDEM_RETURN_IF_ERROR(kc::fill_zero(y, x_bytes));
    const auto* rt_dev = reinterpret_cast<const int32_t*>(dev + x_upload);
    const auto* rw_dev = reinterpret_cast<const float*>(dev + x_upload + index_bytes);
    const auto* offsets_dev =
        on_device ? reinterpret_cast<const int32_t*>(dev + x_upload + 2 * index_bytes) : nullptr;
    if (rows > 0) {
      TANDEM_RETURN_IF_ERROR(run_grouped(L, x_dev, host_offsets.data(), offsets_dev, rows, rt_dev, rw_dev, y));
    }
    return y;
  }

  Status host_experts(int64_t layer, const float* xin, int64_t n, const int32_t* ids, const float* w,
                      float* out) override {
    if (n == 0) return Status::ok();
    TANDEM_ASSIGN_OR_RETURN(float* y, run_held_experts(layer, xin, nullptr, n, ids, w));
    return kc::copy_to_host(out, y, static_cast<size_t>(n * c.hidden_size) * sizeof(float));
  }

  Result<const float*> device_experts(int64_t layer, const float* x, int64_t n, const int32_t* ids,
                                      const float* w) override {
    TANDEM_ASSIGN_OR_RETURN(float* y, run_held_experts(layer, nullptr, x, n, ids, w));
    return static_cast<const float*>(y);
  }
};

template <typename T>
std::unique_ptr<CudaModelRunner::Impl> make_runner(const model::ModelConfig& config, const KvCacheShape& kv,
                                                   const CudaRunnerOptions& options) {
  auto r = std::make_unique<Runner<T>>(config, kv);
  r->use_graphs = options.cuda_graphs;
  r->expert_gemm = options.experts;
  return r;
}

Result<std::unique_ptr<CudaModelRunner::Impl>> make_impl(const model::ModelConfig& config, const KvCacheShape& kv,
                                                        const CudaRunnerOptions& options) {
  if (options.dtype == DType::kF32) return make_runner<float>(config, kv, options);
  if (options.dtype == DType::kBF16) return make_runner<kc::Bf16>(config, kv, options);
  return invalid_argument("CUDA runner: dtype " + std::string(dtype_name(options.dtype)) + " (F32 or BF16 only)");
}

}  // namespace

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
                                                                 const KvCacheShape& kv,
                                                                 const CudaRunnerOptions& options) {
  if (kv.num_layers != config.num_layers || kv.kv_heads != config.num_kv_heads || kv.head_dim != config.head_dim)
    return invalid_argument("CUDA runner: KV cache shape (" + std::to_string(kv.num_layers) + " layers, " +
                            std::to_string(kv.kv_heads) + " KV heads of " + std::to_string(kv.head_dim) +
                            ") does not match the model");
  if (kv.num_blocks <= 0 || kv.block_size <= 0) return invalid_argument("CUDA runner: empty KV cache");
  if (!weights.embed_tokens) return invalid_argument("CUDA runner: the weights hold no attention side");
  TANDEM_RETURN_IF_ERROR(kc::device_count().status().with_context("CUDA runner"));
  TANDEM_ASSIGN_OR_RETURN(auto impl, make_impl(config, kv, options));
  TANDEM_RETURN_IF_ERROR(impl->load(weights).with_context("CUDA runner"));
  return std::unique_ptr<CudaModelRunner>(new CudaModelRunner(std::move(impl)));
}

Result<std::unique_ptr<CudaModelRunner>> CudaModelRunner::create_expert_side(const model::ModelConfig& config,
                                                                             const model::ModelWeights& weights,
                                                                             const CudaRunnerOptions& options) {
  TANDEM_RETURN_IF_ERROR(kc::device_count().status().with_context("CUDA expert runner"));
  TANDEM_ASSIGN_OR_RETURN(
      auto impl, make_impl(config, KvCacheShape{config.num_layers, 0, 0, config.num_kv_heads, config.head_dim},
                           options));
  TANDEM_RETURN_IF_ERROR(impl->load(weights).with_context("CUDA expert runner"));
  return std::unique_ptr<CudaModelRunner>(new CudaModelRunner(std::move(impl)));
}

Status CudaModelRunner::forward(const ForwardBatch& batch, std::vector<float>& logits) {
  return impl_->forward(batch, logits).with_context("CUDA forward");
}

Status CudaModelRunner::forward_split(const ForwardBatch& batch, const std::vector<uint8_t>& greedy,
                                      std::vector<float>& logits, std::vector<int32_t>& tokens) {
  return impl_->forward_split(batch, greedy, logits, tokens).with_context("CUDA forward");
}

ForwardStages& CudaModelRunner::stages() { return *impl_; }

Status CudaModelRunner::experts(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w,
                                float* out) {
  return impl_->host_experts(layer, x, n, ids, w, out).with_context("CUDA experts of layer " + std::to_string(layer));
}

Result<const float*> CudaModelRunner::experts_device(int64_t layer, const float* x, int64_t n, const int32_t* ids,
                                                     const float* w) {
  auto y = impl_->device_experts(layer, x, n, ids, w);
  if (!y.is_ok()) return y.status().with_context("CUDA experts of layer " + std::to_string(layer));
  return y;
}

size_t CudaModelRunner::device_bytes() const { return impl_->device_bytes; }
uint64_t CudaModelRunner::graph_launches() const { return impl_->graph_launches; }
uint64_t CudaModelRunner::whole_layer_graph_launches() const { return impl_->whole_layer_graph_launches; }
uint64_t CudaModelRunner::device_expert_layers() const { return impl_->device_expert_layers; }

std::string_view expert_gemm_name(ExpertGemm g) {
  switch (g) {
    case ExpertGemm::kPerExpert: return "per-expert";
    case ExpertGemm::kBatched: return "batched";
    case ExpertGemm::kDevice: return "device";
  }
  return "?";
}

Result<ExpertGemm> parse_expert_gemm(std::string_view name) {
  for (ExpertGemm g : {ExpertGemm::kPerExpert, ExpertGemm::kBatched, ExpertGemm::kDevice})
    if (name == expert_gemm_name(g)) return g;
  return invalid_argument("expert GEMM \"" + std::string(name) + "\": expected per-expert, batched or device");
}

}  // namespace tandem::engine
