// Small typed accessors for tokenizer.json components so that every malformed
// field becomes an INVALID_ARGUMENT naming the component and the field.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"
#include "tokenizer/regex.h"

namespace tandem::model::tok {

using Json = nlohmann::json;

// Missing or null fields give `def`.
Result<bool> json_bool(const Json& j, const char* key, bool def, std::string_view where);
Result<int64_t> json_int(const Json& j, const char* key, int64_t def, std::string_view where);
Result<std::string> json_string(const Json& j, const char* key, std::string_view def, std::string_view where);
// A required "type" string.
Result<std::string> json_type(const Json& j, std::string_view where);

Status unsupported_component(std::string_view where, std::string_view type);

// The {"String": "..."} / {"Regex": "..."} pattern used by Split and Replace.
class Pattern {
 public:
  static Result<Pattern> parse(const Json& j, std::string_view where);
  static Pattern literal(std::string text);
  // Non-empty, non-overlapping matches, left to right.
  Status find_all(std::string_view text, std::vector<Span>* out) const;

 private:
  std::string literal_;
  std::optional<Regex> regex_;
};

}  // namespace tandem::model::tok
