// Added (and special) tokens: found in the text before the rest of the
// pipeline runs, leftmost-longest like HF's Aho-Corasick matcher, with the
// lstrip / rstrip / single_word options.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::model::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
  // What the token decodes to: HF uses the normalized content for tokens
  // matched after normalization (so "ﬁne" under NFKC decodes as "fine").
  std::string surface;
};

// A stretch of text: either plain text for the pipeline (id < 0) or one added
// token (whose span may include whitespace absorbed by lstrip/rstrip).
struct Segment {
  size_t begin = 0;
  size_t end = 0;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher();
  ~AddedTokenMatcher();
  AddedTokenMatcher(AddedTokenMatcher&&) noexcept;
  AddedTokenMatcher& operator=(AddedTokenMatcher&&) noexcept;

  // `patterns[i]` is what to look for (the content, or its normalized form)
  // for `tokens[i]`.
  void build(const std::vector<const AddedToken*>& tokens, const std::vector<std::string>& patterns);
  bool empty() const;

  // Splits valid UTF-8 `text` into segments covering it in order. Plain-text
  // segments are never empty.
  std::vector<Segment> split(std::string_view text) const;

 private:
  struct Trie;
  std::unique_ptr<Trie> trie_;
};

}  // namespace tandem::model::tok
