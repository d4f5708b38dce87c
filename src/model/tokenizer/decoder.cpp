#include "tokenizer/decoder.h"

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace tandem::model::tok {
namespace {

void byte_level_bytes(const DecodeToken& t, std::string* out) {
  std::string bytes;
  // HF keeps a token whose characters fall outside the table as raw UTF-8.
  if (!t.added && byte_level_to_bytes(t.text, &bytes)) *out += bytes;
  else *out += t.text;
}

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) byte_level_bytes(t, &bytes);
    tokens.assign(1, DecodeToken{utf8_lossy(bytes), false});
  }
  void stream_piece(DecodeToken& token, StreamState& state) const override {
    std::string bytes;
    byte_level_bytes(token, &bytes);
    token.text = std::move(bytes);
    state.fused = true;
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    for (auto& t : tokens) replace(t.text);
  }
  void stream_piece(DecodeToken& token, StreamState&) const override { replace(token.text); }

 private:
  void replace(std::string& text) const {
    std::vector<Span> spans;
    if (!pattern_.find_all(text, &spans).is_ok() || spans.empty()) return;
    std::string out;
    size_t prev = 0;
    for (const Span& s : spans) {
      out.append(text, prev, s.begin - prev);
      out += content_;
      prev = s.end;
    }
    out.append(text, prev, std::string::npos);
    text = std::move(out);
  }
  Pattern pattern_;
  std::string content_;
};

// "<0x4A>" -> 0x4A, or -1.
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    std::vector<DecodeToken> out;
    std::string bytes;
    size_t count = 0;
    auto flush = [&] {
      if (count == 0) return;
      // HF: valid UTF-8 is kept; otherwise one U+FFFD per byte token.
      if (is_valid_utf8(bytes)) {
        out.push_back({bytes, false});
      } else {
        for (size_t i = 0; i < count; ++i) out.push_back({std::string(kReplacementChar), false});
      }
      bytes.clear();
      count = 0;
    };
    for (auto& t : tokens) {
      const int b = t.added ? -1 : byte_token_value(t.text);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
        ++count;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
  void stream_piece(DecodeToken& token, StreamState&) const override {
    const int b = token.added ? -1 : byte_token_value(token.text);
    if (b >= 0) token.text.assign(1, static_cast<char>(b));
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t.text;
    tokens.assign(1, DecodeToken{std::move(all), false});
  }
  void stream_piece(DecodeToken&, StreamState& state) const override { state.fused = true; }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    for (auto& t : tokens) strip(t.text, start_, stop_);
  }
  void stream_piece(DecodeToken& token, StreamState& state) const override {
    // After a fuse the strip only touches the ends of the whole text: the
    // start belongs to the first token, the end is unknown mid-stream.
    if (state.fused) strip(token.text, state.first ? start_ : 0, 0);
    else strip(token.text, start_, stop_);
  }

 private:
  void strip(std::string& text, size_t start, size_t stop) const {
    if (!is_valid_utf8(text)) return;
    std::vector<std::pair<size_t, size_t>> chars;  // (offset, len)
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      decode_utf8_at(text, i, &len);
      chars.emplace_back(i, len);
      i += len;
    }
    size_t b = 0, e = chars.size();
    while (b < e && b < start && decode_at(text, chars[b].first) == content_) ++b;
    size_t removed = 0;
    while (e > b && removed < stop && decode_at(text, chars[e - 1].first) == content_) --e, ++removed;
    const size_t from = b < chars.size() ? chars[b].first : text.size();
    const size_t to = e < chars.size() ? chars[e].first : text.size();
    text = text.substr(from, to - from);
  }
  static char32_t decode_at(const std::string& s, size_t i) {
    size_t len = 0;
    return decode_utf8_at(s, i, &len);
  }
  char32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool prepend) : replacement_(std::move(replacement)), prepend_(prepend) {}
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) apply(tokens[i].text, i == 0);
  }
  void stream_piece(DecodeToken& token, StreamState& state) const override { apply(token.text, state.first); }

 private:
  void apply(std::string& text, bool first) const {
    if (replacement_.empty()) return;
    // HF drops every replacement character of the first token when a prefix
    // was prepended, and turns the others into spaces.
    const std::string with = first && prepend_ ? "" : " ";
    std::string out;
    size_t prev = 0, pos;
    while ((pos = text.find(replacement_, prev)) != std::string::npos) {
      out.append(text, prev, pos - prev);
      out += with;
      prev = pos + replacement_.size();
    }
    out.append(text, prev, std::string::npos);
    text = std::move(out);
  }
  std::string replacement_;
  bool prepend_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<DecodeToken>& tokens) const override {
    for (const auto& s : steps_) s->decode_chain(tokens);
  }
  void stream_piece(DecodeToken& token, StreamState& state) const override {
    for (const auto& s : steps_) s->stream_piece(token, state);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

Result<std::unique_ptr<Decoder>> parse_decoder(const Json& j) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  const std::string where = "decoder";
  TANDEM_ASSIGN_OR_RETURN(std::string type, json_type(j, where));
  const std::string here = where + "." + type;
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(std::make_unique<ByteLevelDecoder>());
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(std::make_unique<ByteFallbackDecoder>());
  if (type == "Fuse") return std::unique_ptr<Decoder>(std::make_unique<FuseDecoder>());
  if (type == "Replace") {
    if (!j.contains("pattern")) return invalid_argument(here + ": missing 'pattern'");
    TANDEM_ASSIGN_OR_RETURN(Pattern pattern, Pattern::parse(j["pattern"], here));
    TANDEM_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", "", here));
    return std::unique_ptr<Decoder>(std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content)));
  }
  if (type == "Strip") {
    TANDEM_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", " ", here));
    TANDEM_ASSIGN_OR_RETURN(int64_t start, json_int(j, "start", 0, here));
    TANDEM_ASSIGN_OR_RETURN(int64_t stop, json_int(j, "stop", 0, here));
    size_t len = 0;
    if (content.empty() || !is_valid_utf8(content) || (decode_utf8_at(content, 0, &len), len != content.size()))
      return invalid_argument(here + ": 'content' must be a single character");
    if (start < 0 || stop < 0) return invalid_argument(here + ": 'start' and 'stop' must be >= 0");
    return std::unique_ptr<Decoder>(std::make_unique<StripDecoder>(decode_utf8_at(content, 0, &len),
                                                                   static_cast<size_t>(start),
                                                                   static_cast<size_t>(stop)));
  }
  if (type == "Metaspace") {
    TANDEM_ASSIGN_OR_RETURN(std::string rep, json_string(j, "replacement", "\xE2\x96\x81", here));
    TANDEM_ASSIGN_OR_RETURN(bool add_prefix, json_bool(j, "add_prefix_space", true, here));
    TANDEM_ASSIGN_OR_RETURN(std::string scheme, json_string(j, "prepend_scheme", add_prefix ? "always" : "never", here));
    if (scheme != "always" && scheme != "first" && scheme != "never")
      return invalid_argument(here + ": unknown prepend_scheme '" + scheme + "'");
    return std::unique_ptr<Decoder>(std::make_unique<MetaspaceDecoder>(std::move(rep), scheme != "never"));
  }
  if (type == "Sequence") {
    auto it = j.find("decoders");
    if (it == j.end() || !it->is_array()) return invalid_argument(here + ": missing array 'decoders'");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const Json& sub : *it) {
      TANDEM_ASSIGN_OR_RETURN(auto step, parse_decoder(sub));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Decoder>(std::make_unique<SequenceDecoder>(std::move(steps)));
  }
  return unsupported_component(where, type);
}

}  // namespace tandem::model::tok
