// tokenizer.json "normalizer" components: NFC/NFD/NFKC/NFKD (ICU), Prepend,
// Replace, Strip, and Sequence of those.
#pragma once

#include <memory>
#include <string>

#include "tokenizer/json_util.h"

namespace tandem::model::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `text` is valid UTF-8 and stays valid.
  virtual Status normalize(std::string& text) const = 0;
};

// A null JSON value gives a null pointer (no normalization).
Result<std::unique_ptr<Normalizer>> parse_normalizer(const Json& j);

}  // namespace tandem::model::tok
