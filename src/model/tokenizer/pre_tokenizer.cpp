#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <optional>

#include "tokenizer/byte_level.h"
#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace tandem::model::tok {
namespace {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Split3 {
  size_t begin, end;
  bool is_match;
};

// Turns matches into HF's covering list of (span, is_match), gaps included.
std::vector<Split3> cover(const std::vector<Span>& matches, size_t len, bool invert) {
  std::vector<Split3> out;
  size_t prev = 0;
  for (const Span& m : matches) {
    if (m.begin > prev) out.push_back({prev, m.begin, invert});
    out.push_back({m.begin, m.end, !invert});
    prev = m.end;
  }
  if (prev < len) out.push_back({prev, len, invert});
  return out;
}

// Applies a split behavior to one piece, mirroring HF's NormalizedString::split.
void split_piece(const Piece& piece, const std::vector<Split3>& splits, SplitBehavior behavior,
                 std::vector<Piece>* out) {
  std::vector<Split3> kept;
  kept.reserve(splits.size());
  switch (behavior) {
    case SplitBehavior::kIsolated: kept = splits; break;
    case SplitBehavior::kRemoved:
      for (const auto& s : splits)
        if (!s.is_match) kept.push_back(s);
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (const auto& s : splits) {
        if (!kept.empty() && s.is_match == prev_match) kept.back().end = s.end;
        else kept.push_back(s);
        prev_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const auto& s : splits) {
        if (!kept.empty() && s.is_match && !prev_match) kept.back().end = s.end;
        else kept.push_back(s);
        prev_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool next_match = false;
      for (auto it = splits.rbegin(); it != splits.rend(); ++it) {
        if (!kept.empty() && it->is_match && !next_match) kept.back().begin = it->begin;
        else kept.push_back(*it);
        next_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  for (const auto& s : kept) {
    if (s.end <= s.begin) continue;
    out->push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_input_start && s.begin == 0});
  }
}

Result<SplitBehavior> parse_behavior(const Json& j, const std::string& where) {
  TANDEM_ASSIGN_OR_RETURN(std::string b, json_string(j, "behavior", "Isolated", where));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return invalid_argument(where + ": unknown split behavior '" + b + "'");
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  Status apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<Span> matches;
    for (const Piece& p : pieces) {
      matches.clear();
      TANDEM_RETURN_IF_ERROR(pattern_.find_all(p.text, &matches));
      split_piece(p, cover(matches, p.text.size(), invert_), behavior_, &out);
    }
    pieces = std::move(out);
    return Status::ok();
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  Status apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<Span> matches;
    for (Piece& p : pieces) {
      // HF prefixes every piece reaching this step, not just the first one.
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (!regex_) {
        if (!p.text.empty()) out.push_back({bytes_to_byte_level(p.text), p.at_input_start});
        continue;
      }
      matches.clear();
      TANDEM_RETURN_IF_ERROR(regex_->find_all(p.text, &matches));
      for (const auto& s : cover(matches, p.text.size(), false))
        out.push_back({bytes_to_byte_level(std::string_view(p.text).substr(s.begin, s.end - s.begin)),
                       p.at_input_start && s.begin == 0});
    }
    pieces = std::move(out);
    return Status::ok();
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

// Digits: numeric characters become pieces of their own (individual) or are
// grouped into runs, using Rust's char::is_numeric as HF does.
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}

  Status apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<Span> matches;
    for (const Piece& p : pieces) {
      matches.clear();
      size_t i = 0;
      while (i < p.text.size()) {
        size_t len = 0;
        if (is_numeric(decode_utf8_at(p.text, i, &len))) matches.push_back({i, i + len});
        i += len;
      }
      split_piece(p, cover(matches, p.text.size(), false),
                  individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, &out);
    }
    pieces = std::move(out);
    return Status::ok();
  }

 private:
  bool individual_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

// Metaspace: spaces become the replacement character, which is also prepended
// (always, or only at the start of the input), then pieces split before it.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}

  Status apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<Span> matches;
    const Pattern rep = Pattern::literal(replacement_);
    for (Piece& p : pieces) {
      std::string t;
      t.reserve(p.text.size() + replacement_.size());
      for (char c : p.text) {
        if (c == ' ') t += replacement_;
        else t.push_back(c);
      }
      const bool prepend = scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_input_start);
      if (prepend && t.compare(0, replacement_.size(), replacement_) != 0) t.insert(0, replacement_);
      Piece np{std::move(t), p.at_input_start};
      if (!split_) {
        if (!np.text.empty()) out.push_back(std::move(np));
        continue;
      }
      matches.clear();
      TANDEM_RETURN_IF_ERROR(rep.find_all(np.text, &matches));
      split_piece(np, cover(matches, np.text.size(), false), SplitBehavior::kMergedWithNext, &out);
    }
    pieces = std::move(out);
    return Status::ok();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  Status apply(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps_) TANDEM_RETURN_IF_ERROR(s->apply(pieces));
    return Status::ok();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const Json& j) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  const std::string where = "pre_tokenizer";
  TANDEM_ASSIGN_OR_RETURN(std::string type, json_type(j, where));
  const std::string here = where + "." + type;
  if (type == "ByteLevel") {
    TANDEM_ASSIGN_OR_RETURN(bool prefix, json_bool(j, "add_prefix_space", true, here));
    TANDEM_ASSIGN_OR_RETURN(bool use_regex, json_bool(j, "use_regex", true, here));
    std::optional<Regex> re;
    if (use_regex) {
      auto r = Regex::compile(kGpt2Pattern);
      if (!r.is_ok()) return r.status().with_context(here);
      re = std::move(r).value();
    }
    return std::unique_ptr<PreTokenizer>(std::make_unique<ByteLevelPreTokenizer>(prefix, std::move(re)));
  }
  if (type == "Split") {
    if (!j.contains("pattern")) return invalid_argument(here + ": missing 'pattern'");
    TANDEM_ASSIGN_OR_RETURN(Pattern pattern, Pattern::parse(j["pattern"], here));
    TANDEM_ASSIGN_OR_RETURN(SplitBehavior behavior, parse_behavior(j, here));
    TANDEM_ASSIGN_OR_RETURN(bool invert, json_bool(j, "invert", false, here));
    return std::unique_ptr<PreTokenizer>(std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert));
  }
  if (type == "Digits") {
    TANDEM_ASSIGN_OR_RETURN(bool individual, json_bool(j, "individual_digits", false, here));
    return std::unique_ptr<PreTokenizer>(std::make_unique<DigitsPreTokenizer>(individual));
  }
  if (type == "Metaspace") {
    TANDEM_ASSIGN_OR_RETURN(std::string rep, json_string(j, "replacement", "\xE2\x96\x81", here));
    TANDEM_ASSIGN_OR_RETURN(bool split, json_bool(j, "split", true, here));
    // Older files carry add_prefix_space instead of prepend_scheme.
    TANDEM_ASSIGN_OR_RETURN(bool add_prefix, json_bool(j, "add_prefix_space", true, here));
    TANDEM_ASSIGN_OR_RETURN(std::string scheme_s, json_string(j, "prepend_scheme", add_prefix ? "always" : "never", here));
    PrependScheme scheme;
    if (scheme_s == "always") scheme = PrependScheme::kAlways;
    else if (scheme_s == "first") scheme = PrependScheme::kFirst;
    else if (scheme_s == "never") scheme = PrependScheme::kNever;
    else return invalid_argument(here + ": unknown prepend_scheme '" + scheme_s + "'");
    return std::unique_ptr<PreTokenizer>(std::make_unique<MetaspacePreTokenizer>(std::move(rep), scheme, split));
  }
  if (type == "Sequence") {
    auto it = j.find("pretokenizers");
    if (it == j.end() || !it->is_array()) return invalid_argument(here + ": missing array 'pretokenizers'");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& sub : *it) {
      TANDEM_ASSIGN_OR_RETURN(auto step, parse_pre_tokenizer(sub));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(std::make_unique<SequencePreTokenizer>(std::move(steps)));
  }
  return unsupported_component(where, type);
}

}  // namespace tandem::model::tok
