#include "tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include <vector>

#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace tandem::model::tok {
namespace {

enum class UnicodeForm { kNfc, kNfd, kNfkc, kNfkd };

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(const icu::Normalizer2* n) : n_(n) {}

  Status normalize(std::string& text) const override {
    UErrorCode err = U_ZERO_ERROR;
    const icu::StringPiece in(text.data(), static_cast<int32_t>(text.size()));
    // Most text is already normalized; the quick check avoids a copy.
    if (n_->isNormalizedUTF8(in, err) && U_SUCCESS(err)) return Status::ok();
    err = U_ZERO_ERROR;
    std::string out;
    icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
    n_->normalizeUTF8(0, in, sink, nullptr, err);
    if (U_FAILURE(err)) return internal_error(std::string("ICU normalization failed: ") + u_errorName(err));
    text = std::move(out);
    return Status::ok();
  }

 private:
  const icu::Normalizer2* n_;
};

Result<std::unique_ptr<Normalizer>> make_unicode(UnicodeForm form, const std::string& name) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::kNfc: n = icu::Normalizer2::getNFCInstance(err); break;
    case UnicodeForm::kNfd: n = icu::Normalizer2::getNFDInstance(err); break;
    case UnicodeForm::kNfkc: n = icu::Normalizer2::getNFKCInstance(err); break;
    case UnicodeForm::kNfkd: n = icu::Normalizer2::getNFKDInstance(err); break;
  }
  if (U_FAILURE(err) || !n) return internal_error("ICU " + name + " normalizer unavailable: " + u_errorName(err));
  return std::unique_ptr<Normalizer>(std::make_unique<UnicodeNormalizer>(n));
}

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  Status normalize(std::string& text) const override {
    // HF leaves empty strings empty.
    if (!text.empty()) text.insert(0, prefix_);
    return Status::ok();
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  Status normalize(std::string& text) const override {
    std::vector<Span> spans;
    TANDEM_RETURN_IF_ERROR(pattern_.find_all(text, &spans));
    if (spans.empty()) return Status::ok();
    std::string out;
    size_t prev = 0;
    for (const Span& s : spans) {
      out.append(text, prev, s.begin - prev);
      out += content_;
      prev = s.end;
    }
    out.append(text, prev, std::string::npos);
    text = std::move(out);
    return Status::ok();
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  Status normalize(std::string& text) const override {
    size_t b = 0, e = text.size();
    if (left_) {
      while (b < e) {
        size_t len = 0;
        if (!is_whitespace(decode_utf8_at(text, b, &len))) break;
        b += len;
      }
    }
    if (right_) {
      while (e > b) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
        size_t len = 0;
        if (!is_whitespace(decode_utf8_at(text, s, &len))) break;
        e = s;
      }
    }
    text = text.substr(b, e - b);
    return Status::ok();
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  Status normalize(std::string& text) const override {
    for (const auto& s : steps_) TANDEM_RETURN_IF_ERROR(s->normalize(text));
    return Status::ok();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

Result<std::unique_ptr<Normalizer>> parse_normalizer(const Json& j) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  const std::string where = "normalizer";
  TANDEM_ASSIGN_OR_RETURN(std::string type, json_type(j, where));
  const std::string here = where + "." + type;
  if (type == "NFC") return make_unicode(UnicodeForm::kNfc, type);
  if (type == "NFD") return make_unicode(UnicodeForm::kNfd, type);
  if (type == "NFKC") return make_unicode(UnicodeForm::kNfkc, type);
  if (type == "NFKD") return make_unicode(UnicodeForm::kNfkd, type);
  if (type == "Prepend") {
    TANDEM_ASSIGN_OR_RETURN(std::string prefix, json_string(j, "prepend", "", here));
    return std::unique_ptr<Normalizer>(std::make_unique<PrependNormalizer>(std::move(prefix)));
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return invalid_argument(here + ": missing 'pattern'");
    TANDEM_ASSIGN_OR_RETURN(Pattern pattern, Pattern::parse(j["pattern"], here));
    TANDEM_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", "", here));
    return std::unique_ptr<Normalizer>(std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content)));
  }
  if (type == "Strip") {
    TANDEM_ASSIGN_OR_RETURN(bool left, json_bool(j, "strip_left", false, here));
    TANDEM_ASSIGN_OR_RETURN(bool right, json_bool(j, "strip_right", false, here));
    return std::unique_ptr<Normalizer>(std::make_unique<StripNormalizer>(left, right));
  }
  if (type == "Sequence") {
    auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array()) return invalid_argument(here + ": missing array 'normalizers'");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const Json& sub : *it) {
      TANDEM_ASSIGN_OR_RETURN(auto step, parse_normalizer(sub));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Normalizer>(std::make_unique<SequenceNormalizer>(std::move(steps)));
  }
  return unsupported_component(where, type);
}

}  // namespace tandem::model::tok
