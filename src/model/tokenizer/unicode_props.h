// The few Unicode character classes the tokenizer pipeline needs outside of
// regexes, with the definitions HF's Rust code uses (char::is_whitespace,
// regex \w, char::is_numeric), answered by ICU.
#pragma once

namespace tandem::model::tok {

// Unicode White_Space.
bool is_whitespace(char32_t cp);
// Rust regex \w: Alphabetic, M*, Nd, Pc, Join_Control.
bool is_word_char(char32_t cp);
// Rust char::is_numeric: Nd, Nl, No.
bool is_numeric(char32_t cp);

}  // namespace tandem::model::tok
