// The guided-decoding automata against independent references: std::regex for
// regular expressions, nlohmann::json for JSON, and hand-written cases for what
// a schema allows.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/model/guided.h"

namespace tandem::model {
namespace {

std::unique_ptr<ByteAutomaton> regex(const std::string& pattern) {
  auto r = compile_regex(pattern);
  EXPECT_TRUE(r.is_ok()) << pattern << ": " << r.status().message();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

// nlohmann::json refuses numbers a double cannot hold; JSON itself does not.
bool has_huge_exponent(const std::string& text) {
  static const std::regex huge("[eE][+-]?[0-9]{3,}");
  return std::regex_search(text, huge);
}

// Whether the whole of `text` is accepted; `alive`: every prefix could still grow into a match.
bool accepts(ByteAutomaton& a, const std::string& text, bool* alive = nullptr) {
  int32_t s = a.start();
  for (char c : text) {
    s = a.next(s, static_cast<uint8_t>(c));
    if (s == ByteAutomaton::kDead) {
      if (alive) *alive = false;
      return false;
    }
  }
  if (alive) *alive = true;
  return a.accepting(s);
}

TEST(GuidedRegex, AgreesWithStdRegexOnRandomStrings) {
  const std::vector<std::string> patterns = {
      "a(b|c)*d", "[0-9]{2,4}", R"(\d+\.\d*)", "(ab|a)(bc|c)?", "[^a-c]x?", "x{3}", "(a|b){0,3}c",
      R"([a-z]+@[a-z]+\.(com|org))", ".*z", R"(\w\s\W)", "(?:foo|bar)+", "a{2,}b?", "(a*)*b", "", "a|",
      "[-a]+", "[a-]+", R"([\d.]+)", "(?:x|y|z){1,2}?0", R"(-?(0|[1-9][0-9]*)(\.[0-9]+)?)"};
  const std::string alphabet = "abcdxyz019.@ -_\nfor";
  std::mt19937 rng(7);
  for (const std::string& p : patterns) {
    auto a = regex(p);
    ASSERT_TRUE(a) << p;
    const std::regex reference(p, std::regex::ECMAScript);
    for (int trial = 0; trial < 3000; ++trial) {
      std::string s;
      const int len = static_cast<int>(rng() % 9);
      for (int k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
      const bool want = std::regex_match(s, reference);
      ASSERT_EQ(accepts(*a, s), want) << "pattern " << p << " on '" << s << "'";
    }
  }
  for (auto [p, s] : std::vector<std::pair<std::string, std::string>>{
           {"a(b|c)*d", "abcbcd"}, {"[0-9]{2,4}", "2024"}, {R"([a-z]+@[a-z]+\.(com|org))", "ab@cd.org"},
           {"(?:foo|bar)+", "foobarfoo"}, {"x{3}", "xxx"}}) {
    auto a = regex(p);
    EXPECT_TRUE(accepts(*a, s)) << p << " on " << s;
  }
}

TEST(GuidedRegex, ReadsUtf8AsCharacters) {
  auto greek = regex("[α-ω]+");
  EXPECT_TRUE(accepts(*greek, "αβγ"));
  EXPECT_FALSE(accepts(*greek, "abc"));
  EXPECT_FALSE(accepts(*greek, "\xCE"));  // half a character
  auto dot = regex(".");
  EXPECT_TRUE(accepts(*dot, "é"));
  EXPECT_TRUE(accepts(*dot, "😀"));
  EXPECT_TRUE(accepts(*dot, "x"));
  EXPECT_FALSE(accepts(*dot, "\n"));
  EXPECT_FALSE(accepts(*dot, "\xC0\x80"));       // overlong
  EXPECT_FALSE(accepts(*dot, "\xED\xA0\x80"));   // a surrogate
  EXPECT_FALSE(accepts(*dot, "\xF4\x90\x80\x80"));  // past U+10FFFF
  auto not_a = regex("[^a]");
  EXPECT_TRUE(accepts(*not_a, "ü"));
  EXPECT_FALSE(accepts(*not_a, "a"));
  auto lit = regex("日本(語)?");
  EXPECT_TRUE(accepts(*lit, "日本語"));
  EXPECT_TRUE(accepts(*lit, "日本"));
  auto esc = regex(R"(\u00e9\x41)");
  EXPECT_TRUE(accepts(*esc, "éA"));
}

TEST(GuidedRegex, AnchorsAtTheEndsChangeNothing) {
  auto a = regex("^ab$");
  EXPECT_TRUE(accepts(*a, "ab"));
  EXPECT_FALSE(accepts(*a, "abab"));
}

// Hostile patterns end in an error, quickly, not in a hang, a blown stack or
// an exhausted memory.
TEST(GuidedRegex, HostilePatternsAreRefusedNotRun) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"((((){1000}){1000}){1000}){1000}", "too large"},
      {"(((a{1000}){1000}){1000})", "too large"},
      {std::string(300, '(') + "a" + std::string(300, ')'), "nested more than"},
      {"a" + std::string(100000, '*'), "quantifier on a quantifier"},
      {"a{2}{3}", "quantifier on a quantifier"}};
  for (const auto& [p, want] : cases) {
    auto r = compile_regex(p);
    ASSERT_FALSE(r.is_ok()) << p.substr(0, 40);
    EXPECT_NE(r.status().message().find(want), std::string::npos) << p.substr(0, 40) << ": " << r.status().message();
  }
}

TEST(GuidedRegex, AnchorsMayOpenAndCloseEachAlternative) {
  auto a = regex(R"(^\d{3}$|^\d{5}$)");
  EXPECT_TRUE(accepts(*a, "123"));
  EXPECT_TRUE(accepts(*a, "12345"));
  EXPECT_FALSE(accepts(*a, "1234"));
  auto b = regex("^(?:a|b)$");
  EXPECT_TRUE(accepts(*b, "b"));
  // Inside a group an anchor could contradict what surrounds it: refused.
  for (const char* p : {"a$b", "a(^b)", "(a$)b", "(a|b$)", "x|y(^z)"}) EXPECT_FALSE(compile_regex(p).is_ok()) << p;
}

// A pattern whose DFA states would each remember a huge NFA set stops at a
// memory bound with an error, instead of growing without one.
TEST(GuidedRegex, HugeSubsetsStopAtTheirBound) {
  auto a = regex("(?:a{0,300}){0,300}");
  ASSERT_TRUE(a);
  int32_t s = a->start();
  int steps = 0;
  while (s != ByteAutomaton::kDead && steps < 100000) {
    s = a->next(s, 'a');
    ++steps;
  }
  EXPECT_LT(steps, 100000);
  ASSERT_FALSE(a->error().is_ok());
  EXPECT_EQ(a->error().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(a->error().message().find("NFA states"), std::string::npos) << a->error().message();
}

TEST(GuidedMask, MaskLogitsBansExactlyTheUnsetBits) {
  for (int64_t n : {1, 63, 64, 65, 130, 200}) {
    std::vector<uint64_t> mask((static_cast<size_t>(n) + 63) / 64, 0);
    std::mt19937 rng(static_cast<uint32_t>(n));
    for (int64_t t = 0; t < n; ++t)
      if (rng() % 3 != 0 || (t >= 64 && t < 128)) mask[static_cast<size_t>(t) / 64] |= uint64_t{1} << (t % 64);
    std::vector<float> logits(static_cast<size_t>(n), 1.0f);
    mask_logits(mask, logits.data(), n);
    for (int64_t t = 0; t < n; ++t)
      EXPECT_EQ(logits[static_cast<size_t>(t)] > -INFINITY, mask_allows(mask, static_cast<int32_t>(t))) << n << " " << t;
    std::vector<float> short_mask_logits(static_cast<size_t>(n), 1.0f);
    mask_logits({}, short_mask_logits.data(), n);  // a mask shorter than the row allows nothing past it
    for (float l : short_mask_logits) EXPECT_EQ(l, -INFINITY);
  }
}

TEST(GuidedRegex, RefusesWhatItCannotMatchNamingIt) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"(a", "unterminated '('"},  {"a)", "unmatched ')'"},        {"[a", "unterminated '['"},
      {"a{3,1}", "max below min"}, {R"((a)\1)", "backreferences"}, {"(?=a)", "lookaround"},
      {"a^b", "'^' inside"},       {"a$b", "'$' inside"},          {"*a", "nothing to repeat"},
      {"(?i)a", "inline flags"},   {R"(\bx)", "word boundaries"},  {"a{5000}", "above 1000"},
      {"[z-a]", "out of order"},   {"a*+", "possessive"}};
  for (const auto& [p, want] : cases) {
    auto r = compile_regex(p);
    ASSERT_FALSE(r.is_ok()) << p;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << p;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << p << ": " << r.status().message();
  }
  EXPECT_FALSE(compile_regex("\xFF").is_ok());  // not UTF-8
}

TEST(GuidedRegex, ChoicesAndEscapingMatchLiterally) {
  auto a = regex(choice_regex({"yes", "no", "a.b (c)", "x|y"}));
  for (const char* ok : {"yes", "no", "a.b (c)", "x|y"}) EXPECT_TRUE(accepts(*a, ok)) << ok;
  for (const char* bad : {"ye", "axb (c)", "x", "yesno", ""}) EXPECT_FALSE(accepts(*a, bad)) << bad;
}

TEST(GuidedRegex, ExposesCompleteStates) {
  auto a = regex("ab?");
  int32_t s = a->next(a->start(), 'a');
  EXPECT_TRUE(a->accepting(s));
  EXPECT_FALSE(a->complete(s));  // b may follow
  s = a->next(s, 'b');
  EXPECT_TRUE(a->complete(s));
}

// --- any JSON object -------------------------------------------------------

nlohmann::json random_json(std::mt19937& rng, int depth) {
  const int kind = static_cast<int>(rng() % (depth > 0 ? 7 : 5));
  switch (kind) {
    case 0: return nullptr;
    case 1: return (rng() & 1) != 0;
    case 2: return static_cast<int>(rng() % 2000) - 1000;
    case 3: return static_cast<double>(rng() % 100000) / 64.0 - 700.0;
    case 4: {
      const std::vector<std::string> pieces = {"a", "é", "\"", "\\", "\n", "日本", "😀", " ", "\t", "/", "x1"};
      std::string s;
      for (int k = static_cast<int>(rng() % 5); k > 0; --k) s += pieces[rng() % pieces.size()];
      return s;
    }
    case 5: {
      nlohmann::json arr = nlohmann::json::array();
      for (int k = static_cast<int>(rng() % 4); k > 0; --k) arr.push_back(random_json(rng, depth - 1));
      return arr;
    }
    default: {
      nlohmann::json obj = nlohmann::json::object();
      for (int k = static_cast<int>(rng() % 4); k > 0; --k) obj["k" + std::to_string(rng() % 10)] = random_json(rng, depth - 1);
      return obj;
    }
  }
}

TEST(GuidedJsonObject, AcceptsJsonObjectsAndEveryPrefixStaysAlive) {
  std::mt19937 rng(11);
  auto a = json_object_automaton();
  for (int trial = 0; trial < 400; ++trial) {
    nlohmann::json obj = nlohmann::json::object();
    for (int k = static_cast<int>(rng() % 4); k > 0; --k) obj["f" + std::to_string(k)] = random_json(rng, 3);
    for (int indent : {-1, 1}) {
      const std::string text = obj.dump(indent);
      bool alive = false;
      EXPECT_TRUE(accepts(*a, text, &alive)) << text;
      int32_t s = a->start();
      for (char c : text) s = a->next(s, static_cast<uint8_t>(c));
      EXPECT_TRUE(a->complete(s)) << text;  // nothing may follow the closing brace
    }
  }
}

TEST(GuidedJsonObject, AgreesWithAJsonParserOnMutatedTexts) {
  std::mt19937 rng(5);
  auto a = json_object_automaton();
  const std::string alphabet = "{}[]:,\"\\ 0123456789.eE+-truefalsn\tx";
  int accepted = 0;
  for (int trial = 0; trial < 6000; ++trial) {
    nlohmann::json obj = nlohmann::json::object();
    for (int k = static_cast<int>(rng() % 3); k > 0; --k) obj["f" + std::to_string(k)] = random_json(rng, 2);
    std::string text = obj.dump();
    for (int m = static_cast<int>(rng() % 3); m > 0; --m) {
      const size_t at = rng() % (text.size() + 1);
      switch (rng() % 3) {
        case 0: text.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
        case 1: if (at < text.size()) text.erase(at, 1); break;
        default: if (at < text.size()) text[at] = alphabet[rng() % alphabet.size()]; break;
      }
    }
    // The reference: valid JSON whose value is an object, with no whitespace
    // after it (the automaton ends the text at the closing brace).
    if (has_huge_exponent(text)) continue;
    bool want = nlohmann::json::accept(text);
    if (want) {
      const auto v = nlohmann::json::parse(text);
      const auto last = text.find_last_not_of(" \t\n\r");
      want = v.is_object() && last == text.size() - 1;
    }
    accepted += want;
    ASSERT_EQ(accepts(*a, text), want) << "'" << text << "'";
  }
  EXPECT_GT(accepted, 100);
}

TEST(GuidedJsonObject, BoundsWhitespaceAndDepth) {
  auto a = json_object_automaton();
  EXPECT_TRUE(accepts(*a, "{\"a\":" + std::string(kMaxJsonWhitespace, ' ') + "1}"));
  EXPECT_FALSE(accepts(*a, "{\"a\":" + std::string(kMaxJsonWhitespace + 1, ' ') + "1}"));
  std::string deep = "{\"a\":" + std::string(kMaxJsonDepth - 1, '[') + std::string(kMaxJsonDepth - 1, ']') + "}";
  EXPECT_TRUE(accepts(*a, deep));
  deep = "{\"a\":" + std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']') + "}";
  EXPECT_FALSE(accepts(*a, deep));
  EXPECT_FALSE(accepts(*a, "[1]"));
  EXPECT_FALSE(accepts(*a, "{\"a\":\"\x01\"}"));
  EXPECT_FALSE(accepts(*a, "{\"a\":\"\xC3\"}"));
}

// --- JSON schema -----------------------------------------------------------

std::unique_ptr<ByteAutomaton> schema(const std::string& text) {
  auto r = json_schema_to_regex(text);
  EXPECT_TRUE(r.is_ok()) << text << ": " << r.status().message();
  if (!r.is_ok()) return nullptr;
  return regex(r.value());
}

TEST(GuidedJsonSchema, ObjectsFollowPropertiesRequiredAndTypes) {
  auto a = schema(R"({"type": "object", "title": "Person",
    "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer", "minimum": 0},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                   "score": {"type": "number"}},
    "required": ["name", "age"]})");
  ASSERT_TRUE(a);
  for (const char* ok : {R"({"name": "Al", "age": 3})", R"({"name":"Al","age":30,"tags":["x", "y"]})",
                         R"({ "name": "", "age": 0, "score": -1.5e3 })", R"({"name": "Al", "age": 3, "score": 2})",
                         R"({"name": "\"é\"", "age": 7})"})
    EXPECT_TRUE(accepts(*a, ok)) << ok;
  for (const char* bad : {R"({"age": 3, "name": "Al"})", R"({"name": "Al"})", R"({"name": "Al", "age": -3})",
                          R"({"name": "Al", "age": 3, "tags": ["a", "b", "c"]})",
                          R"({"name": "Al", "age": 3, "extra": 1})", R"({"name": "Alfred", "age": 3})",
                          R"({"name": "Al", "age": 3.5})", R"({"name": "Al", "age": 3,})"})
    EXPECT_FALSE(accepts(*a, bad)) << bad;
}

TEST(GuidedJsonSchema, OptionalPropertiesMayComeFirstOrNotAtAll) {
  auto a = schema(R"({"properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "null"}}})");
  ASSERT_TRUE(a);
  for (const char* ok : {"{}", R"({"a": 1})", R"({"b": true})", R"({"c": null})", R"({"a": 1, "c": null})",
                         R"({"b": false, "c": null})", R"({"a": 1, "b": true, "c": null})"})
    EXPECT_TRUE(accepts(*a, ok)) << ok;
  for (const char* bad : {R"({"b": true, "a": 1})", R"({, "a": 1})", R"({"a": 1,})"})
    EXPECT_FALSE(accepts(*a, bad)) << bad;
}

TEST(GuidedJsonSchema, EnumsConstsUnionsRefsAndFormats) {
  auto a = schema(R"({"$defs": {"Color": {"enum": ["red", "green", 3, null]}},
    "type": "object", "properties": {
      "color": {"$ref": "#/$defs/Color"}, "kind": {"const": "point"},
      "when": {"type": "string", "format": "date-time"}, "id": {"type": "string", "format": "uuid"},
      "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
      "n": {"type": ["integer", "string"]}, "list": {"type": "array", "items": {"type": "integer"}, "minItems": 1}},
    "required": ["color", "kind", "when", "id", "maybe", "code", "n", "list"]})");
  ASSERT_TRUE(a);
  const std::string ok =
      R"({"color": "green", "kind": "point", "when": "2026-11-30T01:02:03Z", )"
      R"("id": "123e4567-e89b-12d3-a456-426614174000", "maybe": null, "code": "ABC", "n": "x", "list": [1, 2]})";
  EXPECT_TRUE(accepts(*a, ok));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = ok;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  EXPECT_TRUE(accepts(*a, with(R"("green")", "3")));
  EXPECT_FALSE(accepts(*a, with(R"("green")", R"("blue")")));
  EXPECT_FALSE(accepts(*a, with(R"("point")", R"("line")")));
  EXPECT_FALSE(accepts(*a, with("2026-11-30", "2026-13-30")));
  EXPECT_FALSE(accepts(*a, with("ABC", "AB")));
  EXPECT_FALSE(accepts(*a, with("[1, 2]", "[]")));
  EXPECT_TRUE(accepts(*a, with(R"("maybe": null)", R"("maybe": 7)")));
  EXPECT_TRUE(accepts(*a, with(R"("n": "x")", R"("n": 5)")));
}

TEST(GuidedJsonSchema, OpenValuesAreAnyJsonTwoLevelsDeep) {
  auto a = schema(R"({"type": "object", "properties": {"x": {}}, "required": ["x"]})");
  ASSERT_TRUE(a);
  for (const char* ok : {R"({"x": 1})", R"({"x": "s"})", R"({"x": {"a": [1, 2]}})", R"({"x": [[1], {"b": null}]})"})
    EXPECT_TRUE(accepts(*a, ok)) << ok;
  EXPECT_FALSE(accepts(*a, R"({"x": [[[1]]]})"));
  auto map = schema(R"({"type": "object", "additionalProperties": {"type": "integer"}})");
  EXPECT_TRUE(accepts(*map, R"({"a": 1, "b": 2})"));
  EXPECT_FALSE(accepts(*map, R"({"a": "1"})"));
}

TEST(GuidedJsonSchema, RefusesWhatItDoesNotSupportNamingIt) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"not": {"type": "string"}})", "'not'"},
      {R"({"type": "object", "properties": {"a": {"$ref": "#"}}})", "recursive"},
      {R"({"properties": {"a": {"type": "integer"}}, "required": ["b"]})", "'b'"},
      {R"({"type": "strin"})", "unknown type 'strin'"},
      {R"({"$ref": "#/$defs/Missing"})", "points at nothing"},
      {R"({"type": "array", "items": [{"type": "integer"}]})", "tuples"},
      {R"({"allOf": [{"type": "integer"}, {"minimum": 1}]})", "allOf"},
      {"{nope", "not valid JSON"},
      {R"J({"type": "string", "pattern": "(?=x)"})J", "lookaround"},
      {"false", "nothing is valid"}};
  for (const auto& [text, want] : cases) {
    auto r = json_schema_to_regex(text);
    ASSERT_FALSE(r.is_ok()) << text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << text;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << text << ": " << r.status().message();
  }
}

// Random texts the schema's automaton generates parse as JSON with the
// required keys: the regex and the schema agree beyond the hand-picked cases.
TEST(GuidedJsonSchema, PatternsStayInsideTheString) {
  // `.` would otherwise close the string and smuggle in another property.
  auto a = schema(R"({"type": "object", "properties": {"s": {"type": "string", "pattern": ".+"}}, "required": ["s"]})");
  ASSERT_TRUE(a);
  EXPECT_TRUE(accepts(*a, R"({"s": "a b é"})"));
  EXPECT_FALSE(accepts(*a, R"({"s": "a", "t": "b"})"));
  EXPECT_FALSE(accepts(*a, "{\"s\": \"a\tb\"}"));  // a raw tab
  EXPECT_FALSE(accepts(*a, R"({"s": "a\b"})"));
  auto code = schema(R"({"type": "string", "pattern": "^[A-Z]{2}-\\d+$"})");
  EXPECT_TRUE(accepts(*code, R"("AB-12")"));
  EXPECT_FALSE(accepts(*code, R"("AB-")"));
}

TEST(GuidedJsonSchema, HostileSchemasAreRefusedNotRun) {
  // Shared definitions doubling at every level: 2^25 copies if expanded.
  std::string defs = R"("d0": {"type": "string"})";
  for (int k = 1; k <= 25; ++k)
    defs += ", \"d" + std::to_string(k) + R"(": {"anyOf": [{"$ref": "#/$defs/d)" + std::to_string(k - 1) +
            R"("}, {"$ref": "#/$defs/d)" + std::to_string(k - 1) + "\"}]}";
  std::string nested = R"({"type": "integer"})";
  for (int k = 0; k < 100; ++k) nested = R"({"type": "array", "items": )" + nested + "}";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"$defs\": {" + defs + R"(}, "$ref": "#/$defs/d25"})", "too large"},
      {nested, "nested more than"},
      {R"({"type": "string", "nullable": "yes"})", "nullable"},
      {R"({"$defs": {"x": [1]}, "$ref": "#/$defs/x/99999999999999999999999"})", "json schema"},  // not a crash
      {R"({"type": "string", "minLength": 5000})", "minLength"}};
  for (const auto& [text, want] : cases) {
    auto r = json_schema_to_regex(text);
    ASSERT_FALSE(r.is_ok()) << text.substr(0, 60);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  }
  // Alternatives that each fit but together do not: refused while growing.
  std::string wide = R"({"$defs": {"a": {"const": ")" + std::string(60000, '.') + R"("}}, "anyOf": [)";
  for (int k = 0; k < 50; ++k) wide += std::string(k ? ", " : "") + R"({"$ref": "#/$defs/a"})";
  auto wide_r = json_schema_to_regex(wide + "]}");
  ASSERT_FALSE(wide_r.is_ok());
  EXPECT_NE(wide_r.status().message().find("too large"), std::string::npos) << wide_r.status().message();
  // A maximum past what a guide counts is not enforced rather than refused.
  auto long_text = schema(R"({"type": "string", "maxLength": 5000})");
  ASSERT_TRUE(long_text);
  EXPECT_TRUE(accepts(*long_text, "\"" + std::string(6000, 'x') + "\""));
}

// A schema pattern's class members survive the rewrite (escaped as needed),
// minus what a JSON string cannot hold raw.
TEST(GuidedJsonSchema, PatternClassesKeepTheirMembers) {
  auto a = schema(R"J({"type": "string", "pattern": "[\\]\\-^a]+"})J");
  ASSERT_TRUE(a);
  EXPECT_TRUE(accepts(*a, R"("]-^a")"));
  EXPECT_FALSE(accepts(*a, R"("b")"));
  auto astral = schema(R"({"type": "string", "pattern": "[😀-🙏]{2}"})");
  ASSERT_TRUE(astral);
  EXPECT_TRUE(accepts(*astral, "\"😀🙏\""));
  EXPECT_FALSE(accepts(*astral, "\"😀\""));
  auto quote_only = schema(R"J({"type": "string", "pattern": "\\\""})J");  // nothing a raw string may hold
  ASSERT_TRUE(quote_only);
  EXPECT_FALSE(accepts(*quote_only, "\"\"\""));
  EXPECT_FALSE(accepts(*quote_only, "\"\""));
  std::string deep = "1";
  for (int k = 0; k < 300; ++k) deep = "[" + deep + "]";
  auto refused = json_schema_to_regex(R"({"const": )" + deep + "}");
  ASSERT_FALSE(refused.is_ok());
  EXPECT_NE(refused.status().message().find("nested more than 256"), std::string::npos) << refused.status().message();
}

TEST(GuidedJsonSchema, DateTimesCarryTheirOffset) {
  auto a = schema(R"({"type": "string", "format": "date-time"})");
  EXPECT_TRUE(accepts(*a, R"("2026-11-30T01:02:03Z")"));
  EXPECT_TRUE(accepts(*a, R"("2026-11-30T01:02:03.5+01:00")"));
  EXPECT_FALSE(accepts(*a, R"("2026-11-30T01:02:03")"));
}

TEST(GuidedJsonSchema, RandomWalksProduceValidJson) {
  auto a = schema(R"({"type": "object", "properties": {"name": {"type": "string", "maxLength": 4},
    "n": {"type": "number"}, "ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
    "required": ["name", "ok"]})");
  ASSERT_TRUE(a);
  std::mt19937 rng(3);
  int done = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    int32_t s = a->start();
    for (int step = 0; step < 200 && !a->complete(s); ++step) {
      if (a->accepting(s) && rng() % 4 == 0) break;
      std::vector<uint8_t> options;
      for (int b = 0; b < 256; ++b)
        if (a->next(s, static_cast<uint8_t>(b)) != ByteAutomaton::kDead) options.push_back(static_cast<uint8_t>(b));
      ASSERT_FALSE(options.empty()) << text;
      const uint8_t b = options[rng() % options.size()];
      text += static_cast<char>(b);
      s = a->next(s, b);
    }
    if (!a->accepting(s)) continue;
    if (has_huge_exponent(text)) continue;
    ++done;
    ASSERT_TRUE(nlohmann::json::accept(text)) << text;
    const auto v = nlohmann::json::parse(text);
    EXPECT_TRUE(v.contains("name") && v["name"].is_string()) << text;
    EXPECT_TRUE(v.contains("ok") && v["ok"].is_boolean()) << text;
  }
  EXPECT_GT(done, 20);
}

// The APIs' four spellings become one spec, errors named by field.
TEST(GuideSpecs, FromTheApisFieldsNamingTheWrongOne) {
  auto request = [](std::string regex, std::string schema, std::vector<std::string> choice, bool object) {
    GuideRequest r;
    r.regex = std::move(regex);
    r.json_schema = std::move(schema);
    r.choice = std::move(choice);
    r.json_object = object;
    return r;
  };
  auto none = make_guide_spec(request("", "", {}, false), "sampling.guided_");
  ASSERT_TRUE(none.is_ok());
  EXPECT_TRUE(none->empty());
  auto choice = make_guide_spec(request("", "", {"a", "b.c"}, false), "sampling.guided_");
  ASSERT_TRUE(choice.is_ok());
  EXPECT_EQ(choice->kind, GuideSpec::Kind::kRegex);
  EXPECT_EQ(choice->regex, choice_regex({"a", "b.c"}));
  auto object = make_guide_spec(request("", "", {}, true), "x_");
  ASSERT_TRUE(object.is_ok());
  EXPECT_EQ(object->kind, GuideSpec::Kind::kJsonObject);
  auto schema = make_guide_spec(request("", R"({"type": "integer"})", {}, false), "x_");
  ASSERT_TRUE(schema.is_ok());
  EXPECT_EQ(schema->regex, "(?:-?(?:0|[1-9][0-9]*))");
  const std::vector<std::pair<GuideRequest, std::string>> bad = {
      {request("(a", "", {}, false), "sampling.guided_regex: regex: an unterminated"},
      {request("", "{", {}, false), "sampling.guided_json: json schema: not valid JSON"},
      {request("", R"J({"type": "string", "pattern": "(?=a)"})J", {}, false), "sampling.guided_json: "},
      {request("a", "", {}, true), "at most one of sampling.guided_regex"}};
  for (const auto& [r, want] : bad) {
    auto spec = make_guide_spec(r, "sampling.guided_");
    ASSERT_FALSE(spec.is_ok()) << want;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(want), std::string::npos) << spec.status().message();
  }
}

}  // namespace
}  // namespace tandem::model
