// Which tokens a grammar allows next: the vocabulary's trie walked through the
// automaton from the current state, pruned where the automaton dies. A state's
// mask is computed once and kept.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "lazy_dfa.h"
#include "tandem/model/guided.h"

namespace tandem::model {

bool ByteAutomaton::complete(int32_t state) {
  // After an error unbuilt transitions read as dead: nothing is known complete.
  if (state == kDead || !accepting(state) || !error().is_ok()) return false;
  for (int b = 0; b < 256; ++b)
    if (next(state, static_cast<uint8_t>(b)) != kDead) return false;
  return error().is_ok();  // a transition lost to a limit just now is not a dead end
}

std::string GuideSpec::key() const {
  switch (kind) {
    case Kind::kNone: return "none";
    case Kind::kJsonObject: return "json_object";
    case Kind::kRegex: return "regex:" + regex;
  }
  return "";
}

Result<GuideSpec> make_guide_spec(const GuideRequest& r, const GuideFieldNames& names) {
  std::vector<std::string> set;
  if (!r.regex.empty()) set.push_back(names.regex);
  if (!r.json_schema.empty()) set.push_back(names.json_schema);
  if (!r.choice.empty()) set.push_back(names.choice);
  if (r.json_object) set.push_back(names.json_object);
  const size_t kinds = set.size();
  if (kinds > 1) {
    std::string both;
    for (size_t i = 0; i < set.size(); ++i) both += (i ? ", " : "") + set[i];
    return invalid_argument(both + ": at most one of " + names.regex + ", " + names.json_schema + ", " +
                            names.choice + " and " + names.json_object + " may be set");
  }
  GuideSpec spec;
  if (kinds == 0) return spec;
  if (r.json_object) {
    spec.kind = GuideSpec::Kind::kJsonObject;
    return spec;
  }
  std::string field;
  spec.kind = GuideSpec::Kind::kRegex;
  if (!r.regex.empty()) {
    field = names.regex;
    spec.regex = r.regex;
  } else if (!r.json_schema.empty()) {
    field = names.json_schema;
    auto converted = json_schema_to_regex(r.json_schema);
    if (!converted.is_ok()) return invalid_argument(field + ": " + converted.status().message());
    spec.regex = std::move(converted).value();
  } else {
    field = names.choice;
    spec.regex = choice_regex(r.choice);
  }
  auto compiled = compile_regex(spec.regex);
  if (!compiled.is_ok()) return invalid_argument(field + ": " + compiled.status().message());
  return spec;
}

Result<std::unique_ptr<ByteAutomaton>> compile_guide(const GuideSpec& spec) {
  switch (spec.kind) {
    case GuideSpec::Kind::kRegex: return compile_regex(spec.regex);
    case GuideSpec::Kind::kJsonObject: return json_object_automaton();
    case GuideSpec::Kind::kNone: break;
  }
  return invalid_argument("guided decoding: no grammar given");
}

namespace {

// Builds the trie with per-node child lists, then lays it out flat in
// depth-first order.
void build_trie(const std::vector<std::string>& bytes, TokenVocabulary::Trie& out) {
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    std::vector<int32_t> tokens;
  };
  std::vector<Node> trie(1);
  for (size_t id = 0; id < bytes.size(); ++id) {
    const std::string& text = bytes[id];
    if (text.empty()) continue;
    int32_t node = 0;
    for (char ch : text) {
      const auto b = static_cast<uint8_t>(ch);
      auto& kids = trie[static_cast<size_t>(node)].children;
      auto it = std::lower_bound(kids.begin(), kids.end(), b,
                                 [](const std::pair<uint8_t, int32_t>& e, uint8_t v) { return e.first < v; });
      if (it != kids.end() && it->first == b) {
        node = it->second;
        continue;
      }
      const auto child = static_cast<int32_t>(trie.size());
      kids.insert(it, {b, child});  // before emplace_back: `kids` refers into `trie`
      trie.emplace_back();
      node = child;
    }
    trie[static_cast<size_t>(node)].tokens.push_back(static_cast<int32_t>(id));
  }
  // Depth-first numbering: a node's subtree is contiguous.
  std::vector<int32_t> order, number(trie.size());
  order.reserve(trie.size());
  std::vector<int32_t> stack = {0};
  while (!stack.empty()) {
    const int32_t n = stack.back();
    stack.pop_back();
    number[static_cast<size_t>(n)] = static_cast<int32_t>(order.size());
    order.push_back(n);
    const auto& kids = trie[static_cast<size_t>(n)].children;
    for (auto it = kids.rbegin(); it != kids.rend(); ++it) stack.push_back(it->second);
  }
  out = {};
  out.edge_begin.reserve(order.size() + 1);
  out.token_begin.reserve(order.size() + 1);
  for (int32_t n : order) {
    const Node& node = trie[static_cast<size_t>(n)];
    out.edge_begin.push_back(static_cast<int32_t>(out.edge_byte.size()));
    out.token_begin.push_back(static_cast<int32_t>(out.tokens.size()));
    for (const auto& [b, child] : node.children) {
      out.edge_byte.push_back(b);
      out.edge_node.push_back(child);  // renumbered below
    }
    out.tokens.insert(out.tokens.end(), node.tokens.begin(), node.tokens.end());
  }
  out.edge_begin.push_back(static_cast<int32_t>(out.edge_byte.size()));
  out.token_begin.push_back(static_cast<int32_t>(out.tokens.size()));
  for (int32_t& child : out.edge_node) child = number[static_cast<size_t>(child)];
}

}  // namespace

std::shared_ptr<const TokenVocabulary> TokenVocabulary::build(const Tokenizer& tokenizer, int32_t model_vocab) {
  auto v = std::make_shared<TokenVocabulary>();
  v->vocab_ = model_vocab;
  v->bytes_.resize(static_cast<size_t>(std::max(model_vocab, 0)));
  std::vector<std::string> first(v->bytes_.size());
  bool differs = false;
  const int32_t known = std::min(model_vocab, tokenizer.vocab_size());
  for (int32_t id = 0; id < known; ++id) {
    if (tokenizer.is_special(id)) continue;
    v->bytes_[static_cast<size_t>(id)] = tokenizer.token_bytes(id, false);
    first[static_cast<size_t>(id)] = tokenizer.token_bytes(id, true);
    differs = differs || first[static_cast<size_t>(id)] != v->bytes_[static_cast<size_t>(id)];
  }
  build_trie(v->bytes_, v->trie_);
  if (differs) {
    v->first_bytes_ = std::move(first);
    build_trie(v->first_bytes_, v->first_trie_);
  }
  return v;
}

const std::string& TokenVocabulary::bytes(int32_t token, bool first) const {
  static const std::string kNone;
  if (token < 0 || token >= vocab_) return kNone;
  return first && first_differs() ? first_bytes_[static_cast<size_t>(token)] : bytes_[static_cast<size_t>(token)];
}

TokenGuide::TokenGuide(std::unique_ptr<ByteAutomaton> automaton, std::shared_ptr<const TokenVocabulary> vocab)
    : automaton_(std::move(automaton)), vocab_(std::move(vocab)) {}

TokenGuide::State TokenGuide::start() {
  std::lock_guard<std::mutex> lock(mu_);
  return {automaton_->start(), true};
}

Result<std::shared_ptr<const std::vector<uint64_t>>> TokenGuide::allowed(State state) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool first = state.first && vocab_->first_differs();
  const int64_t key = (static_cast<int64_t>(state.automaton) << 1) | (first ? 1 : 0);
  if (auto it = masks_.find(key); it != masks_.end()) return it->second;
  auto mask = std::make_shared<std::vector<uint64_t>>((static_cast<size_t>(vocab_->size()) + 63) / 64, 0);
  if (state.automaton != ByteAutomaton::kDead) {
    const TokenVocabulary::Trie& trie = vocab_->trie(first);
    uint64_t* bits = mask->data();
    std::vector<std::pair<int32_t, int32_t>> stack = {{0, state.automaton}};  // trie node, automaton state
    while (!stack.empty()) {
      const auto [node, at] = stack.back();
      stack.pop_back();
      // The state's row read directly; only transitions not built yet go
      // through next() (which may move the table, so the row is read again).
      const int32_t* row = automaton_->transitions(at);
      const int32_t end = trie.edge_begin[static_cast<size_t>(node) + 1];
      for (int32_t e = trie.edge_begin[static_cast<size_t>(node)]; e < end; ++e) {
        const uint8_t byte = trie.edge_byte[static_cast<size_t>(e)];
        int32_t to = row ? row[byte] : ByteAutomaton::kUnknown;
        if (to == ByteAutomaton::kUnknown) {
          to = automaton_->next(at, byte);
          row = automaton_->transitions(at);
          if (to == ByteAutomaton::kDead && !automaton_->error().is_ok()) {
            stack.clear();  // the mask cannot be completed: stop walking
            break;
          }
        }
        if (to == ByteAutomaton::kDead) continue;
        const int32_t child = trie.edge_node[static_cast<size_t>(e)];
        const int32_t t_end = trie.token_begin[static_cast<size_t>(child) + 1];
        for (int32_t k = trie.token_begin[static_cast<size_t>(child)]; k < t_end; ++k) {
          const int32_t t = trie.tokens[static_cast<size_t>(k)];
          bits[static_cast<size_t>(t) / 64] |= uint64_t{1} << (t % 64);
        }
        if (trie.edge_begin[static_cast<size_t>(child)] < trie.edge_begin[static_cast<size_t>(child) + 1])
          stack.push_back({child, to});
      }
    }
  }
  check_wear();
  TANDEM_RETURN_IF_ERROR(automaton_->error());
  std::shared_ptr<const std::vector<uint64_t>> out = std::move(mask);
  if (masks_.size() >= kMaxCachedMasks) masks_.clear();
  masks_.emplace(key, out);
  return out;
}

TokenGuide::State TokenGuide::advance(State state, int32_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string& text = vocab_->bytes(token, state.first);
  int32_t at = text.empty() ? ByteAutomaton::kDead : state.automaton;
  for (char ch : text) {
    if (at == ByteAutomaton::kDead) break;
    at = automaton_->next(at, static_cast<uint8_t>(ch));
  }
  check_wear();
  return {at, false};
}

bool TokenGuide::accepting(State state) {
  std::lock_guard<std::mutex> lock(mu_);
  return state.automaton != ByteAutomaton::kDead && automaton_->accepting(state.automaton);
}

void TokenGuide::check_wear() {
  if (!automaton_->error().is_ok() || automaton_->states() > guided::kMaxDfaStates / 2)
    retired_.store(true, std::memory_order_relaxed);
}

bool TokenGuide::complete(State state) {
  std::lock_guard<std::mutex> lock(mu_);
  return automaton_->complete(state.automaton);
}

void mask_logits(const std::vector<uint64_t>& mask, float* logits, int64_t n) {
  for (int64_t base = 0; base < n; base += 64) {
    const size_t w = static_cast<size_t>(base / 64);
    const uint64_t m = w < mask.size() ? mask[w] : 0;
    const int64_t end = std::min<int64_t>(n, base + 64);
    if (m == ~uint64_t{0}) continue;  // a whole word allowed: common inside strings
    if (m == 0) {                     // none allowed: common everywhere else
      std::fill(logits + base, logits + end, -INFINITY);
      continue;
    }
    for (int64_t t = base; t < end; ++t)
      if (!((m >> (t - base)) & 1u)) logits[t] = -INFINITY;
  }
}

Result<std::shared_ptr<TokenGuide>> GuideCache::get(const GuideSpec& spec) {
  if (!tokenizer_) return failed_precondition("guided decoding: the model has no tokenizer.json");
  const std::string key = spec.key();
  std::shared_ptr<const TokenVocabulary> vocab;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < recent_.size(); ++i)
      if (recent_[i].first == key) {
        auto hit = recent_[i];
        recent_.erase(recent_.begin() + static_cast<std::ptrdiff_t>(i));
        if (hit.second->retired()) break;  // worn out: start the grammar over
        recent_.push_back(hit);
        return hit.second;
      }
    if (!vocab_) vocab_ = TokenVocabulary::build(*tokenizer_, model_vocab_);
    vocab = vocab_;
  }
  // Compiled outside the lock: a large grammar does not hold up the others.
  TANDEM_ASSIGN_OR_RETURN(auto automaton, compile_guide(spec));
  auto guide = std::make_shared<TokenGuide>(std::move(automaton), std::move(vocab));
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [k, other] : recent_)  // compiled meanwhile by another request: share it
    if (k == key && !other->retired()) return other;
  recent_.push_back({key, guide});
  if (recent_.size() > capacity_) recent_.erase(recent_.begin());
  return guide;
}

}  // namespace tandem::model
