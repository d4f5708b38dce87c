#include "tandem/model/weights.h"

#include <string>

namespace tandem::model {

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace

// Looks tensors up, checks shapes and produces float32 views.
class WeightBinder {
 public:
  WeightBinder(const WeightStore& store, ModelWeights& out) : store_(store), out_(out) {}

  bool has(const std::string& name) const { return store_.find(name) != nullptr; }

  Result<const float*> get(const std::string& name, std::vector<int64_t> shape) {
    const TensorInfo* t = store_.find(name);
    if (!t) return not_found("checkpoint " + store_.dir() + ": required tensor '" + name + "' is missing");
    return view(*t, 0, std::move(shape));
  }

  // A float32 view of elements [offset, offset + prod(shape)) of tensor t, whose own
  // shape was already checked by the caller.
  Result<const float*> view(const TensorInfo& t, int64_t offset, std::vector<int64_t> shape,
                            bool check_shape = true) {
    if (check_shape && t.shape != shape)
      return invalid_argument(t.file + ": tensor '" + t.name + "' has shape " + shape_str(t.shape) +
                              " but config.json implies " + shape_str(shape));
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16)
      return invalid_argument(t.file + ": tensor '" + t.name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                              "; weights must be F32, BF16 or F16");
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::byte* src = t.data + static_cast<size_t>(offset) * dtype_size(t.dtype);
    if (t.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(src) % alignof(float) == 0)
      return reinterpret_cast<const float*>(src);
    auto& buf = out_.owned_.emplace_back(static_cast<size_t>(n));
    convert_to_float(t.dtype, src, static_cast<size_t>(n), buf.data());
    return static_cast<const float*>(buf.data());
  }

  const TensorInfo* find(const std::string& name) const { return store_.find(name); }

 private:
  const WeightStore& store_;
  ModelWeights& out_;
};

namespace {

Status bind_ffn(WeightBinder& b, const std::string& prefix, const std::string& gate, const std::string& up,
                const std::string& down, int64_t hidden, int64_t inter, FfnWeights& f) {
  TANDEM_ASSIGN_OR_RETURN(f.gate, b.get(prefix + gate + ".weight", {inter, hidden}));
  TANDEM_ASSIGN_OR_RETURN(f.up, b.get(prefix + up + ".weight", {inter, hidden}));
  TANDEM_ASSIGN_OR_RETURN(f.down, b.get(prefix + down + ".weight", {hidden, inter}));
  return Status::ok();
}

Status bind_experts(WeightBinder& b, const ModelConfig& c, const std::string& lp, int64_t begin, int64_t end,
                    LayerWeights& L) {
  const int64_t E = c.moe.num_experts, H = c.hidden_size, I = c.moe.expert_intermediate;
  L.experts.assign(static_cast<size_t>(E), FfnWeights{});
  const std::string moe = c.arch == Architecture::kMixtral ? "block_sparse_moe" : "mlp";
  // transformers v5 fused layout: mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I].
  const std::string fused_gu = lp + "mlp.experts.gate_up_proj";
  if (b.has(fused_gu)) {
    const TensorInfo* gu = b.find(fused_gu);
    const TensorInfo* dn = b.find(lp + "mlp.experts.down_proj");
    if (!dn) return not_found("checkpoint: required tensor '" + lp + "mlp.experts.down_proj' is missing");
    std::vector<int64_t> want_gu{E, 2 * I, H}, want_dn{E, H, I};
    if (gu->shape != want_gu)
      return invalid_argument(gu->file + ": tensor '" + gu->name + "' has shape " + shape_str(gu->shape) +
                              " but config.json implies " + shape_str(want_gu));
    if (dn->shape != want_dn)
      return invalid_argument(dn->file + ": tensor '" + dn->name + "' has shape " + shape_str(dn->shape) +
                              " but config.json implies " + shape_str(want_dn));
    for (int64_t e = begin; e < end; ++e) {
      FfnWeights& f = L.experts[static_cast<size_t>(e)];
      TANDEM_ASSIGN_OR_RETURN(f.gate, b.view(*gu, e * 2 * I * H, {I, H}, false));
      TANDEM_ASSIGN_OR_RETURN(f.up, b.view(*gu, e * 2 * I * H + I * H, {I, H}, false));
      TANDEM_ASSIGN_OR_RETURN(f.down, b.view(*dn, e * H * I, {H, I}, false));
    }
    return Status::ok();
  }
  for (int64_t e = begin; e < end; ++e) {
    const std::string ep = lp + moe + ".experts." + std::to_string(e) + ".";
    FfnWeights& f = L.experts[static_cast<size_t>(e)];
    if (c.arch == Architecture::kMixtral) {
      TANDEM_RETURN_IF_ERROR(bind_ffn(b, ep, "w1", "w3", "w2", H, I, f));
    } else {
      TANDEM_RETURN_IF_ERROR(bind_ffn(b, ep, "gate_proj", "up_proj", "down_proj", H, I, f));
    }
  }
  return Status::ok();
}

}  // namespace

size_t ModelWeights::owned_bytes() const {
  size_t n = 0;
  for (const auto& v : owned_) n += v.size() * sizeof(float);
  return n;
}

Result<std::unique_ptr<ModelWeights>> ModelWeights::load(const ModelConfig& c, const WeightStore& store,
                                                         const LoadOptions& opt) {
  auto w = std::unique_ptr<ModelWeights>(new ModelWeights());
  WeightBinder b(store, *w);
  const int64_t H = c.hidden_size, V = c.vocab_size, D = c.head_dim;
  const int64_t E = c.moe.num_experts;
  w->expert_begin = opt.expert_begin;
  w->expert_end = opt.expert_end < 0 ? E : opt.expert_end;
  if (w->expert_begin < 0 || w->expert_begin > w->expert_end || w->expert_end > E)
    return invalid_argument("expert range [" + std::to_string(opt.expert_begin) + ", " +
                            std::to_string(opt.expert_end) + ") is outside the model's " + std::to_string(E) +
                            " experts");

  if (opt.attention_side) {
    TANDEM_ASSIGN_OR_RETURN(w->embed_tokens, b.get("model.embed_tokens.weight", {V, H}));
    TANDEM_ASSIGN_OR_RETURN(w->final_norm, b.get("model.norm.weight", {H}));
    if (b.has("lm_head.weight")) {
      TANDEM_ASSIGN_OR_RETURN(w->lm_head, b.get("lm_head.weight", {V, H}));
    } else if (c.tie_word_embeddings) {
      w->lm_head = w->embed_tokens;  // HF drops tied lm_head from the file
    } else {
      return not_found("checkpoint " + store.dir() +
                       ": required tensor 'lm_head.weight' is missing (tie_word_embeddings is false)");
    }
  }

  w->layers.resize(static_cast<size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& L = w->layers[static_cast<size_t>(l)];
    const std::string lp = "model.layers." + std::to_string(l) + ".";
    L.is_moe = c.layer_is_moe[static_cast<size_t>(l)];
    if (opt.attention_side) {
      TANDEM_ASSIGN_OR_RETURN(L.input_norm, b.get(lp + "input_layernorm.weight", {H}));
      TANDEM_ASSIGN_OR_RETURN(L.post_attention_norm, b.get(lp + "post_attention_layernorm.weight", {H}));
      const std::string ap = lp + "self_attn.";
      TANDEM_ASSIGN_OR_RETURN(L.attn.q, b.get(ap + "q_proj.weight", {c.q_dim(), H}));
      TANDEM_ASSIGN_OR_RETURN(L.attn.k, b.get(ap + "k_proj.weight", {c.kv_dim(), H}));
      TANDEM_ASSIGN_OR_RETURN(L.attn.v, b.get(ap + "v_proj.weight", {c.kv_dim(), H}));
      TANDEM_ASSIGN_OR_RETURN(L.attn.o, b.get(ap + "o_proj.weight", {H, c.q_dim()}));
      if (c.attention_bias) {
        TANDEM_ASSIGN_OR_RETURN(L.attn.q_bias, b.get(ap + "q_proj.bias", {c.q_dim()}));
        TANDEM_ASSIGN_OR_RETURN(L.attn.k_bias, b.get(ap + "k_proj.bias", {c.kv_dim()}));
        TANDEM_ASSIGN_OR_RETURN(L.attn.v_bias, b.get(ap + "v_proj.bias", {c.kv_dim()}));
      }
      if (c.qk_norm) {
        TANDEM_ASSIGN_OR_RETURN(L.attn.q_norm, b.get(ap + "q_norm.weight", {D}));
        TANDEM_ASSIGN_OR_RETURN(L.attn.k_norm, b.get(ap + "k_norm.weight", {D}));
      }
      if (L.is_moe) {
        const std::string gate = c.arch == Architecture::kMixtral && !b.has(lp + "mlp.gate.weight")
                                     ? lp + "block_sparse_moe.gate.weight"
                                     : lp + "mlp.gate.weight";
        TANDEM_ASSIGN_OR_RETURN(L.router, b.get(gate, {E, H}));
        if (c.moe.shared_expert_intermediate > 0) {
          TANDEM_RETURN_IF_ERROR(bind_ffn(b, lp + "mlp.shared_expert.", "gate_proj", "up_proj", "down_proj", H,
                                          c.moe.shared_expert_intermediate, L.shared));
          if (c.moe.shared_expert_gate) {
            TANDEM_ASSIGN_OR_RETURN(L.shared_gate, b.get(lp + "mlp.shared_expert_gate.weight", {1, H}));
          }
        }
      } else {
        TANDEM_RETURN_IF_ERROR(
            bind_ffn(b, lp + "mlp.", "gate_proj", "up_proj", "down_proj", H, c.dense_intermediate, L.dense));
      }
    }
    if (L.is_moe) {
      TANDEM_RETURN_IF_ERROR(bind_experts(b, c, lp, w->expert_begin, w->expert_end, L));
    }
  }
  return w;
}

}  // namespace tandem::model
