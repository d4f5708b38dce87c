#include "tokenizer/bpe_model.h"

#include <cstdio>
#include <mutex>
#include <queue>

#include "tokenizer/utf8.h"

namespace tandem::model::tok {
namespace {

Result<std::pair<std::string, std::string>> parse_merge(const Json& m, size_t index) {
  const std::string where = "model.merges[" + std::to_string(index) + "]";
  if (m.is_string()) {
    // Legacy "a b" form: tokens never contain a space, so it splits once.
    const std::string& s = m.get_ref<const std::string&>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      return invalid_argument(where + ": expected \"left right\", got \"" + s + "\"");
    return std::make_pair(s.substr(0, sp), s.substr(sp + 1));
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return std::make_pair(m[0].get<std::string>(), m[1].get<std::string>());
  return invalid_argument(where + ": expected a \"left right\" string or a [left, right] pair");
}

}  // namespace

Result<std::unique_ptr<BpeModel>> BpeModel::parse(const Json& j) {
  const std::string where = "model.BPE";
  auto m = std::make_unique<BpeModel>();

  auto vit = j.find("vocab");
  if (vit == j.end() || !vit->is_object()) return invalid_argument(where + ": missing object 'vocab'");
  m->vocab_.reserve(vit->size());
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX - 1)
      return invalid_argument(where + ": vocab entry '" + it.key() + "' must map to a non-negative integer id");
    if (!is_valid_utf8(it.key())) return invalid_argument(where + ": vocab entry is not valid UTF-8");
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    m->vocab_[it.key()] = id;
    if (static_cast<size_t>(id) >= m->tokens_.size()) {
      m->tokens_.resize(static_cast<size_t>(id) + 1);
      m->has_token_.resize(static_cast<size_t>(id) + 1, false);
    }
    m->tokens_[id] = it.key();
    m->has_token_[id] = true;
  }

  if (auto d = j.find("dropout"); d != j.end() && !d->is_null()) {
    if (!d->is_number()) return invalid_argument(where + ": field 'dropout' must be a number or null");
    if (d->get<double>() != 0.0) return unimplemented(where + ": dropout > 0 (random merges) is not supported");
  }
  TANDEM_ASSIGN_OR_RETURN(m->continuing_subword_prefix_, json_string(j, "continuing_subword_prefix", "", where));
  TANDEM_ASSIGN_OR_RETURN(m->end_of_word_suffix_, json_string(j, "end_of_word_suffix", "", where));
  TANDEM_ASSIGN_OR_RETURN(m->fuse_unk_, json_bool(j, "fuse_unk", false, where));
  TANDEM_ASSIGN_OR_RETURN(m->byte_fallback_, json_bool(j, "byte_fallback", false, where));
  TANDEM_ASSIGN_OR_RETURN(m->ignore_merges_, json_bool(j, "ignore_merges", false, where));
  TANDEM_ASSIGN_OR_RETURN(std::string unk, json_string(j, "unk_token", "", where));
  if (!unk.empty()) {
    // HF only complains when an unknown character actually needs the unk
    // token; an absent one is treated the same way as no unk token here.
    if (auto id = m->token_to_id(unk)) m->unk_id_ = *id;
  }
  if (m->byte_fallback_) {
    m->byte_fallback_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      if (auto id = m->token_to_id(name)) m->byte_fallback_ids_[b] = *id;
    }
  }

  auto mit = j.find("merges");
  if (mit != j.end() && !mit->is_null()) {
    if (!mit->is_array()) return invalid_argument(where + ": field 'merges' must be an array");
    m->merges_.reserve(mit->size());
    const size_t prefix_len = m->continuing_subword_prefix_.size();
    for (size_t i = 0; i < mit->size(); ++i) {
      TANDEM_ASSIGN_OR_RETURN(auto pair, parse_merge((*mit)[i], i));
      const std::string where_i = "model.merges[" + std::to_string(i) + "]";
      auto a = m->token_to_id(pair.first);
      if (!a) return invalid_argument(where_i + ": token '" + pair.first + "' is not in the vocabulary");
      auto b = m->token_to_id(pair.second);
      if (!b) return invalid_argument(where_i + ": token '" + pair.second + "' is not in the vocabulary");
      std::string_view right = pair.second;
      if (prefix_len && right.substr(0, prefix_len) == m->continuing_subword_prefix_) right.remove_prefix(prefix_len);
      const std::string merged = pair.first + std::string(right);
      auto n = m->token_to_id(merged);
      if (!n) return invalid_argument(where_i + ": merged token '" + merged + "' is not in the vocabulary");
      // A repeated pair keeps its last rank, as HF's HashMap collect does.
      m->merges_[pair_key(*a, *b)] = Merge{static_cast<int32_t>(i), *n};
    }
  }
  return m;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !has_token_[id]) return nullptr;
  return &tokens_[id];
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (auto id = token_to_id(piece)) {
      out->push_back(*id);
      return;
    }
  }
  const bool cacheable = piece.size() < kMaxCachedPiece;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(piece, &ids);
  out->insert(out->end(), ids.begin(), ids.end());
  if (cacheable) {
    // A busy writer just means this piece is not cached this time.
    std::unique_lock lock(cache_mu_, std::try_to_lock);
    if (lock.owns_lock() && cache_.size() < kCacheCapacity) cache_.emplace(std::string(piece), std::move(ids));
  }
}

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> syms;
  syms.reserve(w.size());
  auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(syms.size());
    if (n > 0) syms.back().next = n;
    syms.push_back({id, n - 1, -1, true});
  };

  // One symbol per character; unknown characters go to byte fallback, then
  // to the (optionally fused) unk token, else they are dropped, as in HF.
  int32_t pending_unk = -1;
  std::string s;
  size_t i = 0;
  while (i < w.size()) {
    size_t len = utf8_len_at(w, i);
    if (i + len > w.size()) len = w.size() - i;
    const bool first = i == 0, last = i + len >= w.size();
    std::string_view ch = w.substr(i, len);
    i += len;
    std::optional<int32_t> id;
    if (continuing_subword_prefix_.empty() && end_of_word_suffix_.empty()) {
      id = token_to_id(ch);
    } else {
      s.clear();
      if (!first) s += continuing_subword_prefix_;
      s += ch;
      if (last) s += end_of_word_suffix_;
      id = token_to_id(s);
      ch = s;
    }
    if (id) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : ch) add(byte_fallback_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t left) {
    const int32_t right = syms[left].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(syms[left].id, syms[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (int32_t k = 0; k + 1 < static_cast<int32_t>(syms.size()); ++k) consider(k);

  // Lowest rank first, leftmost on ties. Entries go stale when a neighbour
  // merges; they are recognised by re-checking the pair's result.
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = syms[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = syms[left.next];
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& sym : syms)
    if (sym.alive) out->push_back(sym.id);
}

}  // namespace tandem::model::tok
