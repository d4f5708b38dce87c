// Splits a template into text and tags, applying whitespace control
// ({%- -%} {{- -}}) and HuggingFace's trim_blocks / lstrip_blocks, and tokenizes
// the inside of tags.
#pragma once

#include <string>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::model::jinja {

struct Segment {
  enum Kind { kText, kExpr, kStmt } kind;
  std::string body;  // text, or the inside of the tag
  int line;
};

Result<std::vector<Segment>> split_template(const std::string& src);

struct Token {
  enum Kind { kName, kString, kInt, kFloat, kOp, kEnd } kind;
  std::string text;
  long long i = 0;
  double f = 0;
};

Result<std::vector<Token>> tokenize(const std::string& s, int line);

}  // namespace tandem::model::jinja
