// tokenizer.json "pre_tokenizer" components: ByteLevel, Split, Digits,
// Metaspace and Sequence. Each step refines a list of pieces; the BPE model
// then runs on every final piece independently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_util.h"

namespace tandem::model::tok {

struct Piece {
  std::string text;
  // The piece begins at offset 0 of the text given to encode() (Metaspace's
  // prepend_scheme "first" needs it).
  bool at_input_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Rewrites `pieces` in place; empty pieces are dropped.
  virtual Status apply(std::vector<Piece>& pieces) const = 0;
};

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const Json& j);

// The GPT-2 pattern that ByteLevel(use_regex=true) applies.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Qwen2/Qwen3: the Llama-3 / cl100k pattern with single digits.
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace tandem::model::tok
