// JSON schema -> regular expression for the JSON texts it allows. Follows the
// approach of the guided-decoding libraries (a schema's texts as a regular
// language, objects in property order), written for this project.
#include <algorithm>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/model/guided.h"

namespace tandem::model {
namespace {

// ordered: objects list their properties in the schema's order.
using json = nlohmann::ordered_json;

const std::string kWs = " ?";
const std::string kString = R"("(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")";
const std::string kStringChar = R"((?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}))";
const std::string kUnsigned = "(?:0|[1-9][0-9]*)";
const std::string kFraction = R"((?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)";
const std::string kDate = "[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])";
// RFC 3339 full-time: the offset is required.
const std::string kTime =
    R"((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]))";
const std::string kUuid = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
// Nesting of a value the schema leaves open ({} or true): a regular language
// cannot nest without bound.
constexpr int kAnyDepth = 2;
constexpr size_t kMaxRegexBytes = size_t{1} << 17;
// Schemas nested deeper are refused (the converter recurses on them).
constexpr int kMaxSchemaDepth = 64;
// Schemas visited while converting: shared $refs and repeated types can make
// the work grow exponentially while the output stays small.
constexpr int64_t kMaxSchemaVisits = 100000;
// The largest count a regular expression here repeats (compile_regex's limit):
// a larger maximum length or item count is not enforced, a larger minimum refused.
constexpr int64_t kMaxCount = 1000;

// Keywords that describe and never restrict.
const std::set<std::string> kAnnotations = {
    "title",   "description", "default",  "examples",      "$schema",       "$id",         "$comment",
    "readOnly", "writeOnly",  "deprecated", "$defs",       "definitions",   "contentMediaType",
    "contentEncoding", "strict", "name", "discriminator", "x-order"};
// Keywords handled below (some only partly: see docs/configuration.md).
const std::set<std::string> kHandled = {
    "type",     "properties", "required",  "additionalProperties", "items",    "minItems",  "maxItems",
    "enum",     "const",      "anyOf",     "oneOf",                "allOf",    "$ref",      "minLength",
    "maxLength", "pattern",   "format",    "minimum",              "maximum",  "exclusiveMinimum",
    "exclusiveMaximum", "nullable"};

std::string any_value(int depth) {
  const std::string scalar = "(?:" + kString + "|-?" + kUnsigned + kFraction + "|true|false|null)";
  if (depth == 0) return scalar;
  const std::string inner = any_value(depth - 1);
  const std::string object =
      R"(\{)" + kWs + "(?:" + kString + ":" + kWs + inner + "(?:," + kWs + kString + ":" + kWs + inner + ")*)?" + kWs + R"(\})";
  const std::string array = R"(\[)" + kWs + "(?:" + inner + "(?:," + kWs + inner + ")*)?" + kWs + R"(\])";
  return "(?:" + scalar + "|" + object + "|" + array + ")";
}

std::string repeat_suffix(int64_t lo, int64_t hi) {  // hi < 0: unbounded
  if (hi < 0) return lo == 0 ? "*" : lo == 1 ? "+" : "{" + std::to_string(lo) + ",}";
  if (lo == hi) return "{" + std::to_string(lo) + "}";
  return "{" + std::to_string(lo) + "," + std::to_string(hi) + "}";
}

class Converter {
 public:
  explicit Converter(const json& root) : root_(root) {}

  // The regex for `s`, refused once it outgrows the limit: $refs to shared
  // definitions and optional properties multiply, so the size is checked at
  // every level, not only at the end.
  Result<std::string> value(const json& s, const std::string& where) {
    if (depth_ >= kMaxSchemaDepth)
      return invalid_argument("json schema: " + where + " is nested more than " + std::to_string(kMaxSchemaDepth) +
                              " schemas deep");
    if (++visits_ > kMaxSchemaVisits)
      return invalid_argument("json schema: too complex to guide (more than " + std::to_string(kMaxSchemaVisits) +
                              " schemas visited; shared $refs multiply)");
    ++depth_;
    auto out = value_unchecked(s, where);
    --depth_;
    if (out.is_ok() && out.value().size() > kMaxRegexBytes) return too_large(where, out.value().size());
    return out;
  }

 private:
  // Checked wherever an expression grows (alternatives, types, properties),
  // not only when a subschema is done: a loop could otherwise build
  // gigabytes before its end.
  static Status too_large(const std::string& where, size_t bytes) {
    return invalid_argument("json schema: too large to guide (" + where + " needs an expression of more than " +
                            std::to_string(bytes) + " bytes, the limit is " + std::to_string(kMaxRegexBytes) + ")");
  }

  Result<std::string> value_unchecked(const json& s, const std::string& where) {
    if (s.is_boolean()) {
      if (s.get<bool>()) return any_value(kAnyDepth);
      return invalid_argument("json schema: " + where + " is false (nothing is valid)");
    }
    if (!s.is_object()) return invalid_argument("json schema: " + where + " must be an object or a boolean");
    for (const auto& [key, unused] : s.items()) {
      if (!kHandled.count(key) && !kAnnotations.count(key))
        return invalid_argument("json schema: " + where + ": the keyword '" + key + "' is not supported");
    }
    if (auto r = s.find("$ref"); r != s.end()) return reference(*r, where);
    for (const char* key : {"anyOf", "oneOf"}) {
      if (auto alts = s.find(key); alts != s.end()) {
        if (!alts->is_array() || alts->empty())
          return invalid_argument("json schema: " + where + "." + key + " must be a non-empty array");
        std::string out = "(?:";
        for (size_t i = 0; i < alts->size(); ++i) {
          TANDEM_ASSIGN_OR_RETURN(std::string alt, value((*alts)[i], where + "." + key + "[" + std::to_string(i) + "]"));
          out += (i ? "|" : "") + alt;
          if (out.size() > kMaxRegexBytes) return too_large(where, out.size());
        }
        return out + ")";
      }
    }
    if (auto all = s.find("allOf"); all != s.end()) {
      if (!all->is_array() || all->size() != 1)
        return invalid_argument("json schema: " + where + ".allOf: only a single schema is supported");
      return value((*all)[0], where + ".allOf[0]");
    }
    if (auto c = s.find("const"); c != s.end()) return regex_escape(c->dump());
    if (auto e = s.find("enum"); e != s.end()) {
      if (!e->is_array() || e->empty())
        return invalid_argument("json schema: " + where + ".enum must be a non-empty array");
      std::string out = "(?:";
      for (size_t i = 0; i < e->size(); ++i) out += (i ? "|" : "") + regex_escape((*e)[i].dump());
      return out + ")";
    }
    std::vector<std::string> types;
    if (auto t = s.find("type"); t != s.end()) {
      if (t->is_string()) {
        types.push_back(t->get<std::string>());
      } else if (t->is_array() && !t->empty()) {
        for (const json& one : *t) {
          if (!one.is_string()) return invalid_argument("json schema: " + where + ".type: entries must be strings");
          types.push_back(one.get<std::string>());
        }
      } else {
        return invalid_argument("json schema: " + where + ".type must be a string or an array of strings");
      }
    } else if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) {
      types.push_back("object");
    } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) {
      types.push_back("array");
    } else if (s.contains("pattern") || s.contains("minLength") || s.contains("maxLength") || s.contains("format")) {
      types.push_back("string");
    } else {
      return any_value(kAnyDepth);
    }
    if (auto n = s.find("nullable"); n != s.end()) {
      if (!n->is_boolean()) return invalid_argument("json schema: " + where + ".nullable must be true or false");
      if (n->get<bool>()) types.push_back("null");
    }
    std::string out = "(?:";
    for (size_t i = 0; i < types.size(); ++i) {
      TANDEM_ASSIGN_OR_RETURN(std::string one, typed(s, types[i], where));
      out += (i ? "|" : "") + one;
      if (out.size() > kMaxRegexBytes) return too_large(where, out.size());
    }
    return out + ")";
  }

  Result<std::string> typed(const json& s, const std::string& type, const std::string& where) {
    if (type == "string") return string(s, where);
    if (type == "integer" || type == "number") {
      // Bounds other than "not negative" are not a regular language worth the
      // size; they are left to the caller (documented).
      bool non_negative = false;
      if (auto m = s.find("minimum"); m != s.end() && m->is_number()) non_negative = m->get<double>() >= 0;
      if (auto m = s.find("exclusiveMinimum"); m != s.end() && m->is_number())
        non_negative = non_negative || m->get<double>() >= 0;
      const std::string sign = non_negative ? "" : "-?";
      return sign + kUnsigned + (type == "number" ? kFraction : "");
    }
    if (type == "boolean") return std::string("(?:true|false)");
    if (type == "null") return std::string("null");
    if (type == "array") return array(s, where);
    if (type == "object") return object(s, where);
    return invalid_argument("json schema: " + where + ".type: unknown type '" + type + "'");
  }

  Result<std::string> string(const json& s, const std::string& where) {
    if (auto p = s.find("pattern"); p != s.end()) {
      if (!p->is_string()) return invalid_argument("json schema: " + where + ".pattern must be a string");
      std::string pattern = p->get<std::string>();
      // Whole-string match; anchors at the ends change nothing.
      if (!pattern.empty() && pattern.front() == '^') pattern.erase(0, 1);
      if (!pattern.empty() && pattern.back() == '$') {
        size_t slashes = 0;
        for (size_t i = pattern.size() - 1; i-- > 0 && pattern[i] == '\\';) ++slashes;
        if (slashes % 2 == 0) pattern.pop_back();
      }
      auto inside = json_string_pattern(pattern);
      if (!inside.is_ok()) return invalid_argument("json schema: " + where + ".pattern: " + inside.status().message());
      return "\"" + inside.value() + "\"";
    }
    if (auto f = s.find("format"); f != s.end() && f->is_string()) {
      const std::string format = f->get<std::string>();
      if (format == "date") return "\"" + kDate + "\"";
      if (format == "time") return "\"" + kTime + "\"";
      if (format == "date-time") return "\"" + kDate + "T" + kTime + "\"";
      if (format == "uuid") return "\"" + kUuid + "\"";
      // Other formats are annotations (as validators treat them by default).
    }
    int64_t lo = 0, hi = -1;
    TANDEM_RETURN_IF_ERROR(count(s, "minLength", where, lo));
    TANDEM_RETURN_IF_ERROR(count(s, "maxLength", where, hi));
    if (hi >= 0 && hi < lo) return invalid_argument("json schema: " + where + ": maxLength is below minLength");
    if (lo == 0 && hi < 0) return kString;
    return "\"" + kStringChar + repeat_suffix(lo, hi) + "\"";
  }

  Result<std::string> array(const json& s, const std::string& where) {
    int64_t lo = 0, hi = -1;
    TANDEM_RETURN_IF_ERROR(count(s, "minItems", where, lo));
    TANDEM_RETURN_IF_ERROR(count(s, "maxItems", where, hi));
    if (hi >= 0 && hi < lo) return invalid_argument("json schema: " + where + ": maxItems is below minItems");
    const std::string open = R"(\[)" + kWs, close = kWs + R"(\])";
    if (hi == 0) return open + close;
    std::string item = any_value(kAnyDepth);
    if (auto it = s.find("items"); it != s.end()) {
      if (it->is_array())
        return invalid_argument("json schema: " + where + ".items: tuples (an array of schemas) are not supported");
      TANDEM_ASSIGN_OR_RETURN(item, value(*it, where + ".items"));
    }
    const std::string more = "(?:," + kWs + item + ")" + repeat_suffix(lo > 0 ? lo - 1 : 0, hi < 0 ? -1 : hi - 1);
    if (lo == 0) return open + "(?:" + item + more + ")?" + close;
    return open + item + more + close;
  }

  Result<std::string> object(const json& s, const std::string& where) {
    const std::string open = R"(\{)" + kWs, close = kWs + R"(\})";
    const json* props = nullptr;
    if (auto p = s.find("properties"); p != s.end()) {
      if (!p->is_object()) return invalid_argument("json schema: " + where + ".properties must be an object");
      props = &*p;
    }
    std::set<std::string> required;
    if (auto r = s.find("required"); r != s.end()) {
      if (!r->is_array()) return invalid_argument("json schema: " + where + ".required must be an array of names");
      for (const json& name : *r) {
        if (!name.is_string()) return invalid_argument("json schema: " + where + ".required must be an array of names");
        if (!props || !props->contains(name.get<std::string>()))
          return invalid_argument("json schema: " + where + ".required names '" + name.get<std::string>() +
                                  "', which is not in properties");
        required.insert(name.get<std::string>());
      }
    }
    if (!props || props->empty()) {
      // A map: any keys, values by additionalProperties (false: only {}).
      std::string v = any_value(kAnyDepth);
      if (auto a = s.find("additionalProperties"); a != s.end()) {
        if (a->is_boolean() && !a->get<bool>()) return open + close;
        TANDEM_ASSIGN_OR_RETURN(v, value(*a, where + ".additionalProperties"));
      }
      const std::string entry = kString + ":" + kWs + v;
      return open + "(?:" + entry + "(?:," + kWs + entry + ")*)?" + close;
    }
    std::vector<std::pair<std::string, bool>> entries;  // regex, required
    size_t total = 0;
    for (const auto& [name, sub] : props->items()) {
      TANDEM_ASSIGN_OR_RETURN(std::string v, value(sub, where + ".properties." + name));
      entries.push_back({regex_escape(json(name).dump()) + ":" + kWs + v, required.count(name) > 0});
      total += entries.back().first.size();
      if (total > kMaxRegexBytes) return too_large(where, total);
    }
    // Every choice of the first property written, then the rest in order
    // (required ones always, optional ones maybe), each after a comma.
    // Sizes checked as they grow: the tails repeat every later entry.
    std::vector<std::string> tails(entries.size() + 1);
    for (size_t j = entries.size(); j-- > 0;) {
      const std::string item = "," + kWs + entries[j].first;
      tails[j] = (entries[j].second ? item : "(?:" + item + ")?") + tails[j + 1];
      if (tails[j].size() > kMaxRegexBytes) return too_large(where, tails[j].size());
    }
    std::string body = "(?:";
    bool any_required = false;
    for (size_t f = 0; f < entries.size(); ++f) {
      body += (f ? "|" : "") + entries[f].first + tails[f + 1];
      if (body.size() > kMaxRegexBytes) return too_large(where, body.size());
      if (entries[f].second) {
        any_required = true;
        break;
      }
    }
    body += ")";
    if (!any_required) body += "?";
    return open + body + close;
  }

  // A length or item-count bound: a maximum over kMaxCount is not enforced
  // (out stays unbounded), a minimum over it is refused.
  Status count(const json& s, const char* key, const std::string& where, int64_t& out) {
    auto it = s.find(key);
    if (it == s.end()) return Status::ok();
    if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < 0))
      return invalid_argument("json schema: " + where + "." + key + " must be a non-negative integer");
    const uint64_t big = it->is_number_unsigned() ? it->get<uint64_t>() : static_cast<uint64_t>(it->get<int64_t>());
    const int64_t v = big > static_cast<uint64_t>(kMaxCount) ? kMaxCount + 1 : static_cast<int64_t>(big);
    if (v > kMaxCount) {
      if (std::string_view(key).rfind("max", 0) == 0) return Status::ok();
      return invalid_argument("json schema: " + where + "." + key + " is " + std::to_string(big) +
                              ", more than the " + std::to_string(kMaxCount) + " a guide can count");
    }
    out = v;
    return Status::ok();
  }

  Result<std::string> reference(const json& ref, const std::string& where) {
    if (!ref.is_string()) return invalid_argument("json schema: " + where + ".$ref must be a string");
    const std::string target = ref.get<std::string>();
    if (target.rfind("#", 0) != 0)
      return invalid_argument("json schema: " + where + ".$ref '" + target + "': only references within the schema (#/...)");
    if (std::find(refs_.begin(), refs_.end(), target) != refs_.end())
      return invalid_argument("json schema: " + where + ".$ref '" + target + "' is recursive, which is not supported");
    json::json_pointer pointer;
    try {
      pointer = json::json_pointer(target.substr(1));
    } catch (const json::exception&) {
      return invalid_argument("json schema: " + where + ".$ref '" + target + "' is not a JSON pointer");
    }
    if (!root_.contains(pointer))
      return invalid_argument("json schema: " + where + ".$ref '" + target + "' points at nothing");
    refs_.push_back(target);
    auto out = value(root_.at(pointer), target);
    refs_.pop_back();
    return out;
  }

  const json& root_;
  std::vector<std::string> refs_;
  int depth_ = 0;
  int64_t visits_ = 0;
};

template <typename Json>
int depth_of(const Json& value) {
  int deepest = 0;
  std::vector<std::pair<const Json*, int>> stack = {{&value, 0}};
  while (!stack.empty()) {
    auto [v, d] = stack.back();
    stack.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, d + 1);
    for (const auto& child : *v) stack.push_back({&child, d + 1});
  }
  return deepest;
}

}  // namespace

int json_depth(const nlohmann::ordered_json& value) { return depth_of(value); }
int json_depth(const nlohmann::json& value) { return depth_of(value); }

Result<std::string> json_schema_to_regex(std::string_view schema_json) {
  // nlohmann parses and frees without recursion, but dump() recurses (enum
  // and const values are dumped): deep input is refused first.
  try {
    const json root = json::parse(schema_json, nullptr, false);
    if (root.is_discarded()) return invalid_argument("json schema: not valid JSON");
    if (json_depth(root) > kMaxJsonInputDepth)
      return invalid_argument("json schema: nested more than " + std::to_string(kMaxJsonInputDepth) + " deep");
    Converter converter(root);
    return converter.value(root, "schema");
  } catch (const json::exception& e) {  // e.g. a $ref index past any array
    return invalid_argument(std::string("json schema: ") + e.what());
  }
}

}  // namespace tandem::model
