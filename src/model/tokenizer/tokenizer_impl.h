// Tokenizer::Impl, shared by tokenizer.cpp and streaming.cpp.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tandem/model/tokenizer.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizer.h"

namespace tandem::model {

struct Tokenizer::Impl {
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::BpeModel> model;
  std::unique_ptr<tok::PostProcessor> post_processor;
  std::unique_ptr<tok::Decoder> decoder;

  std::vector<tok::AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index into added
  tok::StringIdMap added_by_content;
  tok::AddedTokenMatcher raw_matcher;         // tokens with normalized = false
  tok::AddedTokenMatcher normalized_matcher;  // tokens with normalized = true
  int32_t vocab_size = 0;

  const tok::AddedToken* added_token(int32_t id) const {
    auto it = added_by_id.find(id);
    return it == added_by_id.end() ? nullptr : &added[it->second];
  }
  // Parses "added_tokens" and builds the matchers (after the normalizer is set).
  Status build_added_tokens(const tok::Json& root);
  // The token as the decoder sees it; false for unknown ids.
  bool decode_token(int32_t id, tok::DecodeToken* out) const;
  // One token's raw bytes within a stream.
  std::string stream_piece(int32_t id, bool first) const;
};

}  // namespace tandem::model
