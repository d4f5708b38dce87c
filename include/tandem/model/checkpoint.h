// A HuggingFace model directory opened as a whole: config.json, the weights
// (model.safetensors or a sharded index), tokenizer.json, tokenizer_config.json
// and generation_config.json, cross-checked against each other.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/model/config.h"
#include "tandem/model/safetensors.h"
#include "tandem/model/tokenizer.h"

namespace tandem::model {

struct TokenizerConfig {
  std::string chat_template;  // empty when the model has none
  // A list of named templates' "tool_use" one (Hermes-2-Pro, Hermes-3):
  // transformers renders with it when tools are given. Empty: none.
  std::string tool_use_template;
  std::string bos_token;
  std::string eos_token;
  bool add_bos_token = false;
};

struct Checkpoint {
  std::string dir;
  ModelConfig config;
  std::unique_ptr<WeightStore> weights;
  std::unique_ptr<Tokenizer> tokenizer;
  TokenizerConfig tokenizer_config;
  // Union of config.json, generation_config.json and tokenizer eos ids.
  std::vector<int32_t> stop_token_ids;

  static Result<Checkpoint> open(const std::string& dir);
};

Result<TokenizerConfig> parse_tokenizer_config(std::string_view json_text, const std::string& source);

// Reads a whole file; NOT_FOUND naming it when it cannot be opened.
Result<std::string> read_text_file(const std::string& path);

}  // namespace tandem::model
