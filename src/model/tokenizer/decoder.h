// tokenizer.json "decoder" components: ByteLevel, Replace, ByteFallback,
// Fuse, Strip, Metaspace and Sequence. decode_chain() follows HF's whole-
// sequence semantics; stream_piece() gives one token's share of it so that
// streaming output concatenates to the same text.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_util.h"

namespace tandem::model::tok {

struct DecodeToken {
  std::string text;
  // Added tokens decode to their content, never through the byte table.
  bool added = false;
};

struct StreamState {
  bool first = false;  // this is the first token of the stream
  bool fused = false;  // an earlier step (Fuse, ByteLevel) joined the tokens
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<DecodeToken>& tokens) const = 0;
  // Raw bytes the token contributes mid-stream; no UTF-8 repair.
  virtual void stream_piece(DecodeToken& token, StreamState& state) const = 0;
};

Result<std::unique_ptr<Decoder>> parse_decoder(const Json& j);

}  // namespace tandem::model::tok
