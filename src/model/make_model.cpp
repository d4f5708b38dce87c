#include "tandem/model/make_model.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tandem/model/safetensors.h"
#include "tandem/model/tokenizer.h"

namespace tandem::model {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Preset {
  std::string name, description, arch;
  int32_t tokenizer_vocab;
  int64_t hidden, layers, heads, kv_heads, head_dim, intermediate, experts, top_k, moe_intermediate;
  std::vector<int64_t> mlp_only_layers;
  double rope_theta, eps;
  int64_t max_positions;
};

const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = {
      {"tiny-mixtral", "Mixtral, 2 layers, hidden 64, 8 experts top-2 (~1M params) for tests", "mixtral", 1000,
       64, 2, 4, 2, 16, 128, 8, 2, 128, {}, 1e6, 1e-5, 2048},
      {"tiny-qwen3-moe", "Qwen3-MoE, 3 layers (layer 0 dense), head_dim 32, 16 experts top-4 (~1M params)",
       "qwen3_moe", 1000, 64, 3, 4, 2, 32, 128, 16, 4, 64, {0}, 1e6, 1e-6, 2048},
      {"small-mixtral", "Mixtral, 8 layers, hidden 1024, 8 experts top-2 (~230M params) for demos and benchmarks",
       "mixtral", 4000, 1024, 8, 16, 4, 64, 1024, 8, 2, 1024, {}, 1e6, 1e-5, 4096},
      {"qwen3-30b-a3b-4l",
       "Qwen3-30B-A3B shapes (hidden 2048, 32 query / 4 KV heads of 128, 128 experts of 768, top-8), 4 of its 48 "
       "layers and a small vocabulary (~2.5B params, for GPU benchmarks)",
       "qwen3_moe", 4000, 2048, 4, 32, 4, 128, 6144, 128, 8, 768, {}, 1e6, 1e-6, 4096},
  };
  return p;
}

// Deterministic per-tensor normal stream: seed and tensor name fully define the
// values, so a checkpoint is reproducible bit for bit on any machine.
class NormalStream {
 public:
  NormalStream(uint64_t seed, const std::string& name) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
    state_ = seed * 0x9e3779b97f4a7c15ull ^ h;
  }
  float next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = (static_cast<double>(bits() >> 11) + 1.0) * 0x1p-53;  // (0, 1]
    double u2 = static_cast<double>(bits() >> 11) * 0x1p-53;
    double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = static_cast<float>(r * std::sin(2 * std::numbers::pi * u2));
    has_spare_ = true;
    return static_cast<float>(r * std::cos(2 * std::numbers::pi * u2));
  }

 private:
  uint64_t bits() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
  bool has_spare_ = false;
  float spare_ = 0;
};

class TensorMaker {
 public:
  TensorMaker(uint64_t seed, DType dtype) : seed_(seed), dtype_(dtype) {}
  // mean + std * N(0, 1)
  void add(const std::string& name, std::vector<int64_t> shape, float std, float mean = 0.0f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    NormalStream rng(seed_, name);
    for (auto& x : v) x = mean + std * rng.next();
    TensorToWrite t;
    t.name = name;
    t.dtype = dtype_;
    t.shape = std::move(shape);
    t.data.resize(v.size() * dtype_size(dtype_));
    convert_from_float(dtype_, v.data(), v.size(), t.data.data());
    tensors.push_back(std::move(t));
  }
  std::vector<TensorToWrite> tensors;

 private:
  uint64_t seed_;
  DType dtype_;
};

std::string torch_dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    default: return "bfloat16";
  }
}

Status write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return unavailable(path.string() + ": cannot open for writing");
  out << text;
  out.close();
  if (!out) return unavailable(path.string() + ": write failed");
  return Status::ok();
}

std::vector<std::string> corpus_documents() {
  std::vector<std::string> docs;
  std::string_view all = builtin_tokenizer_corpus();
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\n', start);
    if (end == std::string_view::npos) end = all.size();
    if (end > start) docs.emplace_back(all.substr(start, end - start + (end < all.size() ? 1 : 0)));
    start = end + 1;
  }
  return docs;
}

}  // namespace

std::vector<PresetInfo> model_presets() {
  std::vector<PresetInfo> out;
  for (const auto& p : presets()) out.push_back({p.name, p.description});
  return out;
}

// ChatML turns, and tools in the hermes convention (Qwen's): the functions as
// JSON in the system turn, calls as <tool_call> blocks, results as
// <tool_response> blocks in a user turn; chat_template_kwargs'
// enable_thinking: false closes an empty thought after the generation prompt,
// as Qwen3's does. Plain conversations render exactly as ChatML.
// scripts/fixtures/make_chat_template_fixtures.py reads this raw string and
// renders it with Python Jinja2; tests/unit/chat_template checks the
// fixtures hold this text.
std::string_view default_chat_template() {
  return R"J({%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}
{{- messages[0].content + '\n\n' }}
{%- endif %}
{{- '# Tools\n\nFunctions you can call, as JSON signatures:\n<tools>' }}
{%- for tool in tools %}
{{- '\n' }}{{- tool | tojson }}
{%- endfor %}
{{- '\n</tools>\n\nTo call one, write its name and arguments as JSON between tags, one block per call:\n<tool_call>\n{"name": "<function name>", "arguments": {<arguments>}}\n</tool_call><|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first and tools %}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\n' + message.content }}
{%- if message.tool_calls %}
{%- for call in message.tool_calls %}
{%- if message.content or not loop.first %}
{{- '\n' }}
{%- endif %}
{%- set args = call.function.arguments %}
{{- '<tool_call>\n{"name": "' + call.function.name + '", "arguments": ' + (args if args is string else args | tojson) + '}\n</tool_call>' }}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
{{- '<|im_end|>\n' }}
{%- endif %}
{%- else %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\n\n</think>\n\n' }}
{%- endif %}
{%- endif %})J";
}

Status make_model(const MakeModelOptions& o) {
  const Preset* p = nullptr;
  for (const auto& x : presets())
    if (x.name == o.preset) p = &x;
  if (!p) {
    std::string names;
    for (const auto& x : presets()) names += (names.empty() ? "" : ", ") + x.name;
    return invalid_argument("unknown preset '" + o.preset + "' (known: " + names + ")");
  }
  if (o.out_dir.empty()) return invalid_argument("--out: an output directory is required");
  if (o.dtype != DType::kBF16 && o.dtype != DType::kF16 && o.dtype != DType::kF32)
    return invalid_argument("dtype must be F32, F16 or BF16");
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return unavailable(o.out_dir + ": cannot create directory: " + ec.message());
  const fs::path dir(o.out_dir);

  // Tokenizer first: the model's vocabulary is the tokenizer's, padded to a
  // multiple of 64 as real checkpoints do.
  BpeTrainOptions topt;
  topt.vocab_size = p->tokenizer_vocab;
  topt.special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  TANDEM_ASSIGN_OR_RETURN(std::string tok_json, train_byte_level_bpe(corpus_documents(), topt));
  TANDEM_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::from_json(tok_json));
  const int64_t vocab = (static_cast<int64_t>(tok.vocab_size()) + 63) / 64 * 64;
  const int32_t eot = *tok.token_to_id("<|endoftext|>");
  const int32_t im_end = *tok.token_to_id("<|im_end|>");
  TANDEM_RETURN_IF_ERROR(write_text(dir / "tokenizer.json", tok_json));

  json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
             {"bos_token", nullptr},
             {"eos_token", "<|im_end|>"},
             {"pad_token", "<|endoftext|>"},
             {"unk_token", nullptr},
             {"add_bos_token", false},
             {"add_eos_token", false},
             {"clean_up_tokenization_spaces", false},
             {"model_max_length", p->max_positions},
             {"chat_template", std::string(default_chat_template())}};
  TANDEM_RETURN_IF_ERROR(write_text(dir / "tokenizer_config.json", tc.dump(2)));
  json gen = {{"bos_token_id", eot}, {"eos_token_id", json::array({im_end, eot})}, {"do_sample", false}};
  TANDEM_RETURN_IF_ERROR(write_text(dir / "generation_config.json", gen.dump(2)));

  const int64_t H = p->hidden, L = p->layers, qd = p->heads * p->head_dim, kvd = p->kv_heads * p->head_dim;
  json cfg = {{"model_type", p->arch},
              {"vocab_size", vocab},
              {"hidden_size", H},
              {"num_hidden_layers", L},
              {"num_attention_heads", p->heads},
              {"num_key_value_heads", p->kv_heads},
              {"head_dim", p->head_dim},
              {"hidden_act", "silu"},
              {"max_position_embeddings", p->max_positions},
              {"rms_norm_eps", p->eps},
              {"rope_theta", p->rope_theta},
              {"initializer_range", 0.02},
              {"tie_word_embeddings", false},
              {"use_cache", true},
              {"attention_dropout", 0.0},
              {"num_experts_per_tok", p->top_k},
              {"output_router_logits", false},
              {"router_aux_loss_coef", 0.001},
              {"bos_token_id", eot},
              {"eos_token_id", im_end},
              {"torch_dtype", torch_dtype_name(o.dtype)}};
  if (p->arch == "mixtral") {
    cfg["architectures"] = {"MixtralForCausalLM"};
    cfg["intermediate_size"] = p->moe_intermediate;
    cfg["num_local_experts"] = p->experts;
    cfg["sliding_window"] = nullptr;
    cfg["router_jitter_noise"] = 0.0;
  } else {
    cfg["architectures"] = {"Qwen3MoeForCausalLM"};
    cfg["intermediate_size"] = p->intermediate;
    cfg["moe_intermediate_size"] = p->moe_intermediate;
    cfg["num_experts"] = p->experts;
    cfg["norm_topk_prob"] = true;
    cfg["decoder_sparse_step"] = 1;
    cfg["mlp_only_layers"] = p->mlp_only_layers;
    cfg["attention_bias"] = false;
    cfg["use_sliding_window"] = false;
    cfg["sliding_window"] = nullptr;
    cfg["max_window_layers"] = L;
  }
  TANDEM_RETURN_IF_ERROR(write_text(dir / "config.json", cfg.dump(2)));

  TensorMaker t(o.seed, o.dtype);
  const float inv_sqrt_h = 1.0f / std::sqrt(static_cast<float>(H));
  // Residual-branch outputs shrink with depth so the residual stream stays O(1).
  const float depth = 1.0f / std::sqrt(2.0f * static_cast<float>(L));
  t.add("model.embed_tokens.weight", {vocab, H}, 1.0f);
  t.add("model.norm.weight", {H}, 0.1f, 1.0f);
  t.add("lm_head.weight", {vocab, H}, 2.0f * inv_sqrt_h);
  for (int64_t l = 0; l < L; ++l) {
    const std::string lp = "model.layers." + std::to_string(l) + ".";
    t.add(lp + "input_layernorm.weight", {H}, 0.1f, 1.0f);
    t.add(lp + "post_attention_layernorm.weight", {H}, 0.1f, 1.0f);
    t.add(lp + "self_attn.q_proj.weight", {qd, H}, inv_sqrt_h);
    t.add(lp + "self_attn.k_proj.weight", {kvd, H}, inv_sqrt_h);
    t.add(lp + "self_attn.v_proj.weight", {kvd, H}, inv_sqrt_h);
    t.add(lp + "self_attn.o_proj.weight", {H, qd}, depth / std::sqrt(static_cast<float>(qd)));
    if (p->arch == "qwen3_moe") {
      t.add(lp + "self_attn.q_norm.weight", {p->head_dim}, 0.1f, 1.0f);
      t.add(lp + "self_attn.k_norm.weight", {p->head_dim}, 0.1f, 1.0f);
    }
    const bool dense = std::find(p->mlp_only_layers.begin(), p->mlp_only_layers.end(), l) != p->mlp_only_layers.end();
    const int64_t I = dense ? p->intermediate : p->moe_intermediate;
    const float down_std = depth / std::sqrt(static_cast<float>(I));
    auto ffn = [&](const std::string& prefix, const char* g, const char* u, const char* d) {
      t.add(prefix + g + ".weight", {I, H}, inv_sqrt_h);
      t.add(prefix + u + ".weight", {I, H}, inv_sqrt_h);
      t.add(prefix + d + ".weight", {H, I}, down_std);
    };
    if (dense) {
      ffn(lp + "mlp.", "gate_proj", "up_proj", "down_proj");
      continue;
    }
    // Router logits of O(2) give clear top-k margins.
    const std::string moe = p->arch == "mixtral" ? "block_sparse_moe." : "mlp.";
    t.add(lp + moe + "gate.weight", {p->experts, H}, 2.0f * inv_sqrt_h);
    for (int64_t e = 0; e < p->experts; ++e) {
      const std::string ep = lp + moe + "experts." + std::to_string(e) + ".";
      if (p->arch == "mixtral") ffn(ep, "w1", "w3", "w2");
      else ffn(ep, "gate_proj", "up_proj", "down_proj");
    }
  }
  return write_checkpoint_weights(o.out_dir, t.tensors, o.max_shard_bytes);
}

}  // namespace tandem::model
