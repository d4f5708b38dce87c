// The GPT-2 byte <-> printable character table used by ByteLevel
// pre-tokenizers and decoders: printable Latin-1 bytes stand for themselves,
// the other 68 bytes map to U+0100.. in increasing byte order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::model::tok {

// Code point standing in for byte b.
char32_t byte_to_char(uint8_t b);

// Byte represented by code point cp, or -1 if cp is not in the table.
int char_to_byte(char32_t cp);

// Maps each byte of `bytes` to the UTF-8 encoding of its stand-in character.
std::string bytes_to_byte_level(std::string_view bytes);

// Inverse of bytes_to_byte_level. Returns false (leaving *out unspecified) if
// `text` contains a character outside the table.
bool byte_level_to_bytes(std::string_view text, std::string* out);

// The 256 stand-in characters (UTF-8) ordered by code point: the order HF's
// BPE trainer assigns ids to the initial byte-level alphabet.
std::vector<std::string> byte_level_alphabet();

}  // namespace tandem::model::tok
