// Helpers shared by the tokenizer tests: fixture paths, the golden encodings
// recorded with HF `tokenizers`, and a UTF-8 checker independent of the code
// under test.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/model/tokenizer.h"

namespace tandem::model::testing {

inline std::string fixture_dir() { return std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/tokenizer"; }

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

inline const nlohmann::json& golden_encodings() {
  static const nlohmann::json j = nlohmann::json::parse(read_text(fixture_dir() + "/encodings.json"));
  return j;
}

// Throws on failure, which GoogleTest reports as a failed test.
inline Tokenizer load_fixture(const std::string& name) {
  auto t = Tokenizer::from_file(fixture_dir() + "/" + name + ".tokenizer.json");
  if (!t.is_ok()) throw std::runtime_error(t.status().to_string());
  return std::move(t).value();
}

// The built-in corpus split into documents the way make-model does.
inline std::vector<std::string> corpus_documents() {
  std::vector<std::string> docs;
  const std::string_view all = builtin_tokenizer_corpus();
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\n', start);
    if (end == std::string_view::npos) end = all.size();
    if (end > start) docs.emplace_back(all.substr(start, end - start + (end < all.size() ? 1 : 0)));
    start = end + 1;
  }
  return docs;
}

// The options of the committed tandem_trained.tokenizer.json fixture.
inline BpeTrainOptions fixture_train_options() {
  BpeTrainOptions o;
  o.vocab_size = 1000;
  o.special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  return o;
}

// Straightforward strict UTF-8 check (RFC 3629), written separately from the
// library's validator so that the two can catch each other's mistakes.
inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c >> 5) == 0x6) { n = 1; cp = c & 0x1F; }
    else if ((c >> 4) == 0xE) { n = 2; cp = c & 0x0F; }
    else if ((c >> 3) == 0x1E) { n = 3; cp = c & 0x07; }
    else return false;
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<size_t>(n) + 1;
  }
  return true;
}

inline void append_cp(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace tandem::model::testing
