#include "tokenizer/byte_level.h"

#include <algorithm>
#include <array>

#include "tokenizer/utf8.h"

namespace tandem::model::tok {
namespace {

struct Tables {
  std::array<char32_t, 256> to_char{};
  std::array<std::string, 256> to_utf8;
  // Every stand-in is below U+0144, so a flat array covers the inverse map.
  std::array<int16_t, 0x144> to_byte{};

  Tables() {
    to_byte.fill(-1);
    char32_t next_extra = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? static_cast<char32_t>(b) : next_extra++;
      to_char[b] = cp;
      append_utf8(to_utf8[b], cp);
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t byte_to_char(uint8_t b) { return tables().to_char[b]; }

int char_to_byte(char32_t cp) {
  const auto& t = tables().to_byte;
  return cp < t.size() ? t[cp] : -1;
}

std::string bytes_to_byte_level(std::string_view bytes) {
  const auto& t = tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += t.to_utf8[static_cast<uint8_t>(c)];
  return out;
}

bool byte_level_to_bytes(std::string_view text, std::string* out) {
  out->clear();
  out->reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t len = 0;
    if (next_utf8_unit(text, i, &len) != Utf8Unit::kChar) return false;
    const int b = char_to_byte(decode_utf8_at(text, i, &len));
    if (b < 0) return false;
    out->push_back(static_cast<char>(b));
    i += len;
  }
  return true;
}

std::vector<std::string> byte_level_alphabet() {
  std::vector<char32_t> cps(tables().to_char.begin(), tables().to_char.end());
  std::sort(cps.begin(), cps.end());
  std::vector<std::string> out;
  out.reserve(cps.size());
  for (char32_t cp : cps) {
    std::string s;
    append_utf8(s, cp);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace tandem::model::tok
