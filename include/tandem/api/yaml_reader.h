// Strict reading of YAML configuration files (deployments, hardware profiles):
// a mapping is walked against the keys its schema knows, and every error names
// the file, the key path and what is wrong, e.g.
//   configs/bad.yaml: cluster.expert_node: unknown key (known here: ...)
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <type_traits>

#include "tandem/common/status.h"

namespace tandem::api {

class YamlReader {
 public:
  using Handler = std::function<Status(const YAML::Node&, const std::string&)>;

  explicit YamlReader(std::string source) : source_(std::move(source)) {}

  // Parses `text`; INVALID_ARGUMENT "SOURCE: not valid YAML: ..." otherwise.
  static Result<YAML::Node> load(const std::string& text, const std::string& source);

  // INVALID_ARGUMENT "SOURCE: PATH: WHAT".
  Status error(const std::string& path, const std::string& what) const;

  template <typename T>
  Status scalar(const YAML::Node& node, const std::string& path, T& out) const {
    if (!node.IsScalar()) return error(path, "expected " + type_name<T>());
    try {
      out = node.as<T>();
    } catch (const YAML::Exception&) {
      return error(path, "expected " + type_name<T>() + ", got '" + node.Scalar() + "'");
    }
    return Status::ok();
  }

  Status integer(const YAML::Node& node, const std::string& path, int& out, int lo, int hi) const;
  // A number in [lo, hi]; with open_lo, lo itself is refused too.
  Status number(const YAML::Node& node, const std::string& path, double& out, double lo, double hi,
                bool open_lo = false) const;

  // Handlers for mapping() that fill one field (they keep a pointer to it and
  // to this reader, so both must outlive the mapping() call).
  template <typename T>
  Handler field(T& out) const {
    return [this, o = &out](const YAML::Node& n, const std::string& p) { return scalar(n, p, *o); };
  }
  Handler field(int& out, int lo, int hi) const {
    return [this, o = &out, lo, hi](const YAML::Node& n, const std::string& p) { return integer(n, p, *o, lo, hi); };
  }
  Handler field(double& out, double lo, double hi, bool open_lo = false) const {
    return [this, o = &out, lo, hi, open_lo](const YAML::Node& n, const std::string& p) {
      return number(n, p, *o, lo, hi, open_lo);
    };
  }

  // Calls the handler of each key; an unknown key is an error listing the
  // known ones, and so is a duplicate or a missing `required` one.
  Status mapping(const YAML::Node& node, const std::string& path, const std::map<std::string, Handler>& keys,
                 const std::set<std::string>& required = {}) const;

 private:
  template <typename T>
  static std::string type_name() {
    if constexpr (std::is_same_v<T, int>) return "an integer";
    else if constexpr (std::is_same_v<T, bool>) return "true/false";
    else if constexpr (std::is_same_v<T, double>) return "a number";
    else return "a string";
  }
  std::string source_;
};

}  // namespace tandem::api
