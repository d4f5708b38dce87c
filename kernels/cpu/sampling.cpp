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

// The candidates are ordered by probability, descending, ties to the lower id.
// Sorting a whole vocabulary per token is the expensive part, and usually only
// a short head of that order is ever looked at (the nucleus, or the tokens
// before the draw lands), so the order is built lazily: `sorted` grows the
// sorted prefix by selecting the next-largest block (nth_element) and sorting
// only that block. Any prefix is the same as a full sort's, so the pick is too.
int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params, float uniform, float* scratch) {
  if (vocab <= 0) return 0;
  if (is_greedy(params)) return argmax(logits, vocab);
  // p[i] = exp(l_i/T - max_j l_j/T), unnormalised: the draw scales the uniform
  // by the kept mass instead. Written as multiplication by 1/T because the CUDA
  // twin computes it that way and the two must round alike.
  const float inv_temp = 1.0f / params.temperature;
  float* p = scratch;
  float m = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, logits[i] * inv_temp);
  for (int64_t i = 0; i < vocab; ++i) p[i] = std::exp(logits[i] * inv_temp - m);

  thread_local std::vector<int32_t> ids;
  ids.resize(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  auto before = [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  const int64_t keep = params.top_k > 0 ? std::min<int64_t>(params.top_k, vocab) : vocab;
  if (keep < vocab) std::nth_element(ids.begin(), ids.begin() + keep, ids.end(), before);
  int64_t sorted = 0;
  auto sort_through = [&](int64_t need) {  // makes ids[0, need) the sorted head
    need = std::min(keep, std::max(need, 2 * sorted + 64));
    if (need <= sorted) return;
    if (need < keep) std::nth_element(ids.begin() + sorted, ids.begin() + need, ids.begin() + keep, before);
    std::sort(ids.begin() + sorted, ids.begin() + need, before);
    sorted = need;
  };

  double kept_mass = 0;
  for (int64_t i = 0; i < keep; ++i) kept_mass += p[ids[i]];
  // Nucleus: the smallest sorted prefix whose mass reaches top_p of the kept
  // mass (at least one token).
  int64_t n = keep;
  double mass = kept_mass;
  if (params.top_p < 1.0f) {
    const double target = static_cast<double>(params.top_p) * kept_mass;
    double cum = 0;
    for (int64_t i = 0; i < keep; ++i) {
      if (i >= sorted) sort_through(i + 1);
      cum += p[ids[i]];
      if (cum >= target) {
        n = i + 1;
        break;
      }
    }
    mass = cum;
  }
  // Inverse CDF over the sorted candidates: the first whose cumulative mass
  // exceeds uniform * mass.
  const double target = static_cast<double>(uniform) * mass;
  double cum = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i >= sorted) sort_through(i + 1);
    cum += p[ids[i]];
    if (target < cum) return ids[i];
  }
  if (n > sorted) sort_through(n);
  return ids[n - 1];  // uniform * mass rounded up past the last cumulative sum
}

}  // namespace tandem::kernels::cpu
