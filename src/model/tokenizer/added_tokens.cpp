#include "tokenizer/added_tokens.h"

#include <array>

#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace tandem::model::tok {

// A byte trie: added-token sets are small (a few hundred at most), so a
// per-position walk is cheap and gives leftmost-longest directly.
struct AddedTokenMatcher::Trie {
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                         // index into tokens
  };
  std::vector<Node> nodes{1};
  std::vector<const AddedToken*> tokens;
  std::array<bool, 256> first_byte{};

  int32_t child(int32_t node, unsigned char b) const {
    for (const auto& [c, n] : nodes[node].children)
      if (c == b) return n;
    return -1;
  }
  void insert(std::string_view s, int32_t token) {
    int32_t cur = 0;
    for (char ch : s) {
      const auto b = static_cast<unsigned char>(ch);
      int32_t nxt = child(cur, b);
      if (nxt < 0) {
        nxt = static_cast<int32_t>(nodes.size());
        nodes.emplace_back();
        nodes[cur].children.emplace_back(b, nxt);
      }
      cur = nxt;
    }
    // The first token with a given pattern wins, like HF's pattern order.
    if (nodes[cur].token < 0) nodes[cur].token = token;
  }
  // Longest pattern starting at text[pos]: {token index, length} or {-1, 0}.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const {
    std::pair<int32_t, size_t> best{-1, 0};
    int32_t cur = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      cur = child(cur, static_cast<unsigned char>(text[i]));
      if (cur < 0) break;
      if (nodes[cur].token >= 0) best = {nodes[cur].token, i + 1 - pos};
    }
    return best;
  }
};

AddedTokenMatcher::AddedTokenMatcher() = default;
AddedTokenMatcher::~AddedTokenMatcher() = default;
AddedTokenMatcher::AddedTokenMatcher(AddedTokenMatcher&&) noexcept = default;
AddedTokenMatcher& AddedTokenMatcher::operator=(AddedTokenMatcher&&) noexcept = default;

void AddedTokenMatcher::build(const std::vector<const AddedToken*>& tokens, const std::vector<std::string>& patterns) {
  trie_ = std::make_unique<Trie>();
  trie_->tokens = tokens;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (patterns[i].empty()) continue;
    trie_->insert(patterns[i], static_cast<int32_t>(i));
    trie_->first_byte[static_cast<unsigned char>(patterns[i][0])] = true;
  }
}

bool AddedTokenMatcher::empty() const { return !trie_ || trie_->nodes[0].children.empty(); }

namespace {

// Code point ending just before byte offset `end` (which is > 0).
char32_t char_before(std::string_view s, size_t end, size_t* begin) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  size_t len = 0;
  *begin = b;
  return decode_utf8_at(s, b, &len);
}

}  // namespace

std::vector<Segment> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<Segment> out;
  size_t emitted = 0;  // end of the last segment pushed
  if (!empty()) {
    size_t pos = 0;
    while (pos < text.size()) {
      if (!trie_->first_byte[static_cast<unsigned char>(text[pos])]) {
        ++pos;
        continue;
      }
      const auto [tok_index, len] = trie_->longest_at(text, pos);
      if (tok_index < 0) {
        ++pos;
        continue;
      }
      const AddedToken& tok = *trie_->tokens[tok_index];
      size_t begin = pos, end = pos + len;
      // Like the Aho-Corasick iterator, scanning resumes after this match
      // even when single_word then rejects it.
      pos = end;
      if (tok.single_word) {
        size_t unused = 0;
        const bool word_before = begin > 0 && is_word_char(char_before(text, begin, &unused));
        size_t clen = 0;
        const bool word_after = end < text.size() && is_word_char(decode_utf8_at(text, end, &clen));
        if (word_before || word_after) continue;
      }
      if (tok.lstrip) {
        // Absorb whitespace on the left, but never into the previous segment
        // that an earlier token already claimed.
        while (begin > emitted) {
          size_t cb = 0;
          if (!is_whitespace(char_before(text, begin, &cb))) break;
          begin = cb;
        }
      }
      if (tok.rstrip) {
        while (end < text.size()) {
          size_t clen = 0;
          if (!is_whitespace(decode_utf8_at(text, end, &clen))) break;
          end += clen;
        }
        pos = end;
      }
      if (begin < emitted) continue;  // overlaps what an rstrip already took
      if (begin > emitted) out.push_back({emitted, begin, -1});
      out.push_back({begin, end, tok.id});
      emitted = end;
    }
  }
  if (emitted < text.size()) out.push_back({emitted, text.size(), -1});
  return out;
}

}  // namespace tandem::model::tok
