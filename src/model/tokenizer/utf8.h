// UTF-8 helpers shared by the tokenizer: strict validation, code point
// iteration, and lossy decoding that follows the Unicode "maximal subpart"
// practice (the same U+FFFD placement as Python's errors="replace" and Rust's
// String::from_utf8_lossy, so decode() output matches HF byte for byte).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::model::tok {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// True if `s` is well-formed UTF-8 (no overlongs, surrogates or values past
// U+10FFFF). On failure *error_offset gets the first bad byte's offset.
bool is_valid_utf8(std::string_view s, size_t* error_offset = nullptr);

// Length of the well-formed sequence starting at s[i]; the caller guarantees
// that `s` is valid.
inline size_t utf8_len_at(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

// Decodes the code point at s[i] of valid UTF-8 and stores its length.
char32_t decode_utf8_at(std::string_view s, size_t i, size_t* len);

void append_utf8(std::string& out, char32_t cp);

enum class Utf8Unit { kChar, kInvalid, kTruncated };

// Classifies the bytes at s[i]: a complete character, a maximal invalid
// subpart (one U+FFFD's worth), or a valid prefix cut off by the end of `s`.
// *len receives the number of bytes the unit spans (always >= 1).
Utf8Unit next_utf8_unit(std::string_view s, size_t i, size_t* len);

// Decodes bytes to valid UTF-8, replacing each maximal invalid subpart (and a
// truncated tail) with U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Appends to *out everything in `bytes` that is already final (complete
// characters and replaced invalid subparts) and returns how many bytes were
// consumed; a truncated tail that later bytes could complete is left alone.
size_t utf8_lossy_prefix(std::string_view bytes, std::string* out);

}  // namespace tandem::model::tok
