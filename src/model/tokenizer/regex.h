// PCRE2 (UTF + UCP, JIT when available) behind a small interface, so the
// pre-tokenizer regexes of tokenizer.json (written for Oniguruma/fancy-regex:
// \p{L}, (?i:...), (?!\S)) run unchanged.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::model::tok {

struct Span {
  size_t begin = 0;
  size_t end = 0;
};

class Regex {
 public:
  static Result<Regex> compile(std::string_view pattern);
  // A pattern matching `literal` exactly.
  static std::string escape(std::string_view literal);

  // Appends the non-empty, non-overlapping matches in `text` (valid UTF-8),
  // scanning left to right like HF: after an empty match the scan moves on by
  // one code point. Lookarounds see the whole of `text`. Thread-safe.
  Status find_all(std::string_view text, std::vector<Span>* out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string pattern_;
};

}  // namespace tandem::model::tok
