#include <gtest/gtest.h>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

// Logits with distinct, well-separated values so the expected top-k is unambiguous.
std::vector<float> separated_logits(std::mt19937& g, int n, int E) {
  std::vector<float> l(n * E);
  for (int t = 0; t < n; ++t) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    for (int e = 0; e < E; ++e) l[t * E + e] = 0.37f * perm[e] - 1.0f;
  }
  return l;
}

TEST(Kernels, GateSoftmaxTopkMatchesFloat64) {
  std::mt19937 g(21);
  for (auto [E, K, renorm] : {std::tuple{8, 2, true}, {16, 4, false}, {5, 5, true}, {60, 4, false}}) {
    const int n = 9;
    auto logits = separated_logits(g, n, E);
    std::vector<int32_t> idx(n * K);
    std::vector<float> w(n * K);
    k::GateParams p{.num_experts = E, .top_k = K, .renormalize = renorm, .routed_scaling = 1.0f};
    k::moe_gate_topk(logits.data(), idx.data(), w.data(), n, p);
    for (int t = 0; t < n; ++t) {
      ref::VecD prob(E);
      double m = *std::max_element(&logits[t * E], &logits[t * E] + E), z = 0;
      for (int e = 0; e < E; ++e) z += (prob[e] = std::exp(logits[t * E + e] - m));
      for (auto& x : prob) x /= z;
      std::vector<int> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
      double sum = 0;
      for (int j = 0; j < K; ++j) sum += prob[order[j]];
      for (int j = 0; j < K; ++j) {
        EXPECT_EQ(idx[t * K + j], order[j]);
        EXPECT_NEAR(w[t * K + j], renorm ? prob[order[j]] / sum : prob[order[j]], 1e-6);
      }
    }
  }
}

TEST(Kernels, GateTiesGoToLowerIndexAndScalingApplies) {
  std::vector<float> logits{1, 3, 3, 0};
  int32_t idx[2];
  float w[2];
  k::moe_gate_topk(logits.data(), idx, w, 1, {.num_experts = 4, .top_k = 2, .routed_scaling = 2.5f});
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 2);
  EXPECT_NEAR(w[0], 1.25f, 1e-6);
}

TEST(Kernels, GateSigmoidGroupedWithBiasPicksFromBestGroups) {
  // 8 experts in 4 groups of 2; bias makes group 3 win although its raw scores are low.
  std::vector<float> logits{2.0f, 1.9f, -1, -1, 0.5f, 0.4f, -3, -3};
  std::vector<float> bias{0, 0, 0, 0, 0, 0, 5, 5};
  int32_t idx[2];
  float w[2];
  k::GateParams p{.num_experts = 8, .top_k = 2, .scoring = k::GateScoring::kSigmoid, .renormalize = true,
                  .routed_scaling = 1.0f, .correction_bias = bias.data(), .n_group = 4, .topk_group = 2};
  k::moe_gate_topk(logits.data(), idx, w, 1, p);
  EXPECT_EQ(idx[0], 6);
  EXPECT_EQ(idx[1], 7);
  EXPECT_NEAR(w[0], 0.5f, 1e-6);  // equal un-biased sigmoids renormalised
}

// permute -> gather -> grouped SwiGLU -> weighted scatter equals a dense loop
// over every token's chosen experts, including experts that receive no tokens.
TEST(Kernels, MoeLayerMatchesDenseFloat64Loop) {
  std::mt19937 g(22);
  for (auto [n, E, K, H, I] : {std::tuple{1, 4, 1, 8, 16}, {17, 8, 2, 32, 48}, {40, 16, 4, 24, 40}}) {
    std::vector<std::vector<float>> wg, wu, wd;
    std::vector<k::ExpertWeights> ew(E);
    for (int e = 0; e < E; ++e) {
      wg.push_back(ref::random_vec(g, I * H, 0.2f));
      wu.push_back(ref::random_vec(g, I * H, 0.2f));
      wd.push_back(ref::random_vec(g, H * I, 0.2f));
      ew[e] = {wg[e].data(), wu[e].data(), wd[e].data()};
    }
    auto x = ref::random_vec(g, n * H);
    // Route every token to experts among the first half only: the rest stay empty.
    std::vector<int32_t> idx(n * K);
    std::vector<float> w(n * K);
    for (int t = 0; t < n; ++t) {
      std::vector<int> perm(E / 2 > K ? E / 2 : E);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      for (int j = 0; j < K; ++j) idx[t * K + j] = perm[j], w[t * K + j] = 0.1f + 0.2f * j;
    }
    std::vector<int32_t> offsets(E + 1), row_token(n * K);
    std::vector<float> row_w(n * K);
    k::moe_permute(idx.data(), w.data(), n, K, E, offsets.data(), row_token.data(), row_w.data());
    EXPECT_EQ(offsets[E], n * K);
    for (int e = 0; e < E; ++e)
      for (int r = offsets[e] + 1; r < offsets[e + 1]; ++r) EXPECT_LT(row_token[r - 1], row_token[r]) << "stable";
    std::vector<float> xp(n * K * H), yp(n * K * H), scratch(3 * n * K * I), out(n * H, 0.0f);
    k::gather_rows(x.data(), row_token.data(), xp.data(), n * K, H);
    k::grouped_swiglu(xp.data(), yp.data(), offsets.data(), E, ew.data(), H, I, scratch.data());
    k::scatter_add_weighted(yp.data(), row_token.data(), row_w.data(), out.data(), n * K, H);

    ref::VecD r(n * H, 0.0);
    for (int t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j) {
        const int e = idx[t * K + j];
        std::vector<float> xt(x.begin() + t * H, x.begin() + (t + 1) * H);
        auto gt = ref::linear(xt, wg[e], 1, H, I), ut = ref::linear(xt, wu[e], 1, H, I);
        std::vector<float> h(I);
        ref::VecD hd(I);
        for (int i = 0; i < I; ++i) hd[i] = gt[i] / (1 + std::exp(-gt[i])) * ut[i];
        for (int hh = 0; hh < H; ++hh) {
          double s = 0;
          for (int i = 0; i < I; ++i) s += wd[e][hh * I + i] * hd[i];
          r[t * H + hh] += w[t * K + j] * s;
        }
      }
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << n << " tokens, " << E << " experts";
  }
}

}  // namespace
}  // namespace tandem
