#include "tandem/api/deployment.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "tandem/api/yaml_reader.h"

namespace tandem::api {

namespace {

using Reader = YamlReader;

Status parse_endpoint(Reader& r, const YAML::Node& n, const std::string& path, Endpoint& e) {
  std::string s;
  TANDEM_RETURN_IF_ERROR(r.scalar(n, path, s));
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return r.error(path, "expected host:port, got '" + s + "'");
  e.host = s.substr(0, colon);
  try {
    size_t used = 0;
    e.port = std::stoi(s.substr(colon + 1), &used);
    if (used != s.size() - colon - 1) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    return r.error(path, "port in '" + s + "' is not a number");
  }
  if (e.port <= 0 || e.port > 65535) return r.error(path, "port must be in [1, 65535]");
  return Status::ok();
}

// The informational `plan:` section `tandem plan` writes; strict like the rest.
Status parse_plan(Reader& r, const YAML::Node& n, const std::string& path, PlanInfo& plan) {
  using Handler = YamlReader::Handler;
  auto str = [&r](std::string& out) { return r.field(out); };
  auto num = [&r](int& out, int lo) { return r.field(out, lo, 1 << 30); };
  auto real = [&r](double& out) -> Handler {
    return [&r, o = &out](const YAML::Node& v, const std::string& p) {
      TANDEM_RETURN_IF_ERROR(r.scalar(v, p, *o));
      return *o >= 0 ? Status::ok() : r.error(p, "must not be negative");
    };
  };
  plan.present = true;
  return r.mapping(n, path,
                   {{"attention_hw", str(plan.attention_hw)},
                    {"expert_hw", str(plan.expert_hw)},
                    {"attention_tp", num(plan.attention_tp, 1)},
                    {"expert_tp", num(plan.expert_tp, 1)},
                    {"global_batch", num(plan.global_batch, 0)},
                    {"micro_batch_size", num(plan.micro_batch_size, 0)},
                    {"avg_context", real(plan.avg_context)},
                    {"tpot_slo_ms", real(plan.tpot_slo_ms)},
                    {"predicted_tpot_ms", real(plan.predicted_tpot_ms)},
                    {"predicted_tokens_per_s", real(plan.predicted_tokens_per_s)},
                    {"predicted_tokens_per_s_per_gpu", real(plan.predicted_tokens_per_s_per_gpu)},
                    {"predicted_tokens_per_dollar", real(plan.predicted_tokens_per_dollar)}});
}

bool is_blank_char(char ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

// A key as clients send it in a header: printable ASCII without blanks, so
// it cannot be mistaken for another (a trailing space in a file, say).
Status check_api_key(const std::string& key) {
  if (key.empty() || key.size() > 512) return invalid_argument("an API key has 1 to 512 characters");
  for (unsigned char ch : key)
    if (ch <= 0x20 || ch >= 0x7f)
      return invalid_argument("an API key is printable ASCII without blanks (the key itself is not shown)");
  return Status::ok();
}

}  // namespace

Result<std::vector<std::string>> DeploymentConfig::accepted_api_keys() const {
  std::vector<std::string> keys = api_keys;
  if (api_keys_file.empty()) return keys;
  const auto bad = [&](const std::string& what) {
    return invalid_argument(source + ": router.api_keys_file: " + what);
  };
  std::ifstream in(api_keys_file);
  if (!in) return bad("cannot read '" + api_keys_file + "'");
  const size_t inline_keys = keys.size();
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (n == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // a UTF-8 byte order mark
    while (!line.empty() && is_blank_char(line.back())) line.pop_back();
    size_t lead = 0;
    while (lead < line.size() && is_blank_char(line[lead])) ++lead;
    if (lead == line.size() || line[lead] == '#') continue;  // blank lines and comments
    line.erase(0, lead);
    if (Status k = check_api_key(line); !k.is_ok())
      return bad(api_keys_file + " line " + std::to_string(n) + ": " + k.message());
    keys.push_back(line);
  }
  if (keys.size() == inline_keys) return bad("'" + api_keys_file + "' holds no key (one per line; # comments)");
  return keys;
}

Result<DeploymentConfig::ServerTls> DeploymentConfig::server_tls() const {
  ServerTls t;
  for (auto [key, path, out] : {std::tuple{"router.tls_cert_file", &tls_cert_file, &t.cert_pem},
                                std::tuple{"router.tls_key_file", &tls_key_file, &t.key_pem}}) {
    if (path->empty()) continue;
    std::ifstream in(*path);
    std::stringstream text;
    if (in) text << in.rdbuf();
    if (!in || text.str().empty())
      return invalid_argument(source + ": " + key + ": cannot read '" + *path + "'");
    *out = text.str();
  }
  return t;
}

Result<DeploymentConfig> DeploymentConfig::from_yaml(const std::string& text, const std::string& source) {
  TANDEM_ASSIGN_OR_RETURN(YAML::Node root, Reader::load(text, source));
  DeploymentConfig c;
  c.source = source;
  Reader r(source);
  using Handler = YamlReader::Handler;
  auto str = [&r](std::string& out) { return r.field(out); };
  auto num = [&r](int& out, int lo, int hi) { return r.field(out, lo, hi); };
  auto cpus = [&r](std::vector<int>& out) -> Handler {
    return [&r, o = &out](const YAML::Node& n, const std::string& p) {
      std::string text;
      TANDEM_RETURN_IF_ERROR(r.scalar(n, p, text));
      auto list = parse_cpu_list(text);
      if (!list.is_ok()) return r.error(p, list.status().message());
      *o = std::move(list).value();
      return Status::ok();
    };
  };
  // A file setting given empty would turn its check off unnoticed.
  auto non_empty = [&r](std::string& out) -> Handler {
    return [&r, o = &out](const YAML::Node& n, const std::string& p) {
      TANDEM_RETURN_IF_ERROR(r.scalar(n, p, *o));
      if (o->empty()) return r.error(p, "empty: name a file, or leave the key out");
      return Status::ok();
    };
  };
  constexpr int kBig = 1 << 30;
  Status st = r.mapping(
      root, "",
      {{"model", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"path", str(c.model_path)}, {"served_name", str(c.served_name)}});
        }},
       {"cluster", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"attention_nodes", num(c.attention_nodes, 1, 64)},
                                  {"expert_nodes", num(c.expert_nodes, 1, 256)},
                                  {"micro_batches", num(c.micro_batches, 1, 16)},
                                  {"device", str(c.device)},
                                  {"dtype", str(c.dtype)},
                                  {"cuda_graphs", r.field(c.cuda_graphs)},
                                  {"expert_gemm", str(c.expert_gemm)}});
        }},
       {"router", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"listen", [&](const YAML::Node& v, const std::string& q) {
                                     return parse_endpoint(r, v, q, c.router);
                                   }},
                                  {"http_listen", [&](const YAML::Node& v, const std::string& q) {
                                     return parse_endpoint(r, v, q, c.http);
                                   }},
                                  {"max_queue", num(c.max_queue, 1, kBig)},
                                  {"prefix_affinity", r.field(c.prefix_affinity)},
                                  {"request_timeout_s", num(c.request_timeout_s, 1, 86400)},
                                  {"tool_call_parser", str(c.tool_call_parser)},
                                  {"reasoning_parser", str(c.reasoning_parser)},
                                  {"drain_timeout_s", num(c.drain_timeout_s, 0, 3600)},
                                  {"api_keys", [&](const YAML::Node& v, const std::string& q) {
                                     if (!v.IsSequence()) return r.error(q, "expected a list of keys");
                                     for (size_t i = 0; i < v.size(); ++i) {
                                       std::string key;
                                       TANDEM_RETURN_IF_ERROR(r.scalar(v[i], q + "[" + std::to_string(i) + "]", key));
                                       c.api_keys.push_back(std::move(key));
                                     }
                                     // Given but empty would turn the check off unnoticed.
                                     if (c.api_keys.empty())
                                       return r.error(q, "an empty list: name a key, or leave the key out for no check");
                                     return Status::ok();
                                   }},
                                  {"access_log", str(c.access_log)},
                                  {"tls_cert_file", non_empty(c.tls_cert_file)},
                                  {"tls_key_file", non_empty(c.tls_key_file)},
                                  {"api_keys_file", non_empty(c.api_keys_file)}});
        }},
       {"attention", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"base_port", num(c.attention_base_port, 1, 65535)},
                                  {"max_running_sequences", num(c.max_running_sequences, 1, kBig)},
                                  {"max_batch_tokens", num(c.max_batch_tokens, 1, kBig)},
                                  {"kv_blocks", num(c.kv_blocks, 1, kBig)},
                                  {"kv_block_size", num(c.kv_block_size, 1, 1024)},
                                  {"prefix_caching", r.field(c.prefix_caching)},
                                  {"max_prompt_logprob_rows", num(c.max_prompt_logprob_rows, 1, kBig)},
                                  {"cpus", cpus(c.attention_cpus)},
                                  {"device", str(c.attention_device)}});
        }},
       {"expert", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"base_port", num(c.expert_base_port, 1, 65535)},
                                  {"cpus", cpus(c.expert_cpus)},
                                  {"device", str(c.expert_device)}});
        }},
       {"transport", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"backend", str(c.transport)},
                                  {"timeout_ms", num(c.transport_timeout_ms, 1, 3600000)},
                                  {"shared_memory", r.field(c.transport_shared_memory)}});
        }},
       {"logging", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"level", str(c.log_level)}});
        }},
       {"plan", [&](const YAML::Node& n, const std::string& p) { return parse_plan(r, n, p, c.plan); }}});
  if (!st.is_ok()) return st;

  if (c.model_path.empty()) return r.error("model.path", "required");
  for (auto [key, value] : {std::pair<const char*, std::string*>{"cluster.device", &c.device},
                            {"attention.device", &c.attention_device},
                            {"expert.device", &c.expert_device}}) {
    if (value->empty() && value != &c.device) continue;  // follows cluster.device
    if (*value != "cpu" && *value != "cuda") return r.error(key, "must be cpu or cuda, got '" + *value + "'");
  }
  if (c.dtype != "f32" && c.dtype != "bf16") return r.error("cluster.dtype", "must be f32 or bf16, got '" + c.dtype + "'");
  if (c.dtype == "bf16" && !c.uses_cuda())
    return r.error("cluster.dtype", "bf16 applies to GPU nodes, and every node here is on the CPU (which computes in FP32)");
  if (c.cuda_graphs && !c.uses_cuda())
    return r.error("cluster.cuda_graphs", "CUDA graphs apply to GPU nodes, and every node here is on the CPU");
  if (c.tool_call_parser != "auto" && c.tool_call_parser != "hermes" && c.tool_call_parser != "mistral" &&
      c.tool_call_parser != "none")
    return r.error("router.tool_call_parser", "must be auto, hermes, mistral or none, got '" + c.tool_call_parser + "'");
  if (c.reasoning_parser != "none" && c.reasoning_parser != "think" && c.reasoning_parser != "deepseek_r1" &&
      c.reasoning_parser != "qwen3")
    return r.error("router.reasoning_parser",
                   "must be none, think, deepseek_r1 or qwen3, got '" + c.reasoning_parser + "'");
  if (c.expert_gemm != "per-expert" && c.expert_gemm != "batched" && c.expert_gemm != "device")
    return r.error("cluster.expert_gemm", "must be per-expert, batched or device, got '" + c.expert_gemm + "'");
  if (c.expert_gemm != "per-expert" && c.experts_on() != "cuda")
    return r.error("cluster.expert_gemm", "chooses how GPU expert nodes run their experts, and the expert nodes here "
                                          "are on the CPU");
  if (c.transport_shared_memory && c.transport == "tcp")
    return r.error("transport.shared_memory", "needs transport.backend: ucx (the tcp backend is gRPC streams)");
  if (c.transport != "tcp" && c.transport != "ucx" && c.transport != "cuda_ipc" && c.transport != "nccl")
    return r.error("transport.backend", "must be tcp, ucx, cuda_ipc or nccl, got '" + c.transport + "'");
  if (c.transport == "cuda_ipc" && (c.attention_on() != "cuda" || c.experts_on() != "cuda"))
    return r.error("transport.backend",
                   "cuda_ipc moves activations between GPUs of one host: it needs attention and expert nodes on "
                   "cuda (cluster.device: cuda)");
  if (c.transport == "nccl" && (c.attention_on() != "cuda" || c.experts_on() != "cuda"))
    return r.error("transport.backend",
                   "nccl moves activations between GPUs with NCCL send/recv: it needs attention and expert nodes "
                   "on cuda (cluster.device: cuda)");
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warn" && c.log_level != "error")
    return r.error("logging.level", "must be debug, info, warn or error");
  if (c.max_batch_tokens < c.micro_batches)
    return r.error("attention.max_batch_tokens", "must be at least cluster.micro_batches");
  // Port ranges of the roles must not collide.
  std::set<int> ports{c.router.port};
  if (c.http.port != 0 && !ports.insert(c.http.port).second)
    return r.error("router.http_listen", "port " + std::to_string(c.http.port) + " is router.listen's");
  for (int i = 0; i < c.attention_nodes; ++i)
    if (!ports.insert(c.attention_base_port + i).second || c.attention_base_port + i > 65535)
      return r.error("attention.base_port", "ports " + std::to_string(c.attention_base_port) + ".." +
                                                std::to_string(c.attention_base_port + c.attention_nodes - 1) +
                                                " collide with other roles or exceed 65535");
  for (int i = 0; i < c.expert_nodes; ++i)
    if (!ports.insert(c.expert_base_port + i).second || c.expert_base_port + i > 65535)
      return r.error("expert.base_port", "ports " + std::to_string(c.expert_base_port) + ".." +
                                             std::to_string(c.expert_base_port + c.expert_nodes - 1) +
                                             " collide with other roles or exceed 65535");
  for (size_t i = 0; i < c.api_keys.size(); ++i)
    if (Status k = check_api_key(c.api_keys[i]); !k.is_ok())
      return r.error("router.api_keys[" + std::to_string(i) + "]", k.message());
  if (c.tls_cert_file.empty() != c.tls_key_file.empty())
    return r.error(c.tls_cert_file.empty() ? "router.tls_cert_file" : "router.tls_key_file",
                   "TLS needs both router.tls_cert_file and router.tls_key_file");
  // Files named in the deployment file are found beside it.
  for (std::string* file : {&c.api_keys_file, &c.tls_cert_file, &c.tls_key_file, &c.access_log}) {
    if (file->empty() || file->front() == '/' || *file == "-") continue;
    const std::filesystem::path dir = std::filesystem::path(source).parent_path();
    if (!dir.empty()) *file = (dir / *file).lexically_normal().string();
  }
  if (c.served_name.empty()) {
    std::string p = c.model_path;
    while (!p.empty() && p.back() == '/') p.pop_back();
    c.served_name = p.substr(p.find_last_of('/') == std::string::npos ? 0 : p.find_last_of('/') + 1);
  }
  return c;
}

Result<std::vector<int>> parse_cpu_list(const std::string& text) {
  constexpr int kMaxCpu = 4095;
  std::vector<int> cpus;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, ',');) {
    const auto dash = part.find('-');
    auto number = [&](const std::string& s, int& out) {
      if (s.empty() || s.size() > 4 || s.find_first_not_of("0123456789") != std::string::npos) return false;
      out = std::stoi(s);
      return out <= kMaxCpu;
    };
    int lo = 0, hi = 0;
    const bool ok = dash == std::string::npos ? number(part, lo) && number(part, hi)
                                              : number(part.substr(0, dash), lo) && number(part.substr(dash + 1), hi);
    if (!ok || lo > hi)
      return invalid_argument("'" + part + "' is not a CPU number or range (like 0-3,8) in '" + text + "'");
    for (int c = lo; c <= hi; ++c) cpus.push_back(c);
  }
  if (cpus.empty()) return invalid_argument("empty CPU list");
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string format_cpu_list(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) {
      out += '-';
      out += std::to_string(cpus[j]);
    }
    i = j + 1;
  }
  return out;
}

Result<DeploymentConfig> DeploymentConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found(path + ": cannot open deployment file");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_yaml(ss.str(), path);
}

Status DeploymentConfig::check_nccl_placement(int visible_gpus) const {
  if (transport != "nccl" || visible_gpus <= 0) return Status::ok();
  for (int a = 0; a < attention_nodes; ++a)
    for (int e = 0; e < expert_nodes; ++e) {
      const int ga = attention_gpu_slot(a) % visible_gpus, ge = expert_gpu_slot(e) % visible_gpus;
      if (ga == ge)
        return failed_precondition(
            source + ": transport.backend: nccl, but attention node " + std::to_string(a) + " and expert node " +
            std::to_string(e) + " would share GPU " + std::to_string(ga) + " (" + std::to_string(visible_gpus) +
            " visible; nodes take them round-robin, attention first): NCCL cannot put both ends of a link on one "
            "GPU. Give every node its own GPU (" + std::to_string(attention_nodes + expert_nodes) +
            " here), or use transport.backend: cuda_ipc on one machine");
    }
  return Status::ok();
}

Status DeploymentConfig::validate_against_model(int64_t num_experts, int64_t kv_bytes_per_token,
                                                size_t memory_bytes) const {
  if (expert_nodes > num_experts)
    return invalid_argument(source + ": cluster.expert_nodes: " + std::to_string(expert_nodes) +
                            " expert nodes but the model has only " + std::to_string(num_experts) + " experts");
  const double kv = static_cast<double>(kv_blocks) * kv_block_size * static_cast<double>(kv_bytes_per_token);
  if (kv > static_cast<double>(memory_bytes))
    return invalid_argument(source + ": attention.kv_blocks: " + std::to_string(kv_blocks) + " blocks of " +
                            std::to_string(kv_block_size) + " tokens need " +
                            std::to_string(static_cast<long long>(kv / (1 << 20))) + " MiB per attention node, " +
                            "more than the " + std::to_string(memory_bytes >> 20) + " MiB available");
  return Status::ok();
}

std::string DeploymentConfig::to_yaml() const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "model" << YAML::Value << YAML::BeginMap << YAML::Key << "path" << YAML::Value << model_path
    << YAML::Key << "served_name" << YAML::Value << served_name << YAML::EndMap;
  e << YAML::Key << "cluster" << YAML::Value << YAML::BeginMap << YAML::Key << "attention_nodes" << YAML::Value
    << attention_nodes << YAML::Key << "expert_nodes" << YAML::Value << expert_nodes << YAML::Key
    << "micro_batches" << YAML::Value << micro_batches << YAML::Key << "device" << YAML::Value << device;
  if (dtype != "f32") e << YAML::Key << "dtype" << YAML::Value << dtype;
  if (cuda_graphs) e << YAML::Key << "cuda_graphs" << YAML::Value << true;
  if (expert_gemm != "per-expert") e << YAML::Key << "expert_gemm" << YAML::Value << expert_gemm;
  e << YAML::EndMap;
  e << YAML::Key << "router" << YAML::Value << YAML::BeginMap << YAML::Key << "listen" << YAML::Value
    << router.to_string() << YAML::Key << "max_queue" << YAML::Value << max_queue << YAML::Key
    << "request_timeout_s" << YAML::Value << request_timeout_s;
  if (http.port != 0) e << YAML::Key << "http_listen" << YAML::Value << http.to_string();
  if (!prefix_affinity) e << YAML::Key << "prefix_affinity" << YAML::Value << false;
  if (tool_call_parser != "auto") e << YAML::Key << "tool_call_parser" << YAML::Value << tool_call_parser;
  if (reasoning_parser != "none") e << YAML::Key << "reasoning_parser" << YAML::Value << reasoning_parser;
  if (drain_timeout_s != 30) e << YAML::Key << "drain_timeout_s" << YAML::Value << drain_timeout_s;
  // Written back as given, so that a deployment written from this one keeps its check.
  if (!api_keys.empty()) e << YAML::Key << "api_keys" << YAML::Value << api_keys;
  if (!api_keys_file.empty()) e << YAML::Key << "api_keys_file" << YAML::Value << api_keys_file;
  if (!access_log.empty()) e << YAML::Key << "access_log" << YAML::Value << access_log;
  if (tls()) e << YAML::Key << "tls_cert_file" << YAML::Value << tls_cert_file << YAML::Key << "tls_key_file"
               << YAML::Value << tls_key_file;
  e << YAML::EndMap;
  e << YAML::Key << "attention" << YAML::Value << YAML::BeginMap << YAML::Key << "base_port" << YAML::Value
    << attention_base_port << YAML::Key << "max_running_sequences" << YAML::Value << max_running_sequences
    << YAML::Key << "max_batch_tokens" << YAML::Value << max_batch_tokens << YAML::Key << "kv_blocks"
    << YAML::Value << kv_blocks << YAML::Key << "kv_block_size" << YAML::Value << kv_block_size;
  if (!prefix_caching) e << YAML::Key << "prefix_caching" << YAML::Value << false;
  if (max_prompt_logprob_rows != 512)
    e << YAML::Key << "max_prompt_logprob_rows" << YAML::Value << max_prompt_logprob_rows;
  if (!attention_cpus.empty()) e << YAML::Key << "cpus" << YAML::Value << format_cpu_list(attention_cpus);
  if (attention_on() != device) e << YAML::Key << "device" << YAML::Value << attention_device;
  e << YAML::EndMap;
  e << YAML::Key << "expert" << YAML::Value << YAML::BeginMap << YAML::Key << "base_port" << YAML::Value
    << expert_base_port;
  if (!expert_cpus.empty()) e << YAML::Key << "cpus" << YAML::Value << format_cpu_list(expert_cpus);
  if (experts_on() != device) e << YAML::Key << "device" << YAML::Value << expert_device;
  e << YAML::EndMap;
  e << YAML::Key << "transport" << YAML::Value << YAML::BeginMap << YAML::Key << "backend" << YAML::Value
    << transport << YAML::Key << "timeout_ms" << YAML::Value << transport_timeout_ms << YAML::Key << "shared_memory"
    << YAML::Value << transport_shared_memory << YAML::EndMap;
  e << YAML::Key << "logging" << YAML::Value << YAML::BeginMap << YAML::Key << "level" << YAML::Value << log_level
    << YAML::EndMap;
  if (plan.present) {
    e << YAML::Key << "plan" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "attention_hw" << YAML::Value << plan.attention_hw << YAML::Key << "expert_hw" << YAML::Value
      << plan.expert_hw << YAML::Key << "attention_tp" << YAML::Value << plan.attention_tp << YAML::Key
      << "expert_tp" << YAML::Value << plan.expert_tp << YAML::Key << "global_batch" << YAML::Value
      << plan.global_batch << YAML::Key << "micro_batch_size" << YAML::Value << plan.micro_batch_size;
    e.SetDoublePrecision(6);  // predictions: more digits would be noise
    e << YAML::Key << "avg_context" << YAML::Value << plan.avg_context << YAML::Key << "tpot_slo_ms" << YAML::Value
      << plan.tpot_slo_ms << YAML::Key << "predicted_tpot_ms" << YAML::Value << plan.predicted_tpot_ms << YAML::Key
      << "predicted_tokens_per_s" << YAML::Value << plan.predicted_tokens_per_s << YAML::Key
      << "predicted_tokens_per_s_per_gpu" << YAML::Value << plan.predicted_tokens_per_s_per_gpu << YAML::Key
      << "predicted_tokens_per_dollar" << YAML::Value << plan.predicted_tokens_per_dollar;
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace tandem::api
