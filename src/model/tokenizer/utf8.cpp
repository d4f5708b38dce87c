#include "tokenizer/utf8.h"

namespace tandem::model::tok {
namespace {

// Allowed range of the second byte for a lead byte (Unicode Table 3-7); the
// remaining continuation bytes are always 0x80..0xBF.
struct LeadInfo {
  int need;  // continuation bytes required; -1 for a byte that cannot start a sequence
  unsigned char lo, hi;
};

LeadInfo lead_info(unsigned char b) {
  if (b < 0x80) return {0, 0, 0};
  if (b < 0xC2) return {-1, 0, 0};
  if (b < 0xE0) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b < 0xF0) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b < 0xF4) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {-1, 0, 0};
}

}  // namespace

Utf8Unit next_utf8_unit(std::string_view s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  const LeadInfo li = lead_info(b);
  if (li.need < 0) {
    *len = 1;
    return Utf8Unit::kInvalid;
  }
  size_t k = 1;
  for (; k <= static_cast<size_t>(li.need); ++k) {
    if (i + k >= s.size()) {
      *len = k;
      return Utf8Unit::kTruncated;
    }
    const auto c = static_cast<unsigned char>(s[i + k]);
    const bool ok = k == 1 ? (c >= li.lo && c <= li.hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) {
      *len = k;
      return Utf8Unit::kInvalid;
    }
  }
  *len = k;
  return Utf8Unit::kChar;
}

bool is_valid_utf8(std::string_view s, size_t* error_offset) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path: most text is ASCII, and tokenizers see a lot of it.
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    if (next_utf8_unit(s, i, &len) != Utf8Unit::kChar) {
      if (error_offset) *error_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

char32_t decode_utf8_at(std::string_view s, size_t i, size_t* len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  auto cont = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  if (b0 < 0xE0) {
    *len = 2;
    return (static_cast<char32_t>(b0 & 0x1F) << 6) | cont(1);
  }
  if (b0 < 0xF0) {
    *len = 3;
    return (static_cast<char32_t>(b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2);
  }
  *len = 4;
  return (static_cast<char32_t>(b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t utf8_lossy_prefix(std::string_view bytes, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len = 0;
    switch (next_utf8_unit(bytes, i, &len)) {
      case Utf8Unit::kChar: out->append(bytes.substr(i, len)); break;
      case Utf8Unit::kInvalid: out->append(kReplacementChar); break;
      case Utf8Unit::kTruncated: return i;
    }
    i += len;
  }
  return i;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const size_t used = utf8_lossy_prefix(bytes, &out);
  if (used < bytes.size()) out.append(kReplacementChar);
  return out;
}

}  // namespace tandem::model::tok
