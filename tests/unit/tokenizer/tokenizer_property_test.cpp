// Properties that must hold for any input: round trips, streaming that never
// splits a character, special-token handling, UTF-8 rejection, thread safety.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "tokenizer_test_util.h"

namespace tandem::model {
namespace {

using testing::append_cp;
using testing::load_fixture;
using testing::valid_utf8;

// Random valid UTF-8 mixing ASCII, whitespace, Latin-1, Greek, CJK, Hangul,
// combining marks, emoji with ZWJ and variation selectors.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E},     {0x20, 0x7E},     {0x20, 0x7E},     {0x61, 0x7A},     {0x09, 0x0D},   {0xA0, 0xFF},
      {0x391, 0x3C9},   {0x300, 0x36F},   {0x4E00, 0x4E80}, {0xAC00, 0xAC40}, {0x3040, 0x30FF},
      {0x1F300, 0x1F64F}, {0x1F680, 0x1F6FF}, {0x200D, 0x200D}, {0xFE0F, 0xFE0F}, {0x1F1E6, 0x1F1FF},
      {0x10000, 0x10FFFF}, {0x0, 0x1F}};
  std::uniform_int_distribution<int> len_dist(0, 40);
  std::uniform_int_distribution<size_t> range_dist(0, ranges.size() - 1);
  std::string s;
  const int n = len_dist(rng);
  for (int i = 0; i < n; ++i) {
    const auto [lo, hi] = ranges[range_dist(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xE000;
    append_cp(s, cp);
  }
  return s;
}

std::vector<std::string> random_corpus(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back(random_text(rng));
  return out;
}

// Tokenizers without a normalizer must give back exactly the input.
class RoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundTrip, RandomUtf8SurvivesEncodeDecode) {
  Tokenizer tok = load_fixture(GetParam());
  for (const std::string& s : random_corpus(2000, 1234)) {
    auto ids = tok.encode(s);
    ASSERT_TRUE(ids.is_ok()) << ids.status().to_string();
    ASSERT_EQ(tok.decode(*ids), s);
  }
}

TEST_P(RoundTrip, StreamingNeverSplitsACharacter) {
  Tokenizer tok = load_fixture(GetParam());
  for (const std::string& s : random_corpus(2000, 99)) {
    auto ids = tok.encode(s);
    ASSERT_TRUE(ids.is_ok());
    StreamingDetokenizer detok(tok);
    std::string all;
    for (int32_t id : *ids) {
      const std::string delta = detok.push(id);
      ASSERT_TRUE(valid_utf8(delta));
      ASSERT_EQ(delta.find("\xEF\xBF\xBD"), std::string::npos) << "replacement char in a delta for valid input";
      all += delta;
    }
    all += detok.flush();
    ASSERT_EQ(all, tok.decode(*ids, true));
    ASSERT_EQ(all, s);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RoundTrip, ::testing::Values("tandem_trained", "gpt2_style", "sp_style"),
                         [](const auto& info) { return info.param; });

int32_t byte_token(const Tokenizer& tok, unsigned char b) {
  // The byte-level stand-in of b, found through the decoder itself.
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    const std::string bytes = tok.token_bytes(id);
    if (bytes.size() == 1 && static_cast<unsigned char>(bytes[0]) == b) return id;
  }
  ADD_FAILURE() << "no token for byte " << int(b);
  return -1;
}

TEST(Streaming, HoldsIncompleteCharactersUntilComplete) {
  Tokenizer tok = load_fixture("tandem_trained");
  const std::string wave = "\xF0\x9F\x91\x8B";  // U+1F44B
  StreamingDetokenizer detok(tok);
  EXPECT_EQ(detok.push(byte_token(tok, 'a')), "a");
  EXPECT_EQ(detok.push(byte_token(tok, 0xF0)), "");
  EXPECT_EQ(detok.push(byte_token(tok, 0x9F)), "");
  EXPECT_EQ(detok.push(byte_token(tok, 0x91)), "");
  EXPECT_EQ(detok.push(byte_token(tok, 0x8B)), wave);
  EXPECT_EQ(detok.push(byte_token(tok, 0xE4)), "");
  EXPECT_EQ(detok.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(detok.flush(), "");
}

TEST(Streaming, InvalidBytesBecomeReplacementOnceFinal) {
  Tokenizer tok = load_fixture("tandem_trained");
  StreamingDetokenizer detok(tok);
  EXPECT_EQ(detok.push(byte_token(tok, 0xE4)), "");
  // 'b' cannot continue the sequence, so the held byte is final now.
  EXPECT_EQ(detok.push(byte_token(tok, 'b')), "\xEF\xBF\xBD" "b");
  EXPECT_EQ(detok.push(byte_token(tok, 0xFF)), "\xEF\xBF\xBD");
}

TEST(Streaming, SkipsSpecialTokensByDefault) {
  Tokenizer tok = load_fixture("qwen2_style");
  auto ids = tok.encode("<|im_start|>user\nhi<|im_end|>");
  ASSERT_TRUE(ids.is_ok());
  StreamingDetokenizer quiet(tok), loud(tok, /*skip_special_tokens=*/false);
  std::string a, b;
  for (int32_t id : *ids) a += quiet.push(id), b += loud.push(id);
  EXPECT_EQ(a + quiet.flush(), "user\nhi");
  EXPECT_EQ(b + loud.flush(), "<|im_start|>user\nhi<|im_end|>");
}

TEST(Streaming, SentencePieceFirstTokenLosesItsSpaceOnly) {
  Tokenizer tok = load_fixture("sp_style");
  auto ids = tok.encode("Hello there world", /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.is_ok());
  StreamingDetokenizer detok(tok);
  std::string all;
  for (int32_t id : *ids) all += detok.push(id);
  EXPECT_EQ(all + detok.flush(), "Hello there world");
}

TEST(Decode, InvalidBytesBecomeOneReplacementPerMaximalSubpart) {
  Tokenizer tok = load_fixture("tandem_trained");
  auto ids = [&](std::initializer_list<unsigned char> bytes) {
    std::vector<int32_t> v;
    for (unsigned char b : bytes) v.push_back(byte_token(tok, b));
    return v;
  };
  // Same placement as Python's bytes.decode("utf-8", errors="replace").
  EXPECT_EQ(tok.decode(ids({0xE4, 0xB8, 'a'})), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(tok.decode(ids({0xFF, 0xFE})), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode(ids({0xED, 0xA0, 0x80})), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode(ids({0xF0, 0x9F, 0x91})), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode(ids({0xC3, 0xA9})), "\xC3\xA9");
}

TEST(Decode, SkipsOutOfRangeIds) {
  Tokenizer tok = load_fixture("tandem_trained");
  auto ids = tok.encode("ok");
  ASSERT_TRUE(ids.is_ok());
  std::vector<int32_t> v = *ids;
  v.insert(v.begin(), -5);
  v.push_back(tok.vocab_size() + 100);
  EXPECT_EQ(tok.decode(v), "ok");
  EXPECT_EQ(tok.token_bytes(-1), "");
  EXPECT_FALSE(tok.id_to_token(tok.vocab_size()).has_value());
}

TEST(Encode, RejectsInvalidUtf8) {
  Tokenizer tok = load_fixture("qwen2_style");
  for (std::string bad : {std::string("\xFF"), std::string("abc\xC0\x80"), std::string("\xED\xA0\x80"),
                          std::string("ok\xE4\xB8"), std::string("\xF4\x90\x80\x80"), std::string("\x80x")}) {
    auto r = tok.encode(bad);
    ASSERT_FALSE(r.is_ok()) << ::testing::PrintToString(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("UTF-8"), std::string::npos) << r.status().message();
  }
}

TEST(Encode, SpecialTokensAreRecognisedInline) {
  Tokenizer tok = load_fixture("qwen2_style");
  const auto start = tok.token_to_id("<|im_start|>");
  const auto end = tok.token_to_id("<|im_end|>");
  ASSERT_TRUE(start && end);
  EXPECT_TRUE(tok.is_special(*start));
  auto ids = tok.encode("<|im_start|>system\nBe brief.<|im_end|>");
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(ids->front(), *start);
  EXPECT_EQ(ids->back(), *end);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), *start), 1);
  EXPECT_EQ(tok.decode(*ids, /*skip_special_tokens=*/true), "system\nBe brief.");
  EXPECT_EQ(tok.decode(*ids), "<|im_start|>system\nBe brief.<|im_end|>");
  EXPECT_EQ(tok.id_to_token(*start), "<|im_start|>");
  // A near miss is ordinary text.
  auto near = tok.encode("<|im_start|");
  ASSERT_TRUE(near.is_ok());
  EXPECT_EQ(std::count(near->begin(), near->end(), *start), 0);
}

TEST(Encode, TemplatePostProcessorAddsBos) {
  Tokenizer tok = load_fixture("gpt2_style");
  const auto bos = tok.token_to_id("<s>");
  ASSERT_TRUE(bos.has_value());
  auto plain = tok.encode("hi there");
  auto with = tok.encode("hi there", true);
  ASSERT_TRUE(plain.is_ok() && with.is_ok());
  ASSERT_EQ(with->size(), plain->size() + 1);
  EXPECT_EQ(with->front(), *bos);
  EXPECT_EQ(std::vector<int32_t>(with->begin() + 1, with->end()), *plain);
  auto empty = tok.encode("", true);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_EQ(*empty, std::vector<int32_t>{*bos});
}

TEST(Encode, ConcurrentCallsAgreeWithSerialOnes) {
  Tokenizer tok = load_fixture("qwen2_style");
  const auto texts = random_corpus(300, 7);
  std::vector<std::vector<int32_t>> expected;
  for (const auto& t : texts) expected.push_back(*tok.encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 3; ++rep)
        for (size_t i = 0; i < texts.size(); ++i) {
          auto ids = tok.encode(texts[(i + k * 37) % texts.size()]);
          if (!ids.is_ok() || *ids != expected[(i + k * 37) % texts.size()]) ++mismatches[k];
        }
    });
  }
  for (auto& t : threads) t.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(mismatches[k], 0) << "thread " << k;
}

TEST(Encode, LongInputsDoNotBlowUp) {
  Tokenizer tok = load_fixture("qwen2_style");
  const std::string spaces(200000, ' ');
  auto a = tok.encode(spaces + "x");
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  EXPECT_EQ(tok.decode(*a), spaces + "x");
  std::string word;
  for (int i = 0; i < 20000; ++i) word += "abcdefghij"[i % 10];
  auto b = tok.encode(word);
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(tok.decode(*b), word);
}

TEST(Tokenizer, VocabSizeCoversAddedTokens) {
  Tokenizer tok = load_fixture("qwen2_style");
  const auto id = tok.token_to_id("\xC3\x85ngstr\xC3\xB6m");  // the added token after the vocab
  ASSERT_TRUE(id.has_value());
  EXPECT_EQ(tok.vocab_size(), *id + 1);
  EXPECT_FALSE(tok.is_special(*id));
  EXPECT_EQ(tok.token_bytes(*id), "\xC3\x85ngstr\xC3\xB6m");
}

TEST(Tokenizer, IsMovable) {
  Tokenizer a = load_fixture("tandem_trained");
  Tokenizer b = std::move(a);
  auto ids = b.encode("moved");
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(b.decode(*ids), "moved");
}

}  // namespace
}  // namespace tandem::model
