// Sampling: greedy, top-k, top-p and the inverse-CDF draw against a float64
// reference that sorts the whole vocabulary.
#include <gtest/gtest.h>

#include <set>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

int32_t naive_argmax(const std::vector<float>& x) {
  int32_t best = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] > x[best]) best = static_cast<int32_t>(i);
  return best;
}

TEST(Kernels, GreedyIsArgmaxWithLowestIdOnTies) {
  std::vector<float> l{0.1f, 2.0f, -1.0f, 2.0f}, scratch(8);
  EXPECT_EQ(k::argmax(l.data(), 4), 1);
  EXPECT_EQ(k::sample(l.data(), 4, {.temperature = 0.0f}, 0.99f, scratch.data()), 1);
  EXPECT_EQ(k::sample(l.data(), 4, {.temperature = -1.0f, .top_k = 3, .top_p = 0.5f}, 0.5f, scratch.data()), 1);
  std::mt19937 g(30);
  for (int vocab : {1, 2, 17, 1000, 32000}) {
    auto x = ref::random_vec(g, vocab);
    if (vocab > 2) x[vocab - 1] = x[vocab / 2] = 100.0f;  // a tie for the maximum
    std::vector<float> s(2 * vocab);
    EXPECT_EQ(k::argmax(x.data(), vocab), naive_argmax(x)) << vocab;
    EXPECT_EQ(k::sample(x.data(), vocab, {.temperature = 0.0f}, 0.7f, s.data()), naive_argmax(x)) << vocab;
  }
}

TEST(Kernels, TopKOneIsGreedyForAnyUniform) {
  std::mt19937 g(34);
  auto l = ref::random_vec(g, 500, 0.1f);  // flat: a real draw would rarely pick the max
  std::vector<float> scratch(1000);
  for (float temp : {0.5f, 1.0f, 3.0f})
    for (float u : {0.0f, 0.25f, 0.5f, 0.999f})
      EXPECT_EQ(k::sample(l.data(), 500, {.temperature = temp, .top_k = 1}, u, scratch.data()), naive_argmax(l));
}

TEST(Kernels, TinyTopPKeepsOnlyTheTopToken) {
  std::mt19937 g(31);
  auto l = ref::random_vec(g, 100);
  std::vector<float> scratch(200);
  for (float u : {0.0f, 0.3f, 0.99f})
    EXPECT_EQ(k::sample(l.data(), 100, {.temperature = 1, .top_p = 1e-6f}, u, scratch.data()), naive_argmax(l));
}

TEST(Kernels, SamplingFollowsTheSoftmaxDistribution) {
  std::vector<float> l{1.0f, 0.0f, -1.0f, 2.0f}, scratch(8);
  const float temp = 0.7f;
  ref::VecD p(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += (p[i] = std::exp(l[i] / temp));
  std::vector<int> counts(4, 0);
  const int draws = 20000;
  for (int i = 0; i < draws; ++i)
    ++counts[k::sample(l.data(), 4, {.temperature = temp}, (i + 0.5f) / draws, scratch.data())];
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(counts[i] / double(draws), p[i] / z, 2e-3) << i;
}

// Over a fine grid of uniforms, the share of draws landing on each token equals
// its probability after the top-k / top-p cuts (and zero outside them).
TEST(Kernels, SamplingDistributionMatchesFloat64WithCuts) {
  std::mt19937 g(35);
  struct Case {
    int vocab;
    k::SamplingParams p;
  };
  for (auto c : {Case{50, {.temperature = 1.0f}}, Case{50, {.temperature = 0.6f, .top_k = 7}},
                 Case{200, {.temperature = 1.3f, .top_p = 0.8f}}, Case{300, {.temperature = 0.9f, .top_k = 20, .top_p = 0.7f}},
                 Case{2, {.temperature = 2.0f, .top_k = 5}}}) {
    auto l = ref::random_vec(g, c.vocab, 1.5f);
    const auto support = ref::sampling_support(l, c.p.temperature, c.p.top_k, c.p.top_p);
    ref::VecD want(c.vocab, 0.0);
    for (const auto& s : support) want[s.id] = s.p;
    std::vector<float> scratch(2 * c.vocab);
    std::vector<double> freq(c.vocab, 0.0);
    const int draws = 50000;
    for (int i = 0; i < draws; ++i)
      freq[k::sample(l.data(), c.vocab, c.p, (i + 0.5f) / draws, scratch.data())] += 1.0 / draws;
    for (int i = 0; i < c.vocab; ++i) {
      // A grid of uniforms reproduces each probability to within a grid step.
      EXPECT_NEAR(freq[i], want[i], 3.0 / draws) << "vocab " << c.vocab << " token " << i;
      if (want[i] == 0.0) {
        EXPECT_EQ(freq[i], 0.0) << "token " << i << " is outside the cuts";
      }
    }
  }
}

// The exact token for a given uniform: the reference walks its sorted
// candidates to the first cumulative probability above u. Uniforms within a
// hair of a boundary are skipped, since float and double may round them apart.
TEST(Kernels, SampleMatchesFloat64InverseCdf) {
  std::mt19937 g(36);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  struct Case {
    int vocab;
    k::SamplingParams p;
  };
  for (auto c : {Case{7, {.temperature = 2.0f, .top_k = 3, .top_p = 0.5f}}, Case{1000, {.temperature = 1.0f}},
                 Case{32000, {.temperature = 0.7f, .top_k = 50}}, Case{32000, {.temperature = 1.0f, .top_p = 0.9f}},
                 Case{32000, {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f}}, Case{1, {.temperature = 1.0f}}}) {
    auto l = ref::random_vec(g, c.vocab, 3.0f);
    const auto support = ref::sampling_support(l, c.p.temperature, c.p.top_k, c.p.top_p);
    std::vector<float> scratch(2 * c.vocab);
    int checked = 0;
    // Uniforms close to 1 send the kernel deep into the sorted order.
    for (float u : {0.0f, 0.999f, 0.99999f}) {
      double cum = 0;
      int32_t want = support.back().id;
      for (const auto& s : support)
        if ((cum += s.p) > u) {
          want = s.id;
          break;
        }
      EXPECT_EQ(k::sample(l.data(), c.vocab, c.p, u, scratch.data()), want) << c.vocab << " u " << u;
    }
    for (int draw = 0; draw < 300; ++draw) {
      const float u = unif(g);
      double cum = 0, gap = 1;
      int32_t want = -1;
      for (const auto& s : support) {
        gap = std::min(gap, std::abs(cum - u));
        cum += s.p;
        if (want < 0 && cum > u) want = s.id;
        if (want >= 0) {
          gap = std::min(gap, std::abs(cum - u));
          break;
        }
      }
      if (gap < 1e-5) continue;
      ++checked;
      EXPECT_EQ(k::sample(l.data(), c.vocab, c.p, u, scratch.data()), want) << c.vocab << " u " << u;
    }
    EXPECT_GT(checked, 250);
  }
}

TEST(Kernels, EqualProbabilitiesArePickedInIdOrder) {
  std::vector<float> l(4, 0.5f), scratch(8);
  for (int i = 0; i < 4; ++i)
    for (float f : {0.05f, 0.2f}) {
      const float u = 0.25f * i + f;
      EXPECT_EQ(k::sample(l.data(), 4, {.temperature = 1}, u, scratch.data()), i) << u;
    }
  // top_k keeps the lowest ids among equals.
  std::set<int> seen;
  for (int i = 0; i < 100; ++i)
    seen.insert(k::sample(l.data(), 4, {.temperature = 1, .top_k = 2}, i / 100.0f, scratch.data()));
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
}

TEST(Kernels, TopKAndTopPRestrictTheSupport) {
  std::vector<float> l{3.0f, 2.9f, 2.8f, -5.0f, 2.7f}, scratch(10);
  std::set<int> seen;
  for (int i = 0; i < 1000; ++i)
    seen.insert(k::sample(l.data(), 5, {.temperature = 1, .top_k = 2}, i / 1000.0f, scratch.data()));
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
  seen.clear();
  // top_p 0.5 over four near-equal tokens: the first two reach it.
  for (int i = 0; i < 1000; ++i)
    seen.insert(k::sample(l.data(), 5, {.temperature = 1, .top_p = 0.5f}, i / 1000.0f, scratch.data()));
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
}

TEST(Kernels, SameUniformSameToken) {
  std::mt19937 g(32);
  auto l = ref::random_vec(g, 1000, 3.0f), other = ref::random_vec(g, 50000);
  std::vector<float> scratch(2000), scratch2(100000);
  k::SamplingParams p{.temperature = 0.8f, .top_k = 40, .top_p = 0.9f};
  for (float u : {0.1f, 0.5f, 0.9f}) {
    const int32_t first = k::sample(l.data(), 1000, p, u, scratch.data());
    // A call on another vocabulary in between must leave no trace.
    k::sample(other.data(), 50000, {.temperature = 1.0f}, 0.999f, scratch2.data());
    EXPECT_EQ(k::sample(l.data(), 1000, p, u, scratch.data()), first);
  }
}

}  // namespace
}  // namespace tandem
