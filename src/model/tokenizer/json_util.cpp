#include "tokenizer/json_util.h"

namespace tandem::model::tok {
namespace {

Status bad_field(std::string_view where, const char* key, const char* what) {
  return invalid_argument(std::string(where) + ": field '" + key + "' must be " + what);
}

}  // namespace

Result<bool> json_bool(const Json& j, const char* key, bool def, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) return bad_field(where, key, "a boolean");
  return it->get<bool>();
}

Result<int64_t> json_int(const Json& j, const char* key, int64_t def, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number_integer()) return bad_field(where, key, "an integer");
  return it->get<int64_t>();
}

Result<std::string> json_string(const Json& j, const char* key, std::string_view def, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::string(def);
  if (!it->is_string()) return bad_field(where, key, "a string");
  return it->get<std::string>();
}

Result<std::string> json_type(const Json& j, std::string_view where) {
  if (!j.is_object()) return invalid_argument(std::string(where) + " must be an object or null");
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) return invalid_argument(std::string(where) + ": missing string field 'type'");
  return it->get<std::string>();
}

Status unsupported_component(std::string_view where, std::string_view type) {
  return unimplemented(std::string(where) + " type '" + std::string(type) + "' is not supported");
}

Result<Pattern> Pattern::parse(const Json& j, std::string_view where) {
  if (!j.is_object() || j.size() != 1)
    return invalid_argument(std::string(where) + ": 'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
  Pattern p;
  if (auto it = j.find("String"); it != j.end() && it->is_string()) {
    p.literal_ = it->get<std::string>();
    return p;
  }
  if (auto it = j.find("Regex"); it != j.end() && it->is_string()) {
    auto re = Regex::compile(it->get<std::string>());
    if (!re.is_ok()) return re.status().with_context(where);
    p.regex_ = std::move(re).value();
    return p;
  }
  return invalid_argument(std::string(where) + ": 'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
}

Pattern Pattern::literal(std::string text) {
  Pattern p;
  p.literal_ = std::move(text);
  return p;
}

Status Pattern::find_all(std::string_view text, std::vector<Span>* out) const {
  if (regex_) return regex_->find_all(text, out);
  if (literal_.empty()) return Status::ok();
  size_t pos = 0;
  while ((pos = text.find(literal_, pos)) != std::string_view::npos) {
    out->push_back({pos, pos + literal_.size()});
    pos += literal_.size();
  }
  return Status::ok();
}

}  // namespace tandem::model::tok
