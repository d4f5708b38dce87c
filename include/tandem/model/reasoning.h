// Reasoning models (DeepSeek-R1, Qwen3, QwQ) think before they answer, between
// <think> and </think>. ReasoningStream splits the output as it streams into
// the reasoning and the answer, so that an API can return them apart
// (DeepSeek's and vLLM's `reasoning_content`).
#pragma once

#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem::model {

enum class ReasoningFormat { kNone, kThinkTags };

// "none", or "think" and its aliases "deepseek_r1" and "qwen3" (vLLM's
// names: the same tags); INVALID_ARGUMENT naming another.
Result<ReasoningFormat> reasoning_format(std::string_view name);

// Whether a rendered prompt leaves the model inside a thought: it ends in
// <think> and blanks (DeepSeek-R1's generation prompt ends in "<think>\n";
// Qwen3 with enable_thinking false closes it empty).
inline constexpr std::string_view kThinkOpen = "<think>", kThinkClose = "</think>";
bool prompt_opens_thought(std::string_view prompt);

class ReasoningStream {
 public:
  // `in_thought`: the output starts inside a thought (prompt_opens_thought);
  // otherwise a thought opens only with <think> at the start of the output
  // (after blanks).
  ReasoningStream(ReasoningFormat format, bool in_thought);

  struct Split {
    std::string reasoning, content;
  };
  // The parts of `text` that may go out now: a tag's possible beginning
  // is held until it is known. The line breaks right after </think> are
  // dropped (the answer starts after them).
  Split push(std::string_view text);
  // The end: what was held. A thought never closed is all reasoning.
  Split finish();

 private:
  enum class State { kStart, kThinking, kAfterThought, kAnswer };
  ReasoningFormat format_;
  State state_;
  std::string pending_;
  void step(Split& out, bool final);
};

}  // namespace tandem::model
