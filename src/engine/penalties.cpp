#include "tandem/engine/penalties.h"

#include <algorithm>

namespace tandem::engine {

PenaltyState::PenaltyState(const LogitsAdjustments& adjust, const std::vector<int32_t>& prompt) {
  if (adjust.repetition_penalty == 1) return;
  prompt_tokens_ = prompt;
  std::sort(prompt_tokens_.begin(), prompt_tokens_.end());
  prompt_tokens_.erase(std::unique(prompt_tokens_.begin(), prompt_tokens_.end()), prompt_tokens_.end());
}

void PenaltyState::add_generated(int32_t token) { ++generated_[token]; }

void PenaltyState::apply(const LogitsAdjustments& adjust, float* logits, int64_t vocab) const {
  for (const auto& [token, bias] : adjust.logit_bias)
    if (token >= 0 && token < vocab) logits[token] += bias;
  if (const float p = adjust.repetition_penalty; p != 1) {
    auto penalise = [&](int32_t t) { logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p; };
    for (int32_t t : prompt_tokens_) penalise(t);
    // A token in both the prompt and the output is penalised once.
    for (const auto& [t, n] : generated_)
      if (!std::binary_search(prompt_tokens_.begin(), prompt_tokens_.end(), t)) penalise(t);
  }
  if (adjust.frequency_penalty != 0 || adjust.presence_penalty != 0)
    for (const auto& [t, n] : generated_)
      logits[t] -= adjust.frequency_penalty * static_cast<float>(n) + adjust.presence_penalty;
}

}  // namespace tandem::engine
