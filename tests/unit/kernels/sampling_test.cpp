#include <gtest/gtest.h>

#include <set>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

TEST(Kernels, GreedyIsArgmaxWithLowestIdOnTies) {
  std::vector<float> l{0.1f, 2.0f, -1.0f, 2.0f}, scratch(8);
  EXPECT_EQ(k::argmax(l.data(), 4), 1);
  EXPECT_EQ(k::sample(l.data(), 4, {.temperature = 0.0f}, 0.99f, scratch.data()), 1);
  // top_k = 1 is greedy whatever the draw.
  for (float u : {0.0f, 0.5f, 0.999f}) EXPECT_EQ(k::sample(l.data(), 4, {.temperature = 1, .top_k = 1}, u, scratch.data()), 1);
}

TEST(Kernels, TinyTopPKeepsOnlyTheTopToken) {
  std::mt19937 g(31);
  auto l = ref::random_vec(g, 100);
  std::vector<float> scratch(200);
  for (float u : {0.0f, 0.3f, 0.99f})
    EXPECT_EQ(k::sample(l.data(), 100, {.temperature = 1, .top_p = 1e-6f}, u, scratch.data()), k::argmax(l.data(), 100));
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

TEST(Kernels, TopKAndTopPRestrictTheSupport) {
  std::vector<float> l{3.0f, 2.9f, 2.8f, -5.0f, 2.7f}, scratch(10);
  std::set<int> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(k::sample(l.data(), 5, {.temperature = 1, .top_k = 2}, i / 1000.0f, scratch.data()));
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
  seen.clear();
  // top_p 0.5 over four near-equal tokens: the first two reach it.
  for (int i = 0; i < 1000; ++i) seen.insert(k::sample(l.data(), 5, {.temperature = 1, .top_p = 0.5f}, i / 1000.0f, scratch.data()));
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
}

TEST(Kernels, SameUniformSameToken) {
  std::mt19937 g(32);
  auto l = ref::random_vec(g, 1000, 3.0f);
  std::vector<float> scratch(2000);
  k::SamplingParams p{.temperature = 0.8f, .top_k = 40, .top_p = 0.9f};
  for (float u : {0.1f, 0.5f, 0.9f}) EXPECT_EQ(k::sample(l.data(), 1000, p, u, scratch.data()), k::sample(l.data(), 1000, p, u, scratch.data()));
}

}  // namespace
}  // namespace tandem
