#include "tandem/engine/penalties.h"

#include <algorithm>
#include <cmath>

namespace tandem::engine {

PenaltyState::PenaltyState(const LogitsAdjustments& adjust, const std::vector<int32_t>& prompt) {
  if (adjust.repetition_penalty == 1) return;
  prompt_tokens_ = prompt;
  std::sort(prompt_tokens_.begin(), prompt_tokens_.end());
  prompt_tokens_.erase(std::unique(prompt_tokens_.begin(), prompt_tokens_.end()), prompt_tokens_.end());
}

void PenaltyState::add_generated(int32_t token) { ++generated_[token]; }

void PenaltyState::apply(const LogitsAdjustments& adjust, float* logits, int64_t vocab) const {
  // Ids outside the row are skipped, never written (requests are validated
  // before they get here; this keeps a bad one from writing out of bounds).
  auto in_row = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  for (const auto& [token, bias] : adjust.logit_bias)
    if (in_row(token)) logits[token] += bias;
  if (const float p = adjust.repetition_penalty; p != 1) {
    auto penalise = [&](int32_t t) {
      if (in_row(t)) logits[t] = logits[t] > 0 ? logits[t] / p : logits[t] * p;
    };
    for (int32_t t : prompt_tokens_) penalise(t);
    // A token in both the prompt and the output is penalised once.
    for (const auto& [t, n] : generated_)
      if (!std::binary_search(prompt_tokens_.begin(), prompt_tokens_.end(), t)) penalise(t);
  }
  if (adjust.frequency_penalty != 0 || adjust.presence_penalty != 0)
    for (const auto& [t, n] : generated_)
      if (in_row(t)) logits[t] -= adjust.frequency_penalty * static_cast<float>(n) + adjust.presence_penalty;
}

void ban_tokens(const std::vector<int32_t>& tokens, float* logits, int64_t vocab) {
  for (int32_t t : tokens)
    if (t >= 0 && t < vocab) logits[t] = -INFINITY;
}

void apply_min_p(float min_p, float temperature, float* logits, int64_t vocab) {
  if (!(min_p > 0) || !(temperature > 0) || vocab <= 0) return;
  const float top = *std::max_element(logits, logits + vocab);
  const float floor = top + temperature * std::log(min_p);
  for (int64_t i = 0; i < vocab; ++i)
    if (logits[i] < floor) logits[i] = -INFINITY;
}

}  // namespace tandem::engine
