// What a request changes in the logits before its next token is sampled:
// OpenAI's logit_bias, presence and frequency penalties, the repetition
// penalty of HF transformers and vLLM, and vLLM's min_tokens and min_p. They
// steer sampling only: the log-probabilities a request asks for stay the
// model's own.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tandem::engine {

struct LogitsAdjustments {
  // Added to the logits of these tokens (OpenAI: -100 bans, 100 forces).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Subtracted once from the logit of every token generated so far (OpenAI; 0: off).
  float presence_penalty = 0;
  // Subtracted per time a token was generated so far (OpenAI; 0: off).
  float frequency_penalty = 0;
  // For a token in the prompt or generated so far: a positive logit divided
  // by it, a negative one multiplied (HF transformers, vLLM; 1: off). In
  // [0.01, 100]: a smaller one would turn logits into infinities.
  float repetition_penalty = 1;
  // The request's stop tokens are banned until this many tokens were
  // generated (vLLM; 0: off).
  int32_t min_tokens = 0;
  // When sampling: tokens less likely than min_p × the most likely one (at the
  // request's temperature) are dropped before top-k and top-p (vLLM; 0: off).
  float min_p = 0;

  // Whether greedy decoding of the next token (after `generated` tokens)
  // may pick another token than the plain argmax (min_p never drops it).
  bool changes_argmax(int64_t generated) const {
    return !logit_bias.empty() || presence_penalty != 0 || frequency_penalty != 0 || repetition_penalty != 1 ||
           generated < min_tokens;
  }
  bool any() const { return changes_argmax(0) || min_p > 0; }
};

// Sets these tokens' logits to -inf (ids outside the row skipped).
void ban_tokens(const std::vector<int32_t>& tokens, float* logits, int64_t vocab);
// min_p at `temperature` (> 0): logits more than -ln(min_p)·temperature below
// the largest set to -inf, i.e. probabilities below min_p × the largest.
void apply_min_p(float min_p, float temperature, float* logits, int64_t vocab);

// One sequence's history as the penalties see it. Survives a preemption:
// generation resumes where it was, so the counts stay right.
class PenaltyState {
 public:
  PenaltyState() = default;
  PenaltyState(const LogitsAdjustments& adjust, const std::vector<int32_t>& prompt);
  void add_generated(int32_t token);
  // Applies bias, then the repetition penalty, then frequency and presence
  // (vLLM's order) to one row of logits [vocab], in place.
  void apply(const LogitsAdjustments& adjust, float* logits, int64_t vocab) const;

 private:
  std::unordered_map<int32_t, int32_t> generated_;  // token -> times generated
  std::vector<int32_t> prompt_tokens_;              // distinct, only with a repetition penalty
};

}  // namespace tandem::engine
