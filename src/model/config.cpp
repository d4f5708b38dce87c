#include "tandem/model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace tandem::model {

using nlohmann::json;

std::string_view architecture_name(Architecture a) {
  switch (a) {
    case Architecture::kMixtral: return "MixtralForCausalLM";
    case Architecture::kQwen2Moe: return "Qwen2MoeForCausalLM";
    case Architecture::kQwen3Moe: return "Qwen3MoeForCausalLM";
  }
  return "?";
}

std::vector<float> RopeConfig::inv_freq(int64_t rot_dim) const {
  std::vector<float> f(static_cast<size_t>(rot_dim / 2));
  // HF computes 1 / theta^(arange(0, d, 2) / d) in float32 from an int64 arange.
  for (int64_t i = 0; i < rot_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rot_dim);
    f[static_cast<size_t>(i)] = 1.0f / std::pow(static_cast<float>(theta), exponent);
  }
  return f;
}

namespace {

// Reads typed fields from the config object; every error names the file and key.
class Fields {
 public:
  Fields(const json& j, const std::string& source) : j_(j), source_(source) {}

  Status error(const std::string& key, const std::string& what) const {
    return invalid_argument(source_ + ": key '" + key + "': " + what);
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  Result<int64_t> integer(const std::string& key) const {
    if (!has(key)) return error(key, "missing (required)");
    const json& v = j_.at(key);
    if (!v.is_number_integer()) return error(key, "expected an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  Result<int64_t> integer(const std::string& key, int64_t dflt) const {
    return has(key) ? integer(key) : Result<int64_t>(dflt);
  }
  Result<int64_t> positive(const std::string& key) const {
    TANDEM_ASSIGN_OR_RETURN(int64_t v, integer(key));
    if (v <= 0) return error(key, "must be positive, got " + std::to_string(v));
    return v;
  }
  Result<double> number(const std::string& key, double dflt) const {
    if (!has(key)) return dflt;
    const json& v = j_.at(key);
    if (!v.is_number()) return error(key, "expected a number, got " + v.dump());
    return v.get<double>();
  }
  Result<bool> boolean(const std::string& key, bool dflt) const {
    if (!has(key)) return dflt;
    const json& v = j_.at(key);
    if (!v.is_boolean()) return error(key, "expected true/false, got " + v.dump());
    return v.get<bool>();
  }

 private:
  const json& j_;
  const std::string& source_;
};

Result<RopeConfig> parse_rope(const json& j, const Fields& f, const std::string& source) {
  RopeConfig rope;
  // transformers v5 writes rope_parameters; older files a top-level rope_theta and rope_scaling.
  if (f.has("rope_parameters")) {
    const json& rp = j.at("rope_parameters");
    if (!rp.is_object()) return f.error("rope_parameters", "expected an object");
    if (rp.contains("rope_type")) rope.type = rp.at("rope_type").get<std::string>();
    if (rp.contains("rope_theta")) {
      if (!rp.at("rope_theta").is_number()) return f.error("rope_parameters.rope_theta", "expected a number");
      rope.theta = rp.at("rope_theta").get<double>();
    }
  } else {
    TANDEM_ASSIGN_OR_RETURN(rope.theta, f.number("rope_theta", 10000.0));
    if (f.has("rope_scaling")) {
      const json& rs = j.at("rope_scaling");
      if (rs.contains("rope_type")) rope.type = rs.at("rope_type").get<std::string>();
      else if (rs.contains("type")) rope.type = rs.at("type").get<std::string>();
    }
  }
  if (rope.type != "default") {
    return unimplemented(source + ": RoPE type '" + rope.type +
                         "' is not supported yet (only 'default'); see config key rope_parameters/rope_scaling");
  }
  if (!(rope.theta > 0)) return f.error("rope_theta", "must be positive");
  return rope;
}

Result<std::vector<int32_t>> parse_ids(const json& v) {
  std::vector<int32_t> ids;
  if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
  else if (v.is_array())
    for (const json& e : v) {
      if (!e.is_number_integer()) return invalid_argument("token id list holds a non-integer: " + e.dump());
      ids.push_back(e.get<int32_t>());
    }
  return ids;
}

Result<ModelConfig> parse(const json& j, const std::string& source) {
  if (!j.is_object()) return invalid_argument(source + ": expected a JSON object");
  Fields f(j, source);
  ModelConfig c;

  std::string arch_name;
  if (j.contains("architectures") && j.at("architectures").is_array() && !j.at("architectures").empty())
    arch_name = j.at("architectures")[0].get<std::string>();
  c.model_type = j.value("model_type", std::string());
  if (arch_name == "MixtralForCausalLM" || (arch_name.empty() && c.model_type == "mixtral")) {
    c.arch = Architecture::kMixtral;
  } else if (arch_name == "Qwen3MoeForCausalLM" || (arch_name.empty() && c.model_type == "qwen3_moe")) {
    c.arch = Architecture::kQwen3Moe;
  } else if (arch_name == "Qwen2MoeForCausalLM" || (arch_name.empty() && c.model_type == "qwen2_moe")) {
    c.arch = Architecture::kQwen2Moe;
  } else {
    return unimplemented(source + ": architecture '" + (arch_name.empty() ? c.model_type : arch_name) +
                         "' is not supported (supported: MixtralForCausalLM, Qwen2MoeForCausalLM, "
                         "Qwen3MoeForCausalLM)");
  }

  TANDEM_ASSIGN_OR_RETURN(c.vocab_size, f.positive("vocab_size"));
  TANDEM_ASSIGN_OR_RETURN(c.hidden_size, f.positive("hidden_size"));
  TANDEM_ASSIGN_OR_RETURN(c.num_layers, f.positive("num_hidden_layers"));
  TANDEM_ASSIGN_OR_RETURN(c.num_heads, f.positive("num_attention_heads"));
  TANDEM_ASSIGN_OR_RETURN(c.num_kv_heads, f.integer("num_key_value_heads", c.num_heads));
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0)
    return f.error("num_key_value_heads", "must divide num_attention_heads (" + std::to_string(c.num_heads) +
                                              "), got " + std::to_string(c.num_kv_heads));
  if (f.has("head_dim")) {
    TANDEM_ASSIGN_OR_RETURN(c.head_dim, f.positive("head_dim"));
  } else {
    if (c.hidden_size % c.num_heads != 0)
      return f.error("head_dim", "absent and hidden_size is not a multiple of num_attention_heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) return f.error("head_dim", "must be even for RoPE");
  TANDEM_ASSIGN_OR_RETURN(c.max_position_embeddings, f.integer("max_position_embeddings", 4096));
  TANDEM_ASSIGN_OR_RETURN(double eps, f.number("rms_norm_eps", 1e-6));
  c.rms_norm_eps = static_cast<float>(eps);
  TANDEM_ASSIGN_OR_RETURN(c.rope, parse_rope(j, f, source));
  TANDEM_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.boolean("tie_word_embeddings", false));
  std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") return f.error("hidden_act", "only 'silu' is supported, got '" + act + "'");

  std::string dtype = j.contains("dtype") && j.at("dtype").is_string() ? j.at("dtype").get<std::string>()
                      : j.contains("torch_dtype") && j.at("torch_dtype").is_string()
                          ? j.at("torch_dtype").get<std::string>()
                          : "bfloat16";
  if (dtype == "float32") c.dtype = DType::kF32;
  else if (dtype == "float16") c.dtype = DType::kF16;
  else c.dtype = DType::kBF16;

  if (f.has("bos_token_id")) {
    TANDEM_ASSIGN_OR_RETURN(c.bos_token_id, f.integer("bos_token_id"));
  }
  if (f.has("eos_token_id")) {
    auto ids = parse_ids(j.at("eos_token_id"));
    if (!ids.is_ok()) return f.error("eos_token_id", ids.status().message());
    c.eos_token_ids = *ids;
  }

  MoeConfig& m = c.moe;
  c.layer_is_moe.assign(static_cast<size_t>(c.num_layers), true);
  switch (c.arch) {
    case Architecture::kMixtral: {
      TANDEM_ASSIGN_OR_RETURN(m.num_experts, f.positive("num_local_experts"));
      TANDEM_ASSIGN_OR_RETURN(m.top_k, f.positive("num_experts_per_tok"));
      TANDEM_ASSIGN_OR_RETURN(m.expert_intermediate, f.positive("intermediate_size"));
      c.dense_intermediate = m.expert_intermediate;
      m.norm_topk_prob = true;  // Mixtral always renormalizes the top-k weights
      if (f.has("sliding_window"))
        return unimplemented(source + ": key 'sliding_window': sliding-window attention is not supported yet");
      break;
    }
    case Architecture::kQwen2Moe:
    case Architecture::kQwen3Moe: {
      // Hub checkpoints say num_experts; transformers 5.x writes num_local_experts.
      TANDEM_ASSIGN_OR_RETURN(m.num_experts,
                              f.positive(f.has("num_local_experts") && !f.has("num_experts") ? "num_local_experts"
                                                                                            : "num_experts"));
      TANDEM_ASSIGN_OR_RETURN(m.top_k, f.positive("num_experts_per_tok"));
      TANDEM_ASSIGN_OR_RETURN(m.expert_intermediate, f.positive("moe_intermediate_size"));
      TANDEM_ASSIGN_OR_RETURN(c.dense_intermediate, f.integer("intermediate_size", 0));
      TANDEM_ASSIGN_OR_RETURN(m.norm_topk_prob, f.boolean("norm_topk_prob", false));
      TANDEM_ASSIGN_OR_RETURN(int64_t step, f.integer("decoder_sparse_step", 1));
      if (step <= 0) return f.error("decoder_sparse_step", "must be positive");
      std::vector<int64_t> mlp_only;
      if (f.has("mlp_only_layers")) {
        const json& v = j.at("mlp_only_layers");
        if (!v.is_array()) return f.error("mlp_only_layers", "expected a list of layer indices");
        for (const json& e : v) {
          if (!e.is_number_integer()) return f.error("mlp_only_layers", "expected integers, got " + e.dump());
          mlp_only.push_back(e.get<int64_t>());
        }
      }
      for (int64_t i = 0; i < c.num_layers; ++i) {
        bool only = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
        c.layer_is_moe[static_cast<size_t>(i)] = !only && (i + 1) % step == 0;
      }
      bool any_dense = std::find(c.layer_is_moe.begin(), c.layer_is_moe.end(), false) != c.layer_is_moe.end();
      if (any_dense && c.dense_intermediate <= 0)
        return f.error("intermediate_size", "needed (positive) because some layers are dense");
      TANDEM_ASSIGN_OR_RETURN(bool sliding, f.boolean("use_sliding_window", false));
      if (sliding) return unimplemented(source + ": key 'use_sliding_window': sliding-window attention is not supported yet");
      if (c.arch == Architecture::kQwen3Moe) {
        c.qk_norm = true;
        TANDEM_ASSIGN_OR_RETURN(c.attention_bias, f.boolean("attention_bias", false));
      } else {
        TANDEM_ASSIGN_OR_RETURN(c.attention_bias, f.boolean("qkv_bias", true));
        TANDEM_ASSIGN_OR_RETURN(m.shared_expert_intermediate, f.integer("shared_expert_intermediate_size", 0));
        m.shared_expert_gate = m.shared_expert_intermediate > 0;
      }
      break;
    }
  }
  if (m.top_k > m.num_experts)
    return f.error("num_experts_per_tok", "top-k " + std::to_string(m.top_k) + " exceeds the " +
                                              std::to_string(m.num_experts) + " experts");
  return c;
}

}  // namespace

Result<ModelConfig> ModelConfig::from_json(std::string_view text, const std::string& source) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument(source + ": not valid JSON");
  try {
    return parse(j, source);
  } catch (const json::exception& e) {
    return invalid_argument(source + ": " + e.what());
  }
}

Result<ModelConfig> ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str(), path);
}

}  // namespace tandem::model
