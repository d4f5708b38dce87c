#include "tandem/api/yaml_reader.h"

#include <sstream>

namespace tandem::api {

namespace {
std::string format(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}
}  // namespace

Result<YAML::Node> YamlReader::load(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return invalid_argument(source + ": not valid YAML: " + e.what());
  }
}

Status YamlReader::error(const std::string& path, const std::string& what) const {
  return invalid_argument(source_ + ": " + path + ": " + what);
}

Status YamlReader::integer(const YAML::Node& node, const std::string& path, int& out, int lo, int hi) const {
  TANDEM_RETURN_IF_ERROR(scalar(node, path, out));
  if (out < lo || out > hi)
    return error(path, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                           std::to_string(out));
  return Status::ok();
}

Status YamlReader::number(const YAML::Node& node, const std::string& path, double& out, double lo, double hi,
                          bool open_lo) const {
  TANDEM_RETURN_IF_ERROR(scalar(node, path, out));
  if (out < lo || out > hi || (open_lo && out == lo))
    return error(path, "must be in " + std::string(open_lo ? "(" : "[") + format(lo) + ", " + format(hi) +
                           "], got " + node.Scalar());
  return Status::ok();
}

Status YamlReader::mapping(const YAML::Node& node, const std::string& path, const std::map<std::string, Handler>& keys,
                           const std::set<std::string>& required) const {
  if (!node.IsMap()) return error(path.empty() ? "(top level)" : path, "expected a mapping");
  std::set<std::string> seen;
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string p = path.empty() ? key : path + "." + key;
    auto it = keys.find(key);
    if (it == keys.end()) {
      std::string known;
      for (const auto& k : keys) known += (known.empty() ? "" : ", ") + k.first;
      return error(p, "unknown key (known here: " + known + ")");
    }
    if (!seen.insert(key).second) return error(p, "duplicate key");
    TANDEM_RETURN_IF_ERROR(it->second(kv.second, p));
  }
  for (const auto& r : required)
    if (!seen.count(r)) return error(path.empty() ? r : path + "." + r, "required");
  return Status::ok();
}

}  // namespace tandem::api
