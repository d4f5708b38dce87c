// Byte-level BPE training with incremental pair counts: each merge only
// revisits the words that contain the merged pair.
#include <algorithm>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "tandem/model/tokenizer.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace tandem::model {
namespace {

using OJson = nlohmann::ordered_json;

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
int32_t pair_left(uint64_t k) { return static_cast<int32_t>(k >> 32); }
int32_t pair_right(uint64_t k) { return static_cast<int32_t>(k & 0xFFFFFFFFu); }

struct Word {
  std::vector<int32_t> syms;
  int64_t count = 0;
};

// Pre-tokenizes the corpus as the emitted tokenizer.json will (Split with the
// Qwen2 regex, Isolated, then the byte-level map) and counts distinct words.
Result<std::vector<Word>> count_words(const std::vector<std::string>& corpus, bool nfc,
                                      const std::unordered_map<std::string, int32_t>& alphabet) {
  TANDEM_ASSIGN_OR_RETURN(tok::Regex re, tok::Regex::compile(tok::kQwen2Pattern));
  std::unique_ptr<tok::Normalizer> normalizer;
  if (nfc) {
    TANDEM_ASSIGN_OR_RETURN(normalizer, tok::parse_normalizer(tok::Json{{"type", "NFC"}}));
  }
  std::unordered_map<std::string, int64_t> counts;
  std::vector<tok::Span> spans;
  std::string text;
  for (size_t d = 0; d < corpus.size(); ++d) {
    size_t bad = 0;
    if (!tok::is_valid_utf8(corpus[d], &bad))
      return invalid_argument("train_byte_level_bpe: corpus document " + std::to_string(d) +
                              " is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
    text = corpus[d];
    if (normalizer) TANDEM_RETURN_IF_ERROR(normalizer->normalize(text));
    spans.clear();
    TANDEM_RETURN_IF_ERROR(re.find_all(text, &spans));
    // Isolated: matches and the gaps between them are all words.
    size_t prev = 0;
    auto add = [&](size_t b, size_t e) {
      if (e > b) ++counts[std::string(text, b, e - b)];
    };
    for (const auto& s : spans) {
      add(prev, s.begin);
      add(s.begin, s.end);
      prev = s.end;
    }
    add(prev, text.size());
  }
  // Sorted so that word order, and with it every tie, is reproducible.
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [raw, count] : sorted) {
    Word w;
    w.count = count;
    for (char c : raw) {
      std::string ch = tok::bytes_to_byte_level(std::string_view(&c, 1));
      w.syms.push_back(alphabet.at(ch));
    }
    words.push_back(std::move(w));
  }
  return words;
}

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  // Max-heap on count; on equal counts the smaller (left, right) id pair wins.
  bool operator<(const HeapEntry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

class MergeTrainer {
 public:
  MergeTrainer(std::vector<Word> words, std::vector<std::string> tokens)
      : words_(std::move(words)), tokens_(std::move(tokens)) {
    for (size_t i = 0; i < tokens_.size(); ++i) token_ids_.emplace(tokens_[i], static_cast<int32_t>(i));
    for (size_t w = 0; w < words_.size(); ++w) {
      const auto& s = words_[w].syms;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        counts_[k] += words_[w].count;
        auto& where = where_[k];
        if (where.empty() || where.back() != static_cast<int32_t>(w)) where.push_back(static_cast<int32_t>(w));
      }
    }
    for (const auto& [k, c] : counts_) heap_.push({c, k});
    stamp_.assign(words_.size(), 0);
  }

  // Performs merges until `target_vocab` tokens exist or the best pair is
  // rarer than `min_frequency`.
  void run(size_t target_vocab, int64_t min_frequency) {
    while (tokens_.size() < target_vocab) {
      std::optional<HeapEntry> best;
      while (!heap_.empty()) {
        HeapEntry e = heap_.top();
        heap_.pop();
        auto it = counts_.find(e.pair);
        if (it != counts_.end() && it->second == e.count && e.count > 0) {
          best = e;
          break;
        }
      }
      if (!best || best->count < min_frequency) break;
      apply_merge(best->pair);
    }
  }

  const std::vector<std::string>& tokens() const { return tokens_; }
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }

 private:
  void apply_merge(uint64_t pair) {
    const int32_t a = pair_left(pair), b = pair_right(pair);
    std::string merged = tokens_[a] + tokens_[b];
    int32_t new_id;
    // Two different splits can spell the same token; it keeps one id.
    if (auto it = token_ids_.find(merged); it != token_ids_.end()) {
      new_id = it->second;
    } else {
      new_id = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(merged);
      token_ids_.emplace(std::move(merged), new_id);
    }
    merges_.emplace_back(a, b);

    ++generation_;
    std::unordered_map<uint64_t, int64_t> delta;
    std::vector<int32_t> affected = std::move(where_[pair]);
    where_.erase(pair);
    for (int32_t w : affected) {
      if (stamp_[w] == generation_) continue;
      stamp_[w] = generation_;
      Word& word = words_[w];
      auto& s = word.syms;
      bool found = false;
      for (size_t i = 0; i + 1 < s.size() && !found; ++i) found = s[i] == a && s[i + 1] == b;
      if (!found) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[pair_key(s[i], s[i + 1])] -= word.count;
      std::vector<int32_t> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(new_id);
          i += 2;
        } else {
          out.push_back(s[i++]);
        }
      }
      s = std::move(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t k = pair_key(s[i], s[i + 1]);
        delta[k] += word.count;
        if (s[i] == new_id || s[i + 1] == new_id) {
          auto& where = where_[k];
          if (where.empty() || where.back() != w) where.push_back(w);
        }
      }
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = counts_[k];
      c += d;
      if (c > 0) heap_.push({c, k});
    }
  }

  std::vector<Word> words_;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> token_ids_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::unordered_map<uint64_t, int64_t> counts_;
  std::unordered_map<uint64_t, std::vector<int32_t>> where_;
  std::priority_queue<HeapEntry> heap_;
  std::vector<uint32_t> stamp_;
  uint32_t generation_ = 0;
};

OJson byte_level_component() {
  return OJson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
}

}  // namespace

Result<std::string> train_byte_level_bpe(const std::vector<std::string>& corpus, const BpeTrainOptions& opts) {
  std::vector<std::string> specials;
  for (const auto& s : opts.special_tokens) {
    if (s.empty()) return invalid_argument("train_byte_level_bpe: empty special token");
    if (!tok::is_valid_utf8(s)) return invalid_argument("train_byte_level_bpe: special token is not valid UTF-8");
    if (std::find(specials.begin(), specials.end(), s) == specials.end()) specials.push_back(s);
  }
  const int64_t base = 256 + static_cast<int64_t>(specials.size());
  if (opts.vocab_size < base)
    return invalid_argument("train_byte_level_bpe: vocab_size " + std::to_string(opts.vocab_size) +
                            " is smaller than the 256 byte tokens plus " + std::to_string(specials.size()) +
                            " special tokens");

  std::vector<std::string> alphabet = tok::byte_level_alphabet();
  std::unordered_map<std::string, int32_t> alphabet_ids;
  for (size_t i = 0; i < alphabet.size(); ++i) alphabet_ids.emplace(alphabet[i], static_cast<int32_t>(i));
  TANDEM_ASSIGN_OR_RETURN(std::vector<Word> words, count_words(corpus, opts.nfc, alphabet_ids));

  MergeTrainer trainer(std::move(words), std::move(alphabet));
  trainer.run(static_cast<size_t>(opts.vocab_size) - specials.size(), std::max<int64_t>(1, opts.min_pair_frequency));
  const auto& tokens = trainer.tokens();
  for (const auto& s : specials)
    if (std::find(tokens.begin(), tokens.end(), s) != tokens.end())
      return invalid_argument("train_byte_level_bpe: special token '" + s + "' is also a learned token");

  OJson added = OJson::array();
  for (size_t i = 0; i < specials.size(); ++i)
    added.push_back(OJson{{"id", static_cast<int64_t>(tokens.size() + i)},
                          {"content", specials[i]},
                          {"single_word", false},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"normalized", false},
                          {"special", true}});
  OJson vocab = OJson::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int64_t>(i);
  OJson merges = OJson::array();
  for (const auto& [a, b] : trainer.merges()) merges.push_back(OJson::array({tokens[a], tokens[b]}));

  OJson split = {{"type", "Split"},
                 {"pattern", {{"Regex", std::string(tok::kQwen2Pattern)}}},
                 {"behavior", "Isolated"},
                 {"invert", false}};
  OJson root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = std::move(added);
  root["normalizer"] = opts.nfc ? OJson{{"type", "NFC"}} : OJson();
  root["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", OJson::array({split, byte_level_component()})}};
  root["post_processor"] = byte_level_component();
  root["decoder"] = byte_level_component();
  root["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", nullptr},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"ignore_merges", false},
                   {"vocab", std::move(vocab)},
                   {"merges", std::move(merges)}};
  return root.dump(2) + "\n";
}

}  // namespace tandem::model
