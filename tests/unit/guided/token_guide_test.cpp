// TokenGuide on the golden tokenizers: its masks equal a brute-force walk of
// every token's text, and tokenizing an accepted text walks to acceptance.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tandem/model/guided.h"

namespace tandem::model {
namespace {

Tokenizer load(const std::string& name) {
  std::ifstream in(std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name + ".tokenizer.json");
  std::stringstream ss;
  ss << in.rdbuf();
  auto t = Tokenizer::from_json(ss.str());
  if (!t.is_ok()) throw std::runtime_error(t.status().message());
  return std::move(t).value();
}

class TokenGuideTest : public ::testing::TestWithParam<std::string> {};

// Brute force: token t is allowed iff walking its text from `state` never dies.
std::vector<uint64_t> brute_mask(ByteAutomaton& a, const TokenVocabulary& vocab, int32_t state, bool first) {
  std::vector<uint64_t> mask((static_cast<size_t>(vocab.size()) + 63) / 64, 0);
  for (int32_t t = 0; t < vocab.size(); ++t) {
    const std::string& text = vocab.bytes(t, first);
    if (text.empty()) continue;
    int32_t s = state;
    for (char c : text) {
      s = a.next(s, static_cast<uint8_t>(c));
      if (s == ByteAutomaton::kDead) break;
    }
    if (s != ByteAutomaton::kDead) mask[static_cast<size_t>(t) / 64] |= uint64_t{1} << (t % 64);
  }
  return mask;
}

TEST_P(TokenGuideTest, MasksEqualABruteForceWalkAndTextsWalkToAcceptance) {
  Tokenizer tok = load(GetParam());
  const int32_t model_vocab = tok.vocab_size() + 5;  // padded logits: the extra ids are never text
  auto vocab = TokenVocabulary::build(tok, model_vocab);
  struct Case {
    GuideSpec spec;
    std::string text;  // accepted
  };
  auto schema = json_schema_to_regex(R"({"type": "object", "properties": {"city": {"type": "string"},
      "population": {"type": "integer"}}, "required": ["city", "population"]})");
  ASSERT_TRUE(schema.is_ok());
  const std::vector<Case> cases = {
      {{GuideSpec::Kind::kRegex, choice_regex({"yes", "no", "maybe"})}, "maybe"},
      {{GuideSpec::Kind::kRegex, R"([a-z]+ [0-9]{2,3}\.)"}, "hello 123."},
      {{GuideSpec::Kind::kRegex, schema.value()}, R"({"city": "Paris", "population": 2100000})"},
      {{GuideSpec::Kind::kJsonObject, ""}, R"({"a": [1, {"b": "c d"}], "e": null})"}};
  for (const Case& c : cases) {
    auto automaton = compile_guide(c.spec);
    ASSERT_TRUE(automaton.is_ok());
    auto reference = compile_guide(c.spec);  // a second copy, walked by the brute force
    TokenGuide guide(std::move(automaton).value(), vocab);
    auto ids = tok.encode(c.text);
    ASSERT_TRUE(ids.is_ok());
    TokenGuide::State s = guide.start();
    int32_t ref_state = reference.value()->start();
    for (size_t i = 0; i < ids.value().size(); ++i) {
      const int32_t t = ids.value()[i];
      // A SentencePiece tokenizer may open with a lone "▁", which shows
      // nothing at the start: the guide never picks a token without text.
      if (i == 0 && vocab->bytes(t, true).empty()) continue;
      auto mask = guide.allowed(s);
      ASSERT_TRUE(mask.is_ok());
      const auto want = brute_mask(*reference.value(), *vocab, ref_state, s.first);
      ASSERT_EQ(*mask.value(), want) << c.spec.key() << " at token " << i;
      for (int32_t extra = tok.vocab_size(); extra < model_vocab; ++extra) EXPECT_FALSE(mask_allows(*mask.value(), extra));
      // The text's own tokenization is allowed at every step (a text that
      // does not start with a space reads the same at the start of the output).
      ASSERT_TRUE(mask_allows(*mask.value(), t)) << c.spec.key() << ": token " << i << " '" << vocab->bytes(t, s.first) << "'";
      EXPECT_FALSE(guide.accepting(s)) << c.spec.key();
      for (char ch : vocab->bytes(t, s.first)) ref_state = reference.value()->next(ref_state, static_cast<uint8_t>(ch));
      s = guide.advance(s, t);
      ASSERT_NE(s.automaton, ByteAutomaton::kDead);
    }
    EXPECT_TRUE(guide.accepting(s)) << c.spec.key();
  }
}

TEST_P(TokenGuideTest, SpecialTokensAndUnknownIdsAreNeverAllowed) {
  Tokenizer tok = load(GetParam());
  auto vocab = TokenVocabulary::build(tok, tok.vocab_size());
  TokenGuide guide(json_object_automaton(), vocab);
  auto mask = guide.allowed(guide.start());
  ASSERT_TRUE(mask.is_ok());
  int allowed = 0;
  for (int32_t t = 0; t < tok.vocab_size(); ++t) {
    if (tok.is_special(t)) {
      EXPECT_FALSE(mask_allows(*mask.value(), t)) << t;
    }
    allowed += mask_allows(*mask.value(), t);
  }
  EXPECT_GT(allowed, 0);  // '{' at least
  EXPECT_EQ(guide.advance(guide.start(), -1).automaton, ByteAutomaton::kDead);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenGuideTest,
                         ::testing::Values("gpt2_style", "qwen2_style", "sp_style", "tandem_trained"));

// A SentencePiece-style decoder drops the first token's leading space: at the
// start of the output "▁yes" reads "yes" and is allowed for the choice "yes";
// later it reads " yes" and is not.
TEST(TokenGuide, FirstTokenReadsAsTheDetokenizerShowsIt) {
  Tokenizer tok = load("sp_style");
  auto vocab = TokenVocabulary::build(tok, tok.vocab_size());
  ASSERT_TRUE(vocab->first_differs());
  int32_t spaced = -1;
  for (int32_t t = 0; t < vocab->size(); ++t)
    if (vocab->bytes(t, false).size() > 1 && vocab->bytes(t, false)[0] == ' ' && vocab->bytes(t, true) == vocab->bytes(t, false).substr(1)) {
      spaced = t;
      break;
    }
  ASSERT_GE(spaced, 0);
  const std::string word = vocab->bytes(spaced, true);
  auto automaton = compile_regex(regex_escape(word) + "(" + regex_escape(word) + ")?");
  ASSERT_TRUE(automaton.is_ok());
  TokenGuide guide(std::move(automaton).value(), vocab);
  auto start = guide.allowed(guide.start());
  ASSERT_TRUE(start.is_ok());
  EXPECT_TRUE(mask_allows(*start.value(), spaced)) << word;
  // After the word, the spaced token would add " word": not allowed.
  TokenGuide::State s = guide.advance(guide.start(), spaced);
  auto later = guide.allowed(s);
  ASSERT_TRUE(later.is_ok());
  EXPECT_FALSE(mask_allows(*later.value(), spaced)) << word;
}

}  // namespace
}  // namespace tandem::model
