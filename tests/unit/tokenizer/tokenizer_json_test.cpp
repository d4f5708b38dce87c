// tokenizer.json parsing: malformed or unsupported files give clear errors,
// and the optional components behave like HF's.
#include <gtest/gtest.h>

#include "tokenizer_test_util.h"

namespace tandem::model {
namespace {

using nlohmann::json;

// A small valid byte-level BPE to mutate: vocab {a, b, ab, Ġ}.
json minimal() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [{"id": 4, "content": "<eos>", "special": true, "lstrip": false, "rstrip": false,
                      "normalized": false, "single_word": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3}, "merges": ["a b"]}
  })");
}

Status load_error(const std::string& text) {
  auto t = Tokenizer::from_json(text);
  EXPECT_FALSE(t.is_ok()) << text.substr(0, 200);
  return t.is_ok() ? Status() : t.status();
}

void expect_error(const json& j, StatusCode code, const std::string& needle) {
  Status s = load_error(j.dump());
  EXPECT_EQ(s.code(), code) << s.to_string();
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.to_string();
}

TEST(TokenizerJson, MinimalLoadsAndEncodes) {
  auto t = Tokenizer::from_json(minimal().dump());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t->vocab_size(), 5);
  EXPECT_EQ(*t->encode("ab a<eos>"), (std::vector<int32_t>{2, 3, 0, 4}));
  EXPECT_EQ(t->decode({2, 3, 0, 4}), "ab a<eos>");
  EXPECT_EQ(t->decode({2, 3, 0, 4}, true), "ab a");
}

TEST(TokenizerJson, BadJson) {
  Status s = load_error("{\"model\": ");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("invalid JSON"), std::string::npos) << s.to_string();
  EXPECT_EQ(load_error("[1, 2]").code(), StatusCode::kInvalidArgument);
}

TEST(TokenizerJson, MissingModel) {
  json j = minimal();
  j.erase("model");
  expect_error(j, StatusCode::kInvalidArgument, "missing 'model'");
  j = minimal();
  j["model"].erase("vocab");
  expect_error(j, StatusCode::kInvalidArgument, "vocab");
}

TEST(TokenizerJson, UnknownComponentsAreNamed) {
  json j = minimal();
  j["model"]["type"] = "WordPiece";
  expect_error(j, StatusCode::kUnimplemented, "WordPiece");
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(j, StatusCode::kUnimplemented, "Whitespace");
  j = minimal();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_error(j, StatusCode::kUnimplemented, "Lowercase");
  j = minimal();
  j["decoder"] = {{"type", "Sequence"}, {"decoders", json::array({{{"type", "CTC"}}})}};
  expect_error(j, StatusCode::kUnimplemented, "CTC");
  j = minimal();
  j["post_processor"] = {{"type", "Frobnicate"}};
  expect_error(j, StatusCode::kUnimplemented, "Frobnicate");
  j = minimal();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Sideways"}};
  expect_error(j, StatusCode::kInvalidArgument, "Sideways");
}

TEST(TokenizerJson, MergeNamingUnknownToken) {
  json j = minimal();
  j["model"]["merges"] = json::array({"a zz"});
  expect_error(j, StatusCode::kInvalidArgument, "'zz'");
  j = minimal();
  j["model"]["merges"] = json::array({json::array({"b", "a"})});  // "ba" is not in the vocab
  expect_error(j, StatusCode::kInvalidArgument, "'ba'");
  j = minimal();
  j["model"]["merges"] = json::array({"a b c"});
  expect_error(j, StatusCode::kInvalidArgument, "merges[0]");
}

TEST(TokenizerJson, OtherMalformedFields) {
  json j = minimal();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_error(j, StatusCode::kInvalidArgument, "regex");
  j = minimal();
  j["version"] = "2.0";
  expect_error(j, StatusCode::kInvalidArgument, "version");
  j = minimal();
  j["added_tokens"][0].erase("id");
  expect_error(j, StatusCode::kInvalidArgument, "added_tokens[0]");
  j = minimal();
  j["model"]["vocab"]["c"] = "seven";
  expect_error(j, StatusCode::kInvalidArgument, "'c'");
  j = minimal();
  j["model"]["dropout"] = 0.1;
  expect_error(j, StatusCode::kUnimplemented, "dropout");
}

TEST(TokenizerJson, MissingFileIsNotFound) {
  auto t = Tokenizer::from_file("/nonexistent/tokenizer.json");
  ASSERT_FALSE(t.is_ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
}

TEST(TokenizerJson, MergesAsPairsEqualMergesAsStrings) {
  json j = minimal();
  j["model"]["merges"] = json::array({json::array({"a", "b"})});
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(*t->encode("abab"), (std::vector<int32_t>{2, 2}));
}

TEST(TokenizerJson, LowestRankMergesFirst) {
  // "abc": (b,c) has rank 0 and wins over (a,b) although (a,b) is leftmost.
  json j = minimal();
  j["pre_tokenizer"] = nullptr;
  j["model"]["vocab"] = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}};
  j["model"]["merges"] = json::array({"b c", "a b", "a bc"});
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(*t->encode("abc"), std::vector<int32_t>{5});
  EXPECT_EQ(*t->encode("abab"), (std::vector<int32_t>{3, 3}));
  // ignore_merges: a piece that is itself in the vocab is emitted whole.
  j["model"]["merges"] = json::array({"b c", "a bc"});
  j["model"]["ignore_merges"] = true;
  t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(*t->encode("ab"), std::vector<int32_t>{3});
  EXPECT_EQ(*t->encode("aab"), (std::vector<int32_t>{0, 0, 1}));
}

TEST(TokenizerJson, UnknownCharactersUseUnkAndFuse) {
  json j = minimal();
  j["pre_tokenizer"] = nullptr;
  j["decoder"] = nullptr;
  j["model"]["vocab"] = {{"<unk>", 0}, {"a", 1}, {"b", 2}};
  j["model"]["merges"] = json::array();
  j["model"]["unk_token"] = "<unk>";
  j["added_tokens"] = json::array();
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(*t->encode("accb"), (std::vector<int32_t>{1, 0, 0, 2}));
  j["model"]["fuse_unk"] = true;
  t = Tokenizer::from_json(j.dump());
  EXPECT_EQ(*t->encode("accb"), (std::vector<int32_t>{1, 0, 2}));
  // No decoder: HF joins the tokens with spaces.
  EXPECT_EQ(t->decode({1, 0, 2}), "a <unk> b");
  // Without an unk token, unknown characters are dropped.
  j["model"]["unk_token"] = nullptr;
  t = Tokenizer::from_json(j.dump());
  EXPECT_EQ(*t->encode("accb"), (std::vector<int32_t>{1, 2}));
}

TEST(TokenizerJson, SplitBehaviors) {
  // Vocabulary of single characters; the pre-tokenizer alone decides pieces,
  // which the merge "x y" reveals: it only applies within one piece.
  auto make = [](const std::string& behavior, bool invert) {
    json j = minimal();
    j["added_tokens"] = json::array();
    j["decoder"] = nullptr;
    j["model"]["vocab"] = {{"x", 0}, {"-", 1}, {"x-", 2}, {"-x", 3}, {"--", 4}};
    j["model"]["merges"] = json::array({"x -", "- x", "- -"});
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
    auto t = Tokenizer::from_json(j.dump());
    EXPECT_TRUE(t.is_ok()) << t.status().to_string();
    return std::move(t).value();
  };
  EXPECT_EQ(*make("Isolated", false).encode("x--x"), (std::vector<int32_t>{0, 1, 1, 0}));
  EXPECT_EQ(*make("Removed", false).encode("x--x"), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(*make("MergedWithPrevious", false).encode("x--x"), (std::vector<int32_t>{2, 1, 0}));
  EXPECT_EQ(*make("MergedWithNext", false).encode("x--x"), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(*make("Contiguous", false).encode("x--x"), (std::vector<int32_t>{0, 4, 0}));
  // Inverted: the x's count as the delimiters and get removed; each '-'
  // match stays a piece of its own.
  EXPECT_EQ(*make("Removed", true).encode("x--x"), (std::vector<int32_t>{1, 1}));
}

TEST(TokenizerJson, DigitsPreTokenizer) {
  json j = minimal();
  j["added_tokens"] = json::array();
  j["model"]["vocab"] = {{"1", 0}, {"2", 1}, {"12", 2}, {"a", 3}};
  j["model"]["merges"] = json::array({"1 2"});
  j["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  j["decoder"] = nullptr;
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(*t->encode("a12"), (std::vector<int32_t>{3, 0, 1}));
  j["pre_tokenizer"]["individual_digits"] = false;
  t = Tokenizer::from_json(j.dump());
  EXPECT_EQ(*t->encode("a12"), (std::vector<int32_t>{3, 2}));
}

TEST(TokenizerJson, AddedTokenOptions) {
  json j = minimal();
  j["added_tokens"] = json::array({
      {{"id", 10}, {"content", "<L>"}, {"special", true}, {"lstrip", true}, {"rstrip", false}, {"normalized", false}, {"single_word", false}},
      {{"id", 11}, {"content", "<R>"}, {"special", false}, {"lstrip", false}, {"rstrip", true}, {"normalized", false}, {"single_word", false}},
      {{"id", 12}, {"content", "ab"}, {"special", false}, {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"single_word", true}},
      {{"id", 13}, {"content", "<LL>"}, {"special", true}, {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"single_word", false}},
  });
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t->vocab_size(), 14);
  // lstrip eats the spaces before, rstrip the ones after.
  EXPECT_EQ(*t->encode("a  <L>"), (std::vector<int32_t>{0, 10}));
  EXPECT_EQ(*t->encode("<R>  a"), (std::vector<int32_t>{11, 0}));
  // single_word: only "ab" standing alone is the added token.
  EXPECT_EQ(*t->encode("ab aab ab"), (std::vector<int32_t>{12, 3, 0, 2, 3, 12}));
  // Leftmost-longest: "<LL>" beats "<L>".
  EXPECT_EQ(*t->encode("<LL>"), std::vector<int32_t>{13});
  EXPECT_EQ(t->decode({0, 10, 11, 0}), "a<L><R>a");
  EXPECT_EQ(t->decode({0, 10, 11, 0}, true), "a<R>a");
}

TEST(TokenizerJson, TemplateFromStringAndRobertaStyle) {
  json j = minimal();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", "<eos>:0 $A:0 <eos>:0"},
                         {"special_tokens", {{"<eos>", {{"id", "<eos>"}, {"ids", {4}}, {"tokens", {"<eos>"}}}}}}};
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(*t->encode("a", true), (std::vector<int32_t>{4, 0, 4}));
  j["post_processor"] = {{"type", "RobertaProcessing"}, {"sep", {"<eos>", 4}}, {"cls", {"a", 0}}};
  t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(*t->encode("b", true), (std::vector<int32_t>{0, 1, 4}));
  j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", "<bos> $A"}, {"special_tokens", json::object()}};
  EXPECT_EQ(load_error(j.dump()).code(), StatusCode::kInvalidArgument);
}

TEST(TokenizerJson, ContinuingSubwordPrefixIsHonoured) {
  json j = minimal();
  j["pre_tokenizer"] = nullptr;
  j["decoder"] = nullptr;
  j["added_tokens"] = json::array();
  j["model"]["vocab"] = {{"a", 0}, {"##b", 1}, {"##c", 2}, {"ab", 3}, {"abc", 4}};
  j["model"]["merges"] = json::array({"a ##b", "ab ##c"});
  j["model"]["continuing_subword_prefix"] = "##";
  auto t = Tokenizer::from_json(j.dump());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(*t->encode("abc"), std::vector<int32_t>{4});
  EXPECT_EQ(*t->encode("ab"), std::vector<int32_t>{3});
}

}  // namespace
}  // namespace tandem::model
