#include "tandem/planner/hardware.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "tandem/api/yaml_reader.h"

namespace tandem::planner {

using Reader = api::YamlReader;

Result<HardwareProfile> HardwareProfile::from_yaml(const std::string& text, const std::string& source) {
  TANDEM_ASSIGN_OR_RETURN(YAML::Node root, Reader::load(text, source));
  HardwareProfile h;
  h.source_file = source;
  Reader r(source);
  constexpr double kInf = 1e12;
  auto str = [&r](std::string& out) { return r.field(out); };
  auto pos = [&r](double& out) { return r.field(out, 0, kInf, /*open_lo=*/true); };
  auto nonneg = [&r](double& out) { return r.field(out, 0, kInf); };
  auto frac = [&r](double& out) { return r.field(out, 0, 1, /*open_lo=*/true); };
  Status st = r.mapping(
      root, "",
      {{"name", str(h.name)},
       {"kind", str(h.kind)},
       {"device", str(h.device)},
       {"source", str(h.source)},
       {"measured_model", str(h.measured_model)},
       {"compute", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"bf16_tflops", pos(h.peak_tflops)},
                                  {"efficiency", frac(h.compute_efficiency)},
                                  {"layer_overhead_us", nonneg(h.layer_overhead_us)}},
                           {"bf16_tflops"});
        }},
       {"memory", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"size_gb", pos(h.memory_gb)},
                                  {"bandwidth_gbps", pos(h.memory_bw_gbps)},
                                  {"efficiency", frac(h.memory_efficiency)},
                                  {"usable_fraction", frac(h.memory_usable_fraction)}},
                           {"size_gb", "bandwidth_gbps"});
        }},
       {"interconnect", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"name", str(h.interconnect)},
                                  {"bandwidth_gbps", pos(h.interconnect_gbps)},
                                  {"latency_us", nonneg(h.interconnect_latency_us)},
                                  {"gpus_per_node", [&](const YAML::Node& v, const std::string& q) {
                                     return r.integer(v, q, h.gpus_per_node, 1, 64);
                                   }}},
                           {"bandwidth_gbps", "gpus_per_node"});
        }},
       {"network", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"nic_gbps", pos(h.nic_gbps)},
                                  {"latency_us", nonneg(h.nic_latency_us)},
                                  {"per_message_us", nonneg(h.nic_per_message_us)},
                                  {"efficiency", frac(h.nic_efficiency)}},
                           {"nic_gbps"});
        }},
       {"price", [&](const YAML::Node& n, const std::string& p) {
          return r.mapping(n, p, {{"per_gpu_hour", pos(h.price_per_hour)}, {"source", str(h.price_source)}},
                           {"per_gpu_hour", "source"});
        }},
       {"measurements", [&](const YAML::Node& n, const std::string& p) {
          if (!n.IsSequence()) return r.error(p, "expected a list");
          for (size_t i = 0; i < n.size(); ++i) {
            Point pt;
            const std::string q = p + "[" + std::to_string(i) + "]";
            TANDEM_RETURN_IF_ERROR(r.mapping(n[i], q,
                                             {{"what", str(pt.what)},
                                              {"x", nonneg(pt.x)},
                                              {"y", nonneg(pt.y)},
                                              {"us", nonneg(pt.us)}},
                                             {"what", "us"}));
            if (pt.what != "attention" && pt.what != "experts" && pt.what != "head" && pt.what != "m2n")
              return r.error(q + ".what", "must be attention, experts, head or m2n, got '" + pt.what + "'");
            h.measurements.push_back(pt);
          }
          return Status::ok();
        }}},
      {"name", "kind", "source", "compute", "memory", "interconnect", "network", "price"});
  if (!st.is_ok()) return st;
  if (h.kind != "spec-derived" && h.kind != "measured")
    return r.error("kind", "must be spec-derived or measured, got '" + h.kind + "'");
  if (h.device != "cuda" && h.device != "cpu") return r.error("device", "must be cuda or cpu, got '" + h.device + "'");
  if (h.name.empty()) return r.error("name", "must not be empty");
  if (h.source.empty()) return r.error("source", "must say where the numbers come from");
  return h;
}

Result<HardwareProfile> HardwareProfile::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found(path + ": cannot open hardware profile");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_yaml(ss.str(), path);
}

Result<HardwareProfile> HardwareProfile::find(const std::string& name_or_path, const std::string& dir) {
  const bool is_path = name_or_path.find('/') != std::string::npos ||
                       (name_or_path.size() > 5 && name_or_path.substr(name_or_path.size() - 5) == ".yaml");
  if (is_path) return from_file(name_or_path);
  std::string lower = name_or_path;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
  const std::string path = dir + "/" + lower + ".yaml";
  if (!std::filesystem::exists(path)) {
    std::string known;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec))
      if (e.path().extension() == ".yaml") known += (known.empty() ? "" : ", ") + e.path().stem().string();
    return not_found("no hardware profile '" + name_or_path + "' (looked for " + path +
                     (known.empty() ? ")" : "; known: " + known + ")"));
  }
  return from_file(path);
}

std::string HardwareProfile::to_yaml() const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << name << YAML::Key << "kind" << YAML::Value << kind;
  e << YAML::Key << "device" << YAML::Value << device << YAML::Key << "source" << YAML::Value << source;
  e << YAML::Key << "compute" << YAML::Value << YAML::BeginMap << YAML::Key << "bf16_tflops" << YAML::Value
    << peak_tflops << YAML::Key << "efficiency" << YAML::Value << compute_efficiency << YAML::Key
    << "layer_overhead_us" << YAML::Value << layer_overhead_us << YAML::EndMap;
  e << YAML::Key << "memory" << YAML::Value << YAML::BeginMap << YAML::Key << "size_gb" << YAML::Value << memory_gb
    << YAML::Key << "bandwidth_gbps" << YAML::Value << memory_bw_gbps << YAML::Key << "efficiency" << YAML::Value
    << memory_efficiency << YAML::Key << "usable_fraction" << YAML::Value << memory_usable_fraction << YAML::EndMap;
  e << YAML::Key << "interconnect" << YAML::Value << YAML::BeginMap << YAML::Key << "name" << YAML::Value
    << interconnect << YAML::Key << "bandwidth_gbps" << YAML::Value << interconnect_gbps << YAML::Key
    << "latency_us" << YAML::Value << interconnect_latency_us << YAML::Key << "gpus_per_node" << YAML::Value
    << gpus_per_node << YAML::EndMap;
  e << YAML::Key << "network" << YAML::Value << YAML::BeginMap << YAML::Key << "nic_gbps" << YAML::Value << nic_gbps
    << YAML::Key << "latency_us" << YAML::Value << nic_latency_us << YAML::Key << "per_message_us" << YAML::Value
    << nic_per_message_us << YAML::Key << "efficiency" << YAML::Value << nic_efficiency << YAML::EndMap;
  e << YAML::Key << "price" << YAML::Value << YAML::BeginMap << YAML::Key << "per_gpu_hour" << YAML::Value
    << price_per_hour << YAML::Key << "source" << YAML::Value << price_source << YAML::EndMap;
  if (!measured_model.empty()) e << YAML::Key << "measured_model" << YAML::Value << measured_model;
  if (!measurements.empty()) {
    e << YAML::Key << "measurements" << YAML::Value << YAML::BeginSeq;
    for (const auto& p : measurements)
      e << YAML::Flow << YAML::BeginMap << YAML::Key << "what" << YAML::Value << p.what << YAML::Key << "x"
        << YAML::Value << p.x << YAML::Key << "y" << YAML::Value << p.y << YAML::Key << "us" << YAML::Value << p.us
        << YAML::EndMap;
    e << YAML::EndSeq;
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace tandem::planner
