// Regular expression -> byte NFA (Thompson, built back to front) -> DFA by
// subset construction on demand. Characters are code points; a class becomes
// the UTF-8 byte sequences of its ranges, so the automaton reads the output's
// bytes directly.
#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "lazy_dfa.h"
#include "tandem/model/guided.h"

namespace tandem::model {
namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr int kMaxRepeat = 1000;
constexpr size_t kMaxNfaStates = size_t{1} << 21;
constexpr size_t kMaxPatternBytes = size_t{1} << 17;
// Group nesting (the parser and the NFA builder recurse on it).
constexpr int kMaxNesting = 200;
// NFA-building steps: repeats of an empty body add no states but still cost
// time, so the budget counts steps, not states.
constexpr int64_t kMaxBuildSteps = int64_t{1} << 23;

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;  // code point ranges, inclusive

// Sorted, merged, and without the surrogates (not characters in UTF-8).
Ranges normalise(Ranges r) {
  Ranges split;
  for (auto [lo, hi] : r) {
    if (lo <= 0xDFFF && hi >= 0xD800) {
      if (lo < 0xD800) split.push_back({lo, 0xD7FF});
      if (hi > 0xDFFF) split.push_back({0xE000, hi});
    } else {
      split.push_back({lo, hi});
    }
  }
  std::sort(split.begin(), split.end());
  Ranges out;
  for (auto [lo, hi] : split) {
    if (!out.empty() && lo <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, hi);
    } else {
      out.push_back({lo, hi});
    }
  }
  return out;
}

Ranges complement(const Ranges& r) {
  Ranges n = normalise(r), out;
  uint32_t next = 0;
  for (auto [lo, hi] : n) {
    if (lo > next) out.push_back({next, lo - 1});
    next = hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return normalise(out);
}

struct Ast {
  enum class Kind { kEmpty, kClass, kConcat, kAlt, kRepeat };
  Kind kind = Kind::kEmpty;
  Ranges ranges;                               // kClass
  std::vector<std::unique_ptr<Ast>> children;  // kConcat, kAlt, kRepeat (one)
  int min = 0, max = 0;                        // kRepeat; max -1: unbounded
};
using AstPtr = std::unique_ptr<Ast>;

AstPtr make(Ast::Kind kind) {
  auto a = std::make_unique<Ast>();
  a->kind = kind;
  return a;
}
AstPtr make_class(Ranges r) {
  auto a = make(Ast::Kind::kClass);
  a->ranges = normalise(std::move(r));
  return a;
}

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}};

class Parser {
 public:
  explicit Parser(std::string_view p) : p_(p) {}

  Result<AstPtr> parse() {
    if (p_.size() > kMaxPatternBytes)
      return invalid_argument("regex: the pattern is " + std::to_string(p_.size()) + " bytes, more than " +
                              std::to_string(kMaxPatternBytes));
    if (!is_valid_utf8(p_)) return invalid_argument("regex: the pattern is not valid UTF-8");
    AstPtr a = alternation();
    if (!err_.empty()) return invalid_argument("regex: " + err_);
    if (i_ < p_.size()) return invalid_argument("regex: unmatched ')' at offset " + std::to_string(i_));
    return a;
  }

 private:
  bool done() const { return i_ >= p_.size(); }
  void fail(const std::string& what) {
    if (err_.empty()) err_ = what + " at offset " + std::to_string(i_);
    i_ = p_.size();
  }

  AstPtr alternation() {
    auto alt = make(Ast::Kind::kAlt);
    alt->children.push_back(concat());
    while (!done() && p_[i_] == '|') {
      ++i_;
      alt->children.push_back(concat());
    }
    if (alt->children.size() == 1) return std::move(alt->children[0]);
    return alt;
  }

  // `^` opening and `$` closing a top-level alternative change nothing for a
  // whole-text match (as in ^\d{3}$|^\d{5}$); elsewhere (inside a group,
  // where they could contradict what surrounds them) they are refused.
  AstPtr concat() {
    auto c = make(Ast::Kind::kConcat);
    if (!done() && p_[i_] == '^' && depth_ == 0) ++i_;
    while (!done() && p_[i_] != '|' && p_[i_] != ')') {
      if (p_[i_] == '$') {
        if (depth_ == 0 && (i_ + 1 == p_.size() || p_[i_ + 1] == '|')) {
          ++i_;
          break;
        }
        fail("'$' inside the pattern (anchors only at the ends of a top-level alternative)");
        break;
      }
      AstPtr a = repeat();
      if (!err_.empty()) break;
      c->children.push_back(std::move(a));
    }
    if (c->children.size() == 1) return std::move(c->children[0]);
    return c;
  }

  bool number(int& out) {
    size_t start = i_;
    long v = 0;
    while (!done() && p_[i_] >= '0' && p_[i_] <= '9') {
      v = v * 10 + (p_[i_] - '0');
      if (v > kMaxRepeat) {
        fail("a repetition count above " + std::to_string(kMaxRepeat));
        return false;
      }
      ++i_;
    }
    out = static_cast<int>(v);
    return i_ > start;
  }

  AstPtr repeat() {
    AstPtr a = atom();
    bool repeated = false;
    while (err_.empty() && !done()) {
      int lo = 0, hi = -1;
      const char c = p_[i_];
      if (c == '*') {
        ++i_;
      } else if (c == '+') {
        lo = 1;
        ++i_;
      } else if (c == '?') {
        hi = 1;
        ++i_;
      } else if (c == '{') {
        const size_t save = i_;
        ++i_;
        if (!number(lo)) {
          if (!err_.empty()) return a;
          i_ = save;  // a literal '{' (as Python reads "a{" or "a{x}")
          break;
        }
        hi = lo;
        if (!done() && p_[i_] == ',') {
          ++i_;
          hi = -1;
          int h = 0;
          if (number(h)) hi = h;
          if (!err_.empty()) return a;
        }
        if (done() || p_[i_] != '}') {
          i_ = save;
          break;
        }
        ++i_;
        if (hi >= 0 && hi < lo) {
          fail("a repetition {" + std::to_string(lo) + "," + std::to_string(hi) + "} with max below min");
          return a;
        }
      } else {
        break;
      }
      if (repeated) {
        fail("a quantifier on a quantifier (group the first: (?:a*)*)");
        return a;
      }
      repeated = true;
      if (!done() && p_[i_] == '?') ++i_;  // lazy: the same texts match
      if (!done() && p_[i_] == '+') {
        fail("possessive quantifiers");
        return a;
      }
      auto r = make(Ast::Kind::kRepeat);
      r->min = lo;
      r->max = hi;
      r->children.push_back(std::move(a));
      a = std::move(r);
    }
    return a;
  }

  uint32_t utf8_char() {
    const auto b = static_cast<unsigned char>(p_[i_]);
    int len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(p_[i_ + k]) & 0x3F);
    i_ += len;
    return cp;
  }

  bool hex(int digits, uint32_t& out) {
    out = 0;
    for (int k = 0; k < digits; ++k) {
      if (done() || !std::isxdigit(static_cast<unsigned char>(p_[i_]))) {
        fail("a \\x or \\u escape needs " + std::to_string(digits) + " hex digits");
        return false;
      }
      const char h = p_[i_++];
      out = out * 16 + static_cast<uint32_t>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
    }
    return true;
  }

  // After a backslash: the escape's ranges. `in_class`: \b would be a backspace there.
  Ranges escape(bool in_class) {
    if (done()) {
      fail("a trailing backslash");
      return {};
    }
    const char c = p_[i_];
    if (std::isalnum(static_cast<unsigned char>(c))) {
      ++i_;
      uint32_t v = 0;
      switch (c) {
        case 'd': return kDigit;
        case 'D': return complement(kDigit);
        case 'w': return kWord;
        case 'W': return complement(kWord);
        case 's': return kSpace;
        case 'S': return complement(kSpace);
        case 'n': return {{'\n', '\n'}};
        case 't': return {{'\t', '\t'}};
        case 'r': return {{'\r', '\r'}};
        case 'f': return {{'\f', '\f'}};
        case 'v': return {{'\v', '\v'}};
        case '0': return {{0, 0}};
        case 'x':
          if (hex(2, v)) return {{v, v}};
          return {};
        case 'u':
          if (hex(4, v)) return {{v, v}};
          return {};
        case 'b':
          if (in_class) return {{'\b', '\b'}};
          fail("word boundaries (\\b)");
          return {};
        default:
          --i_;
          fail(std::string("the escape \\") + c + (c >= '1' && c <= '9' ? " (backreferences)" : ""));
          return {};
      }
    }
    const uint32_t cp = utf8_char();
    return {{cp, cp}};
  }

  AstPtr char_class() {
    ++i_;  // '['
    bool negate = false;
    if (!done() && p_[i_] == '^') {
      negate = true;
      ++i_;
    }
    Ranges r;
    bool first = true;
    while (true) {
      if (done()) {
        fail("an unterminated '['");
        return make(Ast::Kind::kEmpty);
      }
      if (p_[i_] == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      Ranges item;
      if (p_[i_] == '\\') {
        ++i_;
        item = escape(true);
      } else if (p_[i_] == '[' && i_ + 1 < p_.size() && p_[i_ + 1] == ':') {
        fail("POSIX classes ([:name:])");
      } else {
        const uint32_t cp = utf8_char();
        item = {{cp, cp}};
      }
      if (!err_.empty()) return make(Ast::Kind::kEmpty);
      // A range a-b (a '-' before ']' is literal).
      if (item.size() == 1 && item[0].first == item[0].second && i_ + 1 < p_.size() && p_[i_] == '-' &&
          p_[i_ + 1] != ']') {
        ++i_;
        Ranges hi;
        if (p_[i_] == '\\') {
          ++i_;
          hi = escape(true);
        } else {
          const uint32_t cp = utf8_char();
          hi = {{cp, cp}};
        }
        if (!err_.empty()) return make(Ast::Kind::kEmpty);
        if (hi.size() != 1 || hi[0].first != hi[0].second) {
          fail("a class range ending in a class escape");
          return make(Ast::Kind::kEmpty);
        }
        if (hi[0].first < item[0].first) {
          fail("a class range out of order");
          return make(Ast::Kind::kEmpty);
        }
        item = {{item[0].first, hi[0].first}};
      }
      r.insert(r.end(), item.begin(), item.end());
    }
    return make_class(negate ? complement(r) : r);
  }

  AstPtr atom() {
    const char c = p_[i_];
    if (c == '(') {
      ++i_;
      if (!done() && p_[i_] == '?') {
        ++i_;
        if (!done() && p_[i_] == ':') {
          ++i_;
        } else if (!done() && (p_[i_] == 'P' || p_[i_] == '<') &&
                   !(p_[i_] == '<' && i_ + 1 < p_.size() && (p_[i_ + 1] == '=' || p_[i_ + 1] == '!'))) {
          if (p_[i_] == 'P') ++i_;
          if (done() || p_[i_] != '<') {
            fail("a group (?P...) other than (?P<name>...)");
            return make(Ast::Kind::kEmpty);
          }
          const size_t close = p_.find('>', i_);
          if (close == std::string_view::npos) {
            fail("an unterminated group name");
            return make(Ast::Kind::kEmpty);
          }
          i_ = close + 1;
        } else if (!done() && (p_[i_] == '=' || p_[i_] == '!' || p_[i_] == '<')) {
          --i_;
          fail("lookaround groups");
          return make(Ast::Kind::kEmpty);
        } else {
          --i_;
          fail("inline flags or other (? groups");
          return make(Ast::Kind::kEmpty);
        }
      }
      if (++depth_ > kMaxNesting) {
        fail("groups nested more than " + std::to_string(kMaxNesting) + " deep");
        return make(Ast::Kind::kEmpty);
      }
      AstPtr inner = alternation();
      --depth_;
      if (!err_.empty()) return inner;
      if (done() || p_[i_] != ')') {
        fail("an unterminated '('");
        return inner;
      }
      ++i_;
      return inner;
    }
    if (c == '[') return char_class();
    if (c == '.') {
      ++i_;
      return make_class(complement({{'\n', '\n'}}));
    }
    if (c == '\\') {
      ++i_;
      Ranges r = escape(false);
      return make_class(std::move(r));
    }
    if (c == '*' || c == '+' || c == '?') {
      fail(std::string("a '") + c + "' with nothing to repeat");
      return make(Ast::Kind::kEmpty);
    }
    if (c == '^') {
      fail("'^' inside the pattern (anchors only at the ends of a top-level alternative)");
      return make(Ast::Kind::kEmpty);
    }
    const uint32_t cp = utf8_char();
    return make_class({{cp, cp}});
  }

  std::string_view p_;
  size_t i_ = 0;
  int depth_ = 0;
  std::string err_;
};

// The UTF-8 byte-range sequences of code points [lo, hi] (no surrogates):
// each is a list of byte ranges, one per byte.
using ByteSeq = std::vector<std::pair<uint8_t, uint8_t>>;

int encode(uint32_t cp, uint8_t* out) {
  if (cp < 0x80) {
    out[0] = static_cast<uint8_t>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<uint8_t>(0xC0 | (cp >> 6));
    out[1] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<uint8_t>(0xE0 | (cp >> 12));
    out[1] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<uint8_t>(0xF0 | (cp >> 18));
  out[1] = static_cast<uint8_t>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
  return 4;
}

void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>& out) {
  if (lo > hi) return;
  // Split where the encoded length changes.
  for (uint32_t edge : {0x7Fu, 0x7FFu, 0xFFFFu}) {
    if (lo <= edge && hi > edge) {
      utf8_sequences(lo, edge, out);
      utf8_sequences(edge + 1, hi, out);
      return;
    }
  }
  if (hi < 0x80) {
    out.push_back({{static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)}});
    return;
  }
  // Split until every continuation byte spans a full or aligned range, so the
  // range is a product of per-byte ranges.
  for (int i = 1; i < 4; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  const int n = encode(lo, a);
  encode(hi, b);
  ByteSeq seq;
  for (int k = 0; k < n; ++k) seq.push_back({a[k], b[k]});
  out.push_back(std::move(seq));
}

// Thompson NFA. State 0 accepts. A state either reads a byte in [lo, hi] and
// goes to `next`, or has up to two epsilon edges.
struct NfaState {
  uint8_t lo = 1, hi = 0;  // empty range: no byte edge
  int32_t next = -1;
  int32_t eps[2] = {-1, -1};
};

class NfaBuilder {
 public:
  NfaBuilder() { states_.emplace_back(); }  // 0: accept

  // A state matching `a` then continuing at `cont`. -1 when too large.
  int32_t build(const Ast& a, int32_t cont) {
    if (cont < 0 || ++steps_ > kMaxBuildSteps) return -1;
    switch (a.kind) {
      case Ast::Kind::kEmpty:
        return cont;
      case Ast::Kind::kClass: {
        std::vector<ByteSeq> seqs;
        for (auto [lo, hi] : a.ranges) utf8_sequences(lo, hi, seqs);
        std::vector<int32_t> entries;
        for (const ByteSeq& seq : seqs) {
          int32_t t = cont;
          for (size_t k = seq.size(); k-- > 0;) {
            const int32_t s = add();
            if (s < 0) return -1;
            states_[s].lo = seq[k].first;
            states_[s].hi = seq[k].second;
            states_[s].next = t;
            t = s;
          }
          entries.push_back(t);
        }
        return alternatives(entries);
      }
      case Ast::Kind::kConcat: {
        int32_t t = cont;
        for (size_t k = a.children.size(); k-- > 0;) t = build(*a.children[k], t);
        return t;
      }
      case Ast::Kind::kAlt: {
        std::vector<int32_t> entries;
        for (const AstPtr& c : a.children) {
          entries.push_back(build(*c, cont));
          if (entries.back() < 0) return -1;
        }
        return alternatives(entries);
      }
      case Ast::Kind::kRepeat: {
        const Ast& child = *a.children[0];
        int32_t t = cont;
        if (a.max < 0) {
          const int32_t loop = add();
          if (loop < 0) return -1;
          const int32_t body = build(child, loop);
          if (body < 0) return -1;
          states_[loop].eps[0] = body;
          states_[loop].eps[1] = cont;
          t = loop;
        } else {
          for (int k = a.min; k < a.max; ++k) {
            const int32_t body = build(child, t);
            const int32_t split = add();
            if (body < 0 || split < 0) return -1;
            states_[split].eps[0] = body;
            states_[split].eps[1] = cont;
            t = split;
          }
        }
        for (int k = 0; k < a.min; ++k) t = build(child, t);
        return t;
      }
    }
    return -1;
  }

  std::vector<NfaState> take() { return std::move(states_); }

 private:
  int32_t add() {
    if (states_.size() >= kMaxNfaStates) return -1;
    states_.emplace_back();
    return static_cast<int32_t>(states_.size() - 1);
  }
  // A state branching to every entry (none: a state with no edges, matching nothing).
  int32_t alternatives(const std::vector<int32_t>& entries) {
    if (entries.size() == 1) return entries[0];
    if (entries.empty()) return add();
    int32_t t = entries.back();
    for (size_t k = entries.size() - 1; k-- > 0;) {
      const int32_t s = add();
      if (s < 0) return -1;
      states_[s].eps[0] = entries[k];
      states_[s].eps[1] = t;
      t = s;
    }
    return t;
  }

  std::vector<NfaState> states_;
  int64_t steps_ = 0;
};

// Subset construction on demand: a DFA state is the set of the NFA's
// byte-reading states (and the accept state) reachable without reading.
class RegexAutomaton final : public guided::LazyDfa {
 public:
  RegexAutomaton(std::vector<NfaState> nfa, int32_t start) : nfa_(std::move(nfa)) {
    std::vector<int32_t> set;
    closure({start}, set);
    start_ = intern(set);
  }

  int32_t start() override { return start_; }
  bool accepting(int32_t state) override { return accepting_[static_cast<size_t>(state)]; }

 private:
  int32_t compute_next(int32_t state, uint8_t byte) override {
    std::vector<int32_t> moved;
    for (int32_t s : *sets_[static_cast<size_t>(state)]) {
      const NfaState& n = nfa_[static_cast<size_t>(s)];
      if (byte >= n.lo && byte <= n.hi) moved.push_back(n.next);
    }
    if (moved.empty()) return kDead;
    std::vector<int32_t> set;
    closure(moved, set);
    if (set.empty()) return kDead;
    return intern(set);
  }

  void closure(const std::vector<int32_t>& from, std::vector<int32_t>& out) {
    ++epoch_;
    if (mark_.size() < nfa_.size()) mark_.assign(nfa_.size(), 0);
    std::vector<int32_t> stack(from.begin(), from.end());
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      if (s < 0 || mark_[static_cast<size_t>(s)] == epoch_) continue;
      mark_[static_cast<size_t>(s)] = epoch_;
      const NfaState& n = nfa_[static_cast<size_t>(s)];
      if (s == 0 || n.lo <= n.hi) out.push_back(s);
      for (int32_t e : n.eps) stack.push_back(e);
    }
    std::sort(out.begin(), out.end());
  }

  // A state's NFA set is stored once (as the map's key; sets_ points at it),
  // and all sets together are bounded: one state of a pattern like
  // (?:a{0,1000}){0,1000} can hold a million NFA states.
  int32_t intern(const std::vector<int32_t>& set) {
    auto it = ids_.find(set);
    if (it != ids_.end()) return it->second;
    if (set_entries_ + set.size() > kMaxSetEntries) {
      fail(resource_exhausted("guided decoding: the grammar's automaton outgrew " + std::to_string(kMaxSetEntries) +
                              " NFA states across its DFA states"));
      return kDead;
    }
    const int32_t id = add_state();
    if (id == kDead) return kDead;
    it = ids_.emplace(set, id).first;
    set_entries_ += set.size();
    sets_.push_back(&it->first);
    accepting_.push_back(!set.empty() && set[0] == 0);
    return id;
  }

  static constexpr size_t kMaxSetEntries = size_t{1} << 24;  // 64 MiB of ids (and the map's nodes)
  std::vector<NfaState> nfa_;
  std::map<std::vector<int32_t>, int32_t> ids_;
  std::vector<const std::vector<int32_t>*> sets_;  // keys of ids_, by state
  size_t set_entries_ = 0;
  std::vector<bool> accepting_;
  std::vector<uint32_t> mark_;
  uint32_t epoch_ = 0;
  int32_t start_ = kDead;
};

// A regex for the texts of `a` with every class cut to what a JSON string
// holds unescaped (no '"', no '\\', no control characters).
std::string print_json_string(const Ast& a) {
  switch (a.kind) {
    case Ast::Kind::kEmpty:
      return "(?:)";
    case Ast::Kind::kClass: {
      Ranges cut;
      for (auto [lo, hi] : a.ranges) {
        // Remove 0x00-0x1F, '"' (0x22) and '\\' (0x5C).
        for (auto [blo, bhi] : Ranges{{0x20, 0x21}, {0x23, 0x5B}, {0x5D, kMaxCodePoint}}) {
          const uint32_t l = std::max(lo, blo), h = std::min(hi, bhi);
          if (l <= h) cut.push_back({l, h});
        }
      }
      if (cut.empty()) return "[^\\s\\S]";  // matches nothing
      auto esc = [](uint32_t cp) {
        if (cp < 0x80 && std::isalnum(static_cast<int>(cp))) return std::string(1, static_cast<char>(cp));
        if (cp < 0x10000) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04X", static_cast<unsigned>(cp));
          return std::string(buf);
        }
        uint8_t bytes[4];
        const int n = encode(cp, bytes);
        return std::string(reinterpret_cast<const char*>(bytes), static_cast<size_t>(n));
      };
      std::string out = "[";
      for (auto [lo, hi] : cut) out += lo == hi ? esc(lo) : esc(lo) + "-" + esc(hi);
      return out + "]";
    }
    case Ast::Kind::kConcat: {
      std::string out;
      for (const AstPtr& c : a.children) out += print_json_string(*c);
      return out;
    }
    case Ast::Kind::kAlt: {
      std::string out = "(?:";
      for (size_t i = 0; i < a.children.size(); ++i) out += (i ? "|" : "") + print_json_string(*a.children[i]);
      return out + ")";
    }
    case Ast::Kind::kRepeat: {
      std::string out = "(?:" + print_json_string(*a.children[0]) + ")";
      if (a.max < 0) return out + (a.min == 0 ? "*" : "{" + std::to_string(a.min) + ",}");
      return out + "{" + std::to_string(a.min) + "," + std::to_string(a.max) + "}";
    }
  }
  return "";
}

}  // namespace

Result<std::string> json_string_pattern(std::string_view pattern) {
  Parser parser(pattern);
  TANDEM_ASSIGN_OR_RETURN(AstPtr ast, parser.parse());
  return print_json_string(*ast);
}

Result<std::unique_ptr<ByteAutomaton>> compile_regex(std::string_view pattern) {
  Parser parser(pattern);
  TANDEM_ASSIGN_OR_RETURN(AstPtr ast, parser.parse());
  NfaBuilder builder;
  const int32_t start = builder.build(*ast, 0);
  if (start < 0)
    return invalid_argument("regex: the pattern is too large to guide (more than " + std::to_string(kMaxNfaStates) +
                            " automaton states or " + std::to_string(kMaxBuildSteps) +
                            " building steps; nested repetition counts multiply)");
  return std::unique_ptr<ByteAutomaton>(new RegexAutomaton(builder.take(), start));
}

std::string regex_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}/-").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

std::string choice_regex(const std::vector<std::string>& choices) {
  std::string out = "(?:";
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i) out += '|';
    out += regex_escape(choices[i]);
  }
  return out + ")";
}

}  // namespace tandem::model
