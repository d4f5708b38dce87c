// tokenizer.json "post_processor" components for single sequences:
// TemplateProcessing (e.g. a BOS prefix), Bert/Roberta, ByteLevel (a no-op
// on ids) and Sequence. Applied only when encode(add_special_tokens=true).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tokenizer/json_util.h"

namespace tandem::model::tok {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int32_t>& ids) const = 0;
};

Result<std::unique_ptr<PostProcessor>> parse_post_processor(const Json& j);

}  // namespace tandem::model::tok
