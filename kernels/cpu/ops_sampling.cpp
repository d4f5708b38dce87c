// Token selection: greedy, temperature, top-k, top-p, driven by a caller-drawn
// uniform so that every backend picks the same token for the same inputs.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

int32_t sample(const float* logits, int64_t vocab, const SamplingParams& p, float uniform, float* scratch) {
  if (p.temperature <= 0.0f || p.top_k == 1) return argmax(logits, vocab);
  // Candidates sorted by logit (descending, ties to the lower id), cut to top_k.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep = p.top_k > 0 ? std::min<int64_t>(p.top_k, vocab) : vocab;
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (keep < vocab) {
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  } else {
    std::sort(order.begin(), order.end(), by_logit);
  }
  float* prob = scratch;
  const float m = logits[order[0]];
  double z = 0;
  for (int64_t i = 0; i < keep; ++i) z += (prob[i] = std::exp((logits[order[i]] - m) / p.temperature));
  // Nucleus: the smallest prefix whose mass reaches top_p (at least one token).
  int64_t n = keep;
  if (p.top_p < 1.0f) {
    double cum = 0;
    for (int64_t i = 0; i < keep; ++i) {
      cum += prob[i] / z;
      if (cum >= p.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  double mass = 0;
  for (int64_t i = 0; i < n; ++i) mass += prob[i];
  const double target = static_cast<double>(uniform) * mass;
  double cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    cum += prob[i];
    if (target < cum) return order[i];
  }
  return order[n - 1];
}

}  // namespace tandem::kernels::cpu
