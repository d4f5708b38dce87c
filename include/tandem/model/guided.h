// Guided (structured) decoding: the output is held to a regular expression, a
// JSON schema, a list of choices, or any JSON object. A grammar becomes a byte
// automaton over the UTF-8 text the user will read; a TokenGuide walks the
// tokenizer's vocabulary through it to say which tokens may come next. The
// engine masks the others out of the logits before sampling.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"
#include "tandem/model/tokenizer.h"

namespace tandem::model {

// A deterministic automaton over bytes, built lazily as it is walked (a
// schema's full automaton can be far larger than the part a generation
// visits). Not thread-safe: TokenGuide serialises its use.
class ByteAutomaton {
 public:
  static constexpr int32_t kDead = -1;
  virtual ~ByteAutomaton() = default;
  virtual int32_t start() = 0;
  // The state after `byte`, or kDead when no accepted text continues this way.
  // An error (too many states) is reported by error() and gives kDead.
  virtual int32_t next(int32_t state, uint8_t byte) = 0;
  virtual bool accepting(int32_t state) = 0;
  // The first error met while building states; OK while there is none.
  virtual Status error() const = 0;
  // The transitions out of `state` built so far, 256 entries, kUnknown where
  // next() has not been asked yet; null if the automaton keeps no table. Valid
  // until the next call of next(). (The vocabulary walk reads it directly.)
  static constexpr int32_t kUnknown = -2;
  virtual const int32_t* transitions(int32_t /*state*/) const { return nullptr; }
  virtual size_t states() const { return 0; }  // built so far
  // Accepting, and no byte leads on: the text is complete.
  bool complete(int32_t state);
};

// `pattern` must match the whole text (leading ^ and trailing $ are allowed
// and change nothing). Syntax: the common subset of Python's and
// ECMAScript's: literals, escapes (\d \w \s and their negations, \n \t \r \f
// \v \0 \xHH \uHHHH, escaped punctuation), classes with ranges and negation,
// `.` (any character but a newline), groups (capturing, (?:...), (?P<n>...)),
// alternation, and the quantifiers * + ? {n} {n,} {n,m} (lazy forms accepted,
// matching the same texts). Backreferences, lookaround, anchors inside the
// pattern and inline flags are INVALID_ARGUMENT naming them.
Result<std::unique_ptr<ByteAutomaton>> compile_regex(std::string_view pattern);

// Any JSON object (RFC 8259), nested up to kMaxJsonDepth containers, with at
// most kMaxJsonWhitespace whitespace bytes in a row (a model can otherwise
// pad forever).
inline constexpr int kMaxJsonDepth = 32;
inline constexpr int kMaxJsonWhitespace = 32;  // a newline and an indent 15 levels x 2 spaces deep
std::unique_ptr<ByteAutomaton> json_object_automaton();

// A regular expression for the JSON texts a schema allows (see
// docs/configuration.md for the supported keywords). Objects list their
// properties in the schema's order, required ones always and optional ones
// when the model writes them, and nothing else; whitespace is one optional
// space after `{`, `[`, `:` and `,` and before `}` and `]`. Keywords that
// would change what is valid and are not supported are INVALID_ARGUMENT
// naming them; annotations (title, description, default, examples, ...) are
// ignored.
Result<std::string> json_schema_to_regex(std::string_view schema_json);
// `pattern` (compile_regex's syntax) rewritten so that it only matches text a
// JSON string holds unescaped: every class loses '"', '\\' and the control
// characters (a schema's `pattern` describes the string's value, and `.`
// must not close the string early).
Result<std::string> json_string_pattern(std::string_view pattern);
// A regular expression matching exactly one of `choices`.
std::string choice_regex(const std::vector<std::string>& choices);
// The deepest nesting of arrays and objects in `value`, found without
// recursion (nlohmann's dump() and the schema converter recurse: callers
// refuse deep input with this first).
int json_depth(const nlohmann::ordered_json& value);
int json_depth(const nlohmann::json& value);
inline constexpr int kMaxJsonInputDepth = 256;
// `text` with every regex metacharacter escaped.
std::string regex_escape(std::string_view text);

// What a request's output is held to.
struct GuideSpec {
  enum class Kind { kNone, kRegex, kJsonObject };
  Kind kind = Kind::kNone;
  std::string regex;  // with kRegex (schemas and choices arrive as their regex)
  bool empty() const { return kind == Kind::kNone; }
  std::string key() const;  // identifies the grammar (a compile cache key)
};
// What a request asks its output to follow, as the APIs spell it (vLLM's
// guided_regex / guided_json / guided_choice / guided_json_object).
struct GuideRequest {
  std::string regex;
  std::string json_schema;  // JSON text
  std::vector<std::string> choice;
  bool json_object = false;
  bool empty() const { return regex.empty() && json_schema.empty() && choice.empty() && !json_object; }
};
// How the caller spells the four fields in its errors.
struct GuideFieldNames {
  std::string regex, json_schema, choice, json_object;
  // prefix + regex / json / choice / json_object (vLLM's names after "guided_").
  static GuideFieldNames with_prefix(const std::string& prefix) {
    return {prefix + "regex", prefix + "json", prefix + "choice", prefix + "json_object"};
  }
};
// The spec for `r`, checked (its regex parses and is not too large): kNone
// when nothing is asked; INVALID_ARGUMENT naming the field when it is wrong
// or more than one is set.
Result<GuideSpec> make_guide_spec(const GuideRequest& r, const GuideFieldNames& names);
inline Result<GuideSpec> make_guide_spec(const GuideRequest& r, const std::string& prefix) {
  return make_guide_spec(r, GuideFieldNames::with_prefix(prefix));
}

// The automaton for a spec (kNone: INVALID_ARGUMENT).
Result<std::unique_ptr<ByteAutomaton>> compile_guide(const GuideSpec& spec);

// The model's vocabulary as text: each token's bytes as they extend the
// output, in a trie. Special tokens and tokens with no text are left out (a
// guide never allows them; stop tokens are the engine's business). Built once
// per tokenizer and shared by every guide.
class TokenVocabulary {
 public:
  // `model_vocab`: the logits' width (may differ from the tokenizer's).
  static std::shared_ptr<const TokenVocabulary> build(const Tokenizer& tokenizer, int32_t model_vocab);
  int32_t size() const { return vocab_; }
  const std::string& bytes(int32_t token, bool first) const;
  // Whether some token's text at the start of the output differs from its
  // text later (a decoder that strips the first leading space).
  bool first_differs() const { return !first_bytes_.empty(); }

  // The texts' trie in flat arrays, nodes in depth-first order (node 0 the
  // root): node n's children are edges [edge_begin[n], edge_begin[n + 1])
  // sorted by byte, and the tokens whose text ends at n are tokens
  // [token_begin[n], token_begin[n + 1]). Flat so that a mask's walk over
  // every node stays in a few arrays.
  struct Trie {
    std::vector<int32_t> edge_begin, token_begin;
    std::vector<uint8_t> edge_byte;
    std::vector<int32_t> edge_node, tokens;
    int32_t nodes() const { return static_cast<int32_t>(edge_begin.size()) - 1; }
  };
  const Trie& trie(bool first) const { return first && first_differs() ? first_trie_ : trie_; }

 private:
  int32_t vocab_ = 0;
  std::vector<std::string> bytes_;
  std::vector<std::string> first_bytes_;  // empty unless some token differs
  Trie trie_, first_trie_;
};

// One grammar over one vocabulary, shared by every sequence that uses it.
// Thread-safe. Masks are cached per state.
class TokenGuide {
 public:
  struct State {
    int32_t automaton = ByteAutomaton::kDead;
    bool first = true;  // nothing generated yet
  };
  TokenGuide(std::unique_ptr<ByteAutomaton> automaton, std::shared_ptr<const TokenVocabulary> vocab);

  State start();
  // Text tokens that keep the output a prefix of an accepted text: a bitmask
  // of ceil(vocab / 64) words, bit t of word t / 64. Errors: the automaton
  // outgrew its limit.
  Result<std::shared_ptr<const std::vector<uint64_t>>> allowed(State state);
  // The state after `token`; automaton kDead when it was not allowed.
  State advance(State state, int32_t token);
  bool accepting(State state);
  bool complete(State state);  // accepting and nothing may follow
  int32_t vocab_size() const { return vocab_->size(); }
  // Past half its automaton's state limit, or failed at it: new requests
  // should get a fresh compile (GuideCache does) so that the ones still on
  // this guide keep the headroom. Read without locking.
  bool retired() const { return retired_.load(std::memory_order_relaxed); }

  // Masks kept per guide (each vocab / 8 bytes: 19 KB at 152k tokens); past
  // it the cache starts over.
  static constexpr size_t kMaxCachedMasks = 512;

 private:
  std::mutex mu_;
  std::unique_ptr<ByteAutomaton> automaton_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  std::unordered_map<int64_t, std::shared_ptr<const std::vector<uint64_t>>> masks_;
  std::atomic<bool> retired_{false};
  void check_wear();  // with mu_ held
};

// Compiled guides by grammar, for a server: the vocabulary is built on first
// use, a grammar compiled once and shared while it is in use or among the
// `capacity` most recently used; one whose automaton outgrew its limit is
// compiled afresh on the next request. Thread-safe.
class GuideCache {
 public:
  GuideCache(const Tokenizer* tokenizer, int32_t model_vocab, size_t capacity = 32)
      : tokenizer_(tokenizer), model_vocab_(model_vocab), capacity_(capacity) {}
  // FAILED_PRECONDITION without a tokenizer; the compile's error otherwise.
  Result<std::shared_ptr<TokenGuide>> get(const GuideSpec& spec);

 private:
  const Tokenizer* tokenizer_;
  int32_t model_vocab_;
  size_t capacity_;
  std::mutex mu_;
  std::shared_ptr<const TokenVocabulary> vocab_;
  std::vector<std::pair<std::string, std::shared_ptr<TokenGuide>>> recent_;  // most recent last
};

// Sets logits[t] to -inf for every token t < n the mask does not allow.
void mask_logits(const std::vector<uint64_t>& mask, float* logits, int64_t n);

inline bool mask_allows(const std::vector<uint64_t>& mask, int32_t token) {
  return token >= 0 && static_cast<size_t>(token) / 64 < mask.size() && ((mask[static_cast<size_t>(token) / 64] >> (token % 64)) & 1u);
}

}  // namespace tandem::model
