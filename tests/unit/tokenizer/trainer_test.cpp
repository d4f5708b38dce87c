// train_byte_level_bpe: determinism, layout, speed, and HF compatibility of
// the tokenizer.json it writes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "tokenizer_test_util.h"

namespace tandem::model {
namespace {

using testing::corpus_documents;
using testing::fixture_dir;
using testing::fixture_train_options;
using testing::read_text;

const std::string& trained_fixture_json() {
  static const std::string json = [] {
    auto r = train_byte_level_bpe(corpus_documents(), fixture_train_options());
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? *r : std::string();
  }();
  return json;
}

TEST(BuiltinCorpus, IsEmbeddedAndSizeable) {
  const std::string_view c = builtin_tokenizer_corpus();
  EXPECT_GE(c.size(), 60u * 1024);
  EXPECT_LE(c.size(), 150u * 1024);
  EXPECT_EQ(c.back(), '\n');
  EXPECT_TRUE(testing::valid_utf8(c));
  EXPECT_GT(corpus_documents().size(), 500u);
}

// Writes the trained tokenizer for scripts/fixtures/make_tokenizer_fixtures.py
// when TANDEM_TOKENIZER_DUMP names a path.
TEST(TrainerFixture, DumpIfRequested) {
  const char* path = std::getenv("TANDEM_TOKENIZER_DUMP");
  if (!path || !*path) GTEST_SKIP() << "set TANDEM_TOKENIZER_DUMP=<file> to write the trained tokenizer.json";
  FILE* f = std::fopen(path, "wb");
  ASSERT_NE(f, nullptr) << path;
  const std::string& j = trained_fixture_json();
  ASSERT_EQ(std::fwrite(j.data(), 1, j.size(), f), j.size());
  std::fclose(f);
}

TEST(Trainer, IsDeterministic) {
  auto again = train_byte_level_bpe(corpus_documents(), fixture_train_options());
  ASSERT_TRUE(again.is_ok());
  EXPECT_TRUE(*again == trained_fixture_json());
}

TEST(Trainer, MatchesCommittedFixture) {
  const std::string path = fixture_dir() + "/tandem_trained.tokenizer.json";
  ASSERT_TRUE(testing::file_exists(path));
  EXPECT_TRUE(read_text(path) == trained_fixture_json())
      << "the trainer or the corpus changed; regenerate the fixtures:\n"
         "  TANDEM_TOKENIZER_DUMP=/tmp/t.json <build>/tests/tandem_unit_tokenizer_tests "
         "--gtest_filter=TrainerFixture.*\n"
         "  python3 scripts/fixtures/make_tokenizer_fixtures.py /tmp/t.json";
}

TEST(Trainer, OutputLoadsWithExpectedLayout) {
  auto tok = Tokenizer::from_json(trained_fixture_json());
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  EXPECT_EQ(tok->vocab_size(), 1000);
  // Ids 0..255: the byte alphabet in code point order, as HF's trainer does.
  EXPECT_EQ(tok->token_to_id("!"), 0);
  EXPECT_EQ(tok->token_to_id("~"), 93);
  EXPECT_EQ(tok->token_to_id("\xC2\xA1"), 94);    // U+00A1
  EXPECT_EQ(tok->token_to_id("\xC4\x80"), 188);   // U+0100, byte 0x00
  EXPECT_EQ(tok->token_to_id("\xC5\x83"), 255);   // U+0143, the last stand-in
  EXPECT_EQ(tok->token_to_id("<|endoftext|>"), 997);
  EXPECT_EQ(tok->token_to_id("<|im_start|>"), 998);
  EXPECT_EQ(tok->token_to_id("<|im_end|>"), 999);
  for (int32_t id : {997, 998, 999}) EXPECT_TRUE(tok->is_special(id));
  EXPECT_FALSE(tok->is_special(500));
  auto ids = tok->encode("The scheduler admitted 12 requests.<|im_end|>");
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(ids->back(), 999);
  EXPECT_LT(ids->size(), 20u);  // merges learned from the corpus compress its prose
  EXPECT_EQ(tok->decode(*ids), "The scheduler admitted 12 requests.<|im_end|>");
  const nlohmann::json j = nlohmann::json::parse(trained_fixture_json());
  EXPECT_EQ(j["version"], "1.0");
  EXPECT_TRUE(j["normalizer"].is_null());
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][0]["behavior"], "Isolated");
  EXPECT_EQ(j["model"]["merges"].size(), 1000u - 256 - 3);
  EXPECT_TRUE(j["model"]["merges"][0].is_array());
}

TEST(Trainer, NfcOptionNormalizes) {
  BpeTrainOptions o;
  o.vocab_size = 300;
  o.nfc = true;
  // Decomposed and precomposed "é" count as one spelling after NFC.
  auto json = train_byte_level_bpe({"cafe\xCC\x81 caf\xC3\xA9 cafe\xCC\x81"}, o);
  ASSERT_TRUE(json.is_ok());
  EXPECT_EQ(nlohmann::json::parse(*json)["normalizer"]["type"], "NFC");
  auto tok = Tokenizer::from_json(*json);
  ASSERT_TRUE(tok.is_ok());
  EXPECT_EQ(*tok->encode("cafe\xCC\x81"), *tok->encode("caf\xC3\xA9"));
}

TEST(Trainer, StopsAtMinimumPairFrequency) {
  BpeTrainOptions o;
  o.vocab_size = 5000;
  o.special_tokens = {"<s>"};
  o.min_pair_frequency = 3;
  auto json = train_byte_level_bpe({"abab abab xy"}, o);
  ASSERT_TRUE(json.is_ok());
  auto tok = Tokenizer::from_json(*json);
  ASSERT_TRUE(tok.is_ok());
  // "ab" occurs 4 times, "Ġa"/"ba" fewer than 3 after that: one merge only.
  EXPECT_EQ(tok->vocab_size(), 256 + 1 + 1);
  EXPECT_EQ(tok->token_to_id("<s>"), 257);
  EXPECT_TRUE(tok->token_to_id("ab").has_value());
}

TEST(Trainer, TiesGoToTheSmallestPair) {
  BpeTrainOptions o;
  o.vocab_size = 257;
  o.min_pair_frequency = 1;
  // "xy" and "ab" both occur twice; ("a","b") has the smaller ids.
  auto json = train_byte_level_bpe({"xy ab xy ab"}, o);
  ASSERT_TRUE(json.is_ok());
  const auto j = nlohmann::json::parse(*json);
  ASSERT_EQ(j["model"]["merges"].size(), 1u);
  EXPECT_EQ(j["model"]["merges"][0], nlohmann::json::array({"a", "b"}));
}

TEST(Trainer, RejectsBadInput) {
  BpeTrainOptions o;
  o.vocab_size = 100;
  EXPECT_EQ(train_byte_level_bpe({"x"}, o).status().code(), StatusCode::kInvalidArgument);
  o.vocab_size = 300;
  auto bad = train_byte_level_bpe({"ok", "bad \xFF byte"}, o);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("document 1"), std::string::npos) << bad.status().to_string();
  o.special_tokens = {""};
  EXPECT_FALSE(train_byte_level_bpe({"x"}, o).is_ok());
}

TEST(Trainer, TwoThousandMergesOn200KbIsFast) {
  std::vector<std::string> docs;
  size_t bytes = 0;
  // The corpus, then an upper-cased copy, and so on: about 200 KB.
  for (int rep = 0; bytes < 200 * 1024; ++rep) {
    for (const auto& d : corpus_documents()) {
      std::string v = d;
      if (rep % 2)
        for (char& c : v) c = static_cast<unsigned char>(c) < 0x80 ? static_cast<char>(std::toupper(c)) : c;
      bytes += v.size();
      docs.push_back(std::move(v));
    }
  }
  BpeTrainOptions o;
  o.vocab_size = 256 + 2000 + 3;
  o.special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  const auto t0 = std::chrono::steady_clock::now();
  auto json = train_byte_level_bpe(docs, o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(json.is_ok());
  EXPECT_EQ(nlohmann::json::parse(*json)["model"]["merges"].size(), 2000u);
  EXPECT_LT(secs, 5.0);
  RecordProperty("train_seconds", std::to_string(secs));
}

// Cross-check with the real HF implementation when it is installed.
TEST(Trainer, HfTokenizersAgreesOnOurOutput) {
  if (std::system("python3 -c 'import tokenizers' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with the `tokenizers` package is not available; HF cross-check skipped";
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("tandem_tok_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string tok_path = (dir / "tokenizer.json").string();
  const std::string texts_path = (dir / "texts.json").string();
  const std::string out_path = (dir / "ids.json").string();
  const std::string script_path = (dir / "check.py").string();
  nlohmann::json texts = nlohmann::json::array();
  for (const auto& c : testing::golden_encodings()["tokenizers"]["qwen2_style"]) texts.push_back(c["text"]);
  for (const auto& d : corpus_documents()) if (texts.size() < 400) texts.push_back(d);
  {
    FILE* f = std::fopen(tok_path.c_str(), "wb");
    std::fwrite(trained_fixture_json().data(), 1, trained_fixture_json().size(), f);
    std::fclose(f);
    f = std::fopen(texts_path.c_str(), "wb");
    const std::string t = texts.dump();
    std::fwrite(t.data(), 1, t.size(), f);
    std::fclose(f);
    f = std::fopen(script_path.c_str(), "wb");
    const std::string py =
        "import json, sys\n"
        "from tokenizers import Tokenizer\n"
        "tok = Tokenizer.from_file(sys.argv[1])\n"
        "texts = json.load(open(sys.argv[2], encoding='utf-8'))\n"
        "out = [tok.encode(t, add_special_tokens=False).ids for t in texts]\n"
        "json.dump(out, open(sys.argv[3], 'w'))\n";
    std::fwrite(py.data(), 1, py.size(), f);
    std::fclose(f);
  }
  const std::string cmd = "python3 " + script_path + " " + tok_path + " " + texts_path + " " + out_path;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto hf = nlohmann::json::parse(read_text(out_path));
  auto tok = Tokenizer::from_json(trained_fixture_json());
  ASSERT_TRUE(tok.is_ok());
  ASSERT_EQ(hf.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = tok->encode(texts[i].get<std::string>());
    ASSERT_TRUE(ids.is_ok());
    EXPECT_EQ(*ids, hf[i].get<std::vector<int32_t>>()) << "text: " << texts[i].dump();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tandem::model
