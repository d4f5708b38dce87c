// Any JSON object: a pushdown recogniser over bytes whose configurations
// (open containers, lexer state) are numbered as they are met, so it walks
// like any other lazy automaton. The depth bound keeps the count finite.
#include <cctype>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "lazy_dfa.h"
#include "tandem/model/guided.h"

namespace tandem::model {
namespace {

enum Mode : uint8_t {
  kTop,       // before the outermost '{'
  kValue,     // a value is due (after ':' or an array's ',')
  kArrFirst,  // after '[': a value or ']'
  kObjFirst,  // after '{': a key or '}'
  kObjKey,    // after an object's ',': a key
  kColon,     // after a key
  kAfter,     // after a value in a container: ',' or the closer
  kString,    // inside a string (key or value)
  kNumber,
  kLiteral,  // true, false or null, partly read
  kDone,     // the outermost object closed
};

// Number sub-states; the ones marked may end the number.
enum NumberState : uint8_t { kMinus, kZero /*end*/, kInt /*end*/, kDot, kFrac /*end*/, kExp, kExpSign, kExpDigits /*end*/ };
bool number_may_end(uint8_t s) { return s == kZero || s == kInt || s == kFrac || s == kExpDigits; }

// String sub-states.
enum StringState : uint8_t { kPlain, kEscape, kHex1, kHex2, kHex3, kHex4, kCont1, kCont2, kCont3 };

struct Config {
  std::string stack;  // '{' and '['
  uint8_t mode = kTop;
  uint8_t sub = 0;
  uint8_t aux = 0;  // string: is a key; literal: which (0 true, 1 false, 2 null); string cont: first-byte range
  uint8_t ws = 0;   // whitespace bytes in a row
  auto tie() const { return std::tie(stack, mode, sub, aux, ws); }
  bool operator<(const Config& o) const { return tie() < o.tie(); }
};

constexpr const char* kLiterals[] = {"true", "false", "null"};

bool is_ws(uint8_t b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }

// After a value ends.
void value_done(Config& c) {
  c.mode = c.stack.empty() ? kDone : kAfter;
  c.sub = c.aux = 0;
}

// One byte; false: not JSON.
bool step(Config& c, uint8_t b) {
  const bool was_ws = is_ws(b);
  auto whitespace = [&]() {
    if (++c.ws > kMaxJsonWhitespace) return false;
    return true;
  };
  auto open = [&](char kind) {
    if (static_cast<int>(c.stack.size()) >= kMaxJsonDepth) return false;
    c.stack.push_back(kind);
    c.mode = kind == '{' ? kObjFirst : kArrFirst;
    return true;
  };
  auto close = [&](char kind) {
    if (c.stack.empty() || c.stack.back() != kind) return false;
    c.stack.pop_back();
    value_done(c);
    return true;
  };
  // A value starting with b (kValue, kArrFirst).
  auto begin_value = [&]() {
    if (b == '{' || b == '[') return open(static_cast<char>(b));
    if (b == '"') {
      c.mode = kString;
      c.sub = kPlain;
      c.aux = 0;
      return true;
    }
    if (b == '-' || (b >= '0' && b <= '9')) {
      c.mode = kNumber;
      c.sub = b == '-' ? kMinus : b == '0' ? kZero : kInt;
      return true;
    }
    for (uint8_t k = 0; k < 3; ++k)
      if (b == static_cast<uint8_t>(kLiterals[k][0])) {
        c.mode = kLiteral;
        c.aux = k;
        c.sub = 1;
        return true;
      }
    return false;
  };

  if (c.mode != kString && c.mode != kNumber && c.mode != kLiteral) {
    if (was_ws) return c.mode != kDone && whitespace();
    c.ws = 0;
  }
  switch (c.mode) {
    case kTop:
      return b == '{' && open('{');
    case kValue:
      return begin_value();
    case kArrFirst:
      if (b == ']') return close('[');
      return begin_value();
    case kObjFirst:
      if (b == '}') return close('{');
      [[fallthrough]];
    case kObjKey:
      if (b != '"') return false;
      c.mode = kString;
      c.sub = kPlain;
      c.aux = 1;
      return true;
    case kColon:
      if (b != ':') return false;
      c.mode = kValue;
      return true;
    case kAfter:
      if (b == ',') {
        c.mode = c.stack.back() == '{' ? kObjKey : kValue;
        return true;
      }
      if (b == '}') return close('{');
      if (b == ']') return close('[');
      return false;
    case kString:
      switch (c.sub) {
        case kPlain:
          if (b == '"') {
            if (c.aux == 1) {
              c.mode = kColon;
              c.sub = c.aux = 0;
            } else {
              value_done(c);
            }
            return true;
          }
          if (b == '\\') {
            c.sub = kEscape;
            return true;
          }
          if (b < 0x20) return false;
          if (b < 0x80) return true;
          // A UTF-8 lead byte: remember how many continuation bytes follow and
          // the range of the first (no overlongs, surrogates or > U+10FFFF).
          if (b >= 0xC2 && b <= 0xDF) {
            c.sub = kCont1;
            c.aux &= 1;
            return true;
          }
          if (b >= 0xE0 && b <= 0xEF) {
            c.sub = kCont2;
            c.aux = static_cast<uint8_t>((c.aux & 1) | ((b == 0xE0 ? 1 : b == 0xED ? 2 : 0) << 1));
            return true;
          }
          if (b >= 0xF0 && b <= 0xF4) {
            c.sub = kCont3;
            c.aux = static_cast<uint8_t>((c.aux & 1) | ((b == 0xF0 ? 3 : b == 0xF4 ? 4 : 0) << 1));
            return true;
          }
          return false;
        case kEscape:
          if (b == 'u') {
            c.sub = kHex1;
            return true;
          }
          if (std::string_view("\"\\/bfnrt").find(static_cast<char>(b)) == std::string_view::npos) return false;
          c.sub = kPlain;
          return true;
        case kHex1:
        case kHex2:
        case kHex3:
        case kHex4:
          if (!std::isxdigit(b)) return false;
          c.sub = c.sub == kHex4 ? static_cast<uint8_t>(kPlain) : static_cast<uint8_t>(c.sub + 1);
          return true;
        case kCont1:
        case kCont2:
        case kCont3: {
          uint8_t lo = 0x80, hi = 0xBF;
          switch (c.aux >> 1) {
            case 1: lo = 0xA0; break;  // after E0
            case 2: hi = 0x9F; break;  // after ED
            case 3: lo = 0x90; break;  // after F0
            case 4: hi = 0x8F; break;  // after F4
            default: break;
          }
          if (b < lo || b > hi) return false;
          c.aux &= 1;  // the range applies to the first continuation byte only
          c.sub = c.sub == kCont1 ? static_cast<uint8_t>(kPlain) : static_cast<uint8_t>(c.sub - 1);
          return true;
        }
        default:
          return false;
      }
    case kNumber: {
      const bool digit = b >= '0' && b <= '9';
      switch (c.sub) {
        case kMinus:
          if (!digit) return false;
          c.sub = b == '0' ? kZero : kInt;
          return true;
        case kZero:
        case kInt:
          if (digit && c.sub == kInt) return true;
          if (b == '.') {
            c.sub = kDot;
            return true;
          }
          if (b == 'e' || b == 'E') {
            c.sub = kExp;
            return true;
          }
          break;
        case kDot:
          if (!digit) return false;
          c.sub = kFrac;
          return true;
        case kFrac:
          if (digit) return true;
          if (b == 'e' || b == 'E') {
            c.sub = kExp;
            return true;
          }
          break;
        case kExp:
          if (b == '+' || b == '-') {
            c.sub = kExpSign;
            return true;
          }
          [[fallthrough]];
        case kExpSign:
          if (!digit) return false;
          c.sub = kExpDigits;
          return true;
        case kExpDigits:
          if (digit) return true;
          break;
        default:
          return false;
      }
      if (!number_may_end(c.sub)) return false;
      // The number ended; the byte belongs to what follows it.
      value_done(c);
      return step(c, b);
    }
    case kLiteral: {
      const char* lit = kLiterals[c.aux];
      if (b != static_cast<uint8_t>(lit[c.sub])) return false;
      if (lit[++c.sub] == '\0') value_done(c);
      return true;
    }
    case kDone:
    default:
      return false;
  }
}

class JsonObjectAutomaton final : public guided::LazyDfa {
 public:
  JsonObjectAutomaton() { start_ = intern(Config{}); }
  int32_t start() override { return start_; }
  bool accepting(int32_t state) override { return configs_[static_cast<size_t>(state)].mode == kDone; }

 private:
  int32_t compute_next(int32_t state, uint8_t byte) override {
    Config c = configs_[static_cast<size_t>(state)];
    if (!step(c, byte)) return kDead;
    return intern(c);
  }
  int32_t intern(const Config& c) {
    auto it = ids_.find(c);
    if (it != ids_.end()) return it->second;
    const int32_t id = add_state();
    if (id == kDead) return kDead;
    ids_.emplace(c, id);
    configs_.push_back(c);
    return id;
  }

  std::map<Config, int32_t> ids_;
  std::vector<Config> configs_;
  int32_t start_ = kDead;
};

}  // namespace

std::unique_ptr<ByteAutomaton> json_object_automaton() { return std::make_unique<JsonObjectAutomaton>(); }

}  // namespace tandem::model
