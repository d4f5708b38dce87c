#include "tandem/model/reasoning.h"

#include <algorithm>

#include "tag_text.h"

namespace tandem::model {
namespace {

constexpr std::string_view kOpen = kThinkOpen;
constexpr std::string_view kClose = kThinkClose;

}  // namespace

Result<ReasoningFormat> reasoning_format(std::string_view name) {
  if (name == "none" || name.empty()) return ReasoningFormat::kNone;
  if (name == "think" || name == "deepseek_r1" || name == "qwen3") return ReasoningFormat::kThinkTags;
  return invalid_argument("reasoning parser '" + std::string(name) + "': must be none, think, deepseek_r1 or qwen3");
}

bool prompt_opens_thought(std::string_view prompt) {
  // Only the generation prompt's end counts: a <think> quoted in a message
  // or a tool description does not open the answer's thought.
  while (!prompt.empty() && is_blank(prompt.back())) prompt.remove_suffix(1);
  return prompt.size() >= kOpen.size() && prompt.substr(prompt.size() - kOpen.size()) == kOpen;
}

ReasoningStream::ReasoningStream(ReasoningFormat format, bool in_thought)
    : format_(format), state_(format == ReasoningFormat::kNone ? State::kAnswer
                              : in_thought                     ? State::kThinking
                                                               : State::kStart) {}

ReasoningStream::Split ReasoningStream::push(std::string_view text) {
  Split out;
  if (state_ == State::kAnswer) {
    out.content = text;
    return out;
  }
  pending_ += text;
  step(out, /*final=*/false);
  return out;
}

ReasoningStream::Split ReasoningStream::finish() {
  Split out;
  step(out, /*final=*/true);
  return out;
}

void ReasoningStream::step(Split& out, bool final) {
  for (;;) {
    if (state_ == State::kStart) {
      // A thought opens only with <think> first (blanks before it are dropped
      // with it); anything else is the answer.
      const size_t first = static_cast<size_t>(
          std::find_if(pending_.begin(), pending_.end(), [](char c) { return !is_blank(c); }) - pending_.begin());
      const std::string_view rest = std::string_view(pending_).substr(first);
      if (rest.substr(0, kOpen.size()) == kOpen) {
        pending_.erase(0, first + kOpen.size());
        state_ = State::kThinking;
        continue;
      }
      if (!final && kOpen.substr(0, rest.size()) == rest) return;  // maybe the tag, still coming
      state_ = State::kAnswer;
      out.content += pending_;
      pending_.clear();
      return;
    }
    if (state_ == State::kThinking) {
      const size_t close = pending_.find(kClose);
      if (close != std::string::npos) {
        out.reasoning += pending_.substr(0, close);
        pending_.erase(0, close + kClose.size());
        state_ = State::kAfterThought;
        continue;
      }
      const size_t keep = final ? 0 : partial_tag(pending_, kClose);
      out.reasoning += pending_.substr(0, pending_.size() - keep);
      pending_.erase(0, pending_.size() - keep);
      return;
    }
    if (state_ == State::kAfterThought) {
      // The answer starts after the line breaks that follow </think>.
      pending_.erase(0, std::min(pending_.find_first_not_of('\n'), pending_.size()));
      if (pending_.empty()) return;
      state_ = State::kAnswer;
    }
    out.content += pending_;
    pending_.clear();
    return;
  }
}

}  // namespace tandem::model
