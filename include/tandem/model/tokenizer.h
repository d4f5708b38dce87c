// HuggingFace tokenizer.json: byte-level BPE (GPT-2 / Qwen2 style), added and
// special tokens, encode, decode, incremental detokenization, and a small BPE
// trainer that writes tokenizer.json.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::model {

class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Parses tokenizer.json text. Unsupported model types or pipeline components
  // are an error that names them.
  static Result<Tokenizer> from_json(std::string_view json_text);
  static Result<Tokenizer> from_file(const std::string& path);

  // Encodes UTF-8 text. Added/special tokens that appear literally in the text are
  // recognised. add_special_tokens applies the post-processor (e.g. a BOS prefix).
  // Invalid UTF-8 is an INVALID_ARGUMENT error.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_special_tokens = false) const;

  // Decodes ids to text; bytes that do not form valid UTF-8 become U+FFFD.
  // Out-of-range ids are skipped.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // Raw bytes of one token as it decodes (no UTF-8 repair): used for streaming.
  std::string token_bytes(int32_t id) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  // One more than the largest id (vocab plus added tokens).
  int32_t vocab_size() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class StreamingDetokenizer;
};

// Turns a stream of token ids into text deltas that never split a UTF-8 character:
// incomplete trailing bytes are held back until the next token completes them.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tok, bool skip_special_tokens = true);
  // Text that became complete with this token (may be empty).
  std::string push(int32_t id);
  // Whatever is still held back, with invalid bytes replaced by U+FFFD.
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

struct BpeTrainOptions {
  int32_t vocab_size = 1024;                  // 256 byte tokens + merges (+ specials after them)
  std::vector<std::string> special_tokens;    // appended as added tokens with special = true
  int32_t min_pair_frequency = 2;
};

// Trains a byte-level BPE (Qwen2-style pre-tokenizer regex, NFC-free) on `corpus` and
// returns the tokenizer.json text that HF `tokenizers` loads unchanged.
Result<std::string> train_byte_level_bpe(const std::vector<std::string>& corpus, const BpeTrainOptions& opts);

}  // namespace tandem::model
