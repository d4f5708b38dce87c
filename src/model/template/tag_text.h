// Small text helpers for the parsers that read tags out of streamed model
// output (tool calls, reasoning).
#pragma once

#include <algorithm>
#include <string_view>

namespace tandem::model {

inline bool is_blank(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

inline std::string_view trim_blanks(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

// The longest tail of `text` that is a proper prefix of `tag`: text a stream
// holds back until it knows whether the tag follows.
inline size_t partial_tag(std::string_view text, std::string_view tag) {
  for (size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n)
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

}  // namespace tandem::model
