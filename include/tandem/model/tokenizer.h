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
  // This is the token's share in the middle of a sequence; decoders that strip
  // the first token's leading space (SentencePiece, Metaspace) leave it here.
  // Added tokens give their content. Unknown ids give "".
  std::string token_bytes(int32_t id) const;
  // The same as the first token of a text: a decoder that strips a leading
  // space (SentencePiece) strips it here.
  std::string token_bytes(int32_t id, bool first) const;

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
  // `continues_text`: the tokens follow text already shown (an echoed
  // prompt), so the first is decoded as mid-sequence (a SentencePiece
  // tokenizer keeps its leading space).
  explicit StreamingDetokenizer(const Tokenizer& tok, bool skip_special_tokens = true, bool continues_text = false);
  // Text that became complete with this token (may be empty).
  std::string push(int32_t id);
  // Whatever is still held back, with invalid bytes replaced by U+FFFD.
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
  // Decoders such as Metaspace or Strip treat the first token differently.
  bool first_ = true;
};

struct BpeTrainOptions {
  int32_t vocab_size = 1024;                  // 256 byte tokens + merges (+ specials after them)
  std::vector<std::string> special_tokens;    // appended as added tokens with special = true
  int32_t min_pair_frequency = 2;
  // NFC-normalize the corpus and write {"type": "NFC"} as the normalizer
  // (Qwen2 style); by default the normalizer is null.
  bool nfc = false;
};

// Trains a byte-level BPE (Qwen2-style pre-tokenizer regex, NFC-free unless
// opts.nfc) on `corpus` and returns the tokenizer.json text that HF
// `tokenizers` loads unchanged. Ids 0..255 are the byte-level alphabet in code
// point order (as HF's trainer assigns them), then the merged tokens in merge
// order, then the special tokens. The most frequent pair is merged first, ties
// going to the smallest (left id, right id). Deterministic: the same corpus
// gives the same bytes. Invalid UTF-8 in the corpus is an INVALID_ARGUMENT error.
Result<std::string> train_byte_level_bpe(const std::vector<std::string>& corpus, const BpeTrainOptions& opts);

// The English-heavy multilingual text shipped with the library (the
// src/model/tokenizer/corpus/*.txt files, embedded at build time), one
// document per line, for training tokenizers without any download.
std::string_view builtin_tokenizer_corpus();

// Whether `s` is well-formed UTF-8 (the tokenizer's strict check: no overlongs,
// surrogates or code points past U+10FFFF). A token's bytes may not be: a
// byte-level token can hold part of a character.
bool is_valid_utf8(std::string_view s);

}  // namespace tandem::model
