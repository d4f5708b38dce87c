// The "BPE" model of tokenizer.json: vocab, ranked merges, byte fallback,
// unk handling, and a per-piece cache shared by concurrent encode() calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/json_util.h"

namespace tandem::model::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  static Result<std::unique_ptr<BpeModel>> parse(const Json& model);

  // Appends the ids of one pre-tokenized piece. Thread-safe.
  void tokenize(std::string_view piece, std::vector<int32_t>* out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Null for ids without a token.
  const std::string* id_to_token(int32_t id) const;
  // Largest id in the vocabulary, -1 when empty.
  int32_t max_id() const { return static_cast<int32_t>(tokens_.size()) - 1; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_word(std::string_view piece, std::vector<int32_t>* out) const;

  StringIdMap vocab_;
  std::vector<std::string> tokens_;  // by id
  std::vector<bool> has_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::vector<int32_t> byte_fallback_ids_;  // <0xXX> ids, -1 where missing

  // Pieces repeat a lot in natural text; caching their ids is most of the
  // speed of encode(). Bounded like HF's: once full, new pieces are not added.
  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kMaxCachedPiece = 256;
  mutable std::shared_mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace tandem::model::tok
