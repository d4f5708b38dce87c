// MoE kernels: router top-k (softmax and DeepSeek-V3 sigmoid with grouped
// selection) against float64 references, the permutation, the weighted scatter,
// and permute + gather + grouped SwiGLU + scatter against a dense per-token loop.
#include <gtest/gtest.h>

#include <tuple>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

// Logits with distinct, well-separated values so the expected top-k is unambiguous.
std::vector<float> separated_logits(std::mt19937& g, int n, int E, float step = 0.37f) {
  std::vector<float> l(n * E);
  for (int t = 0; t < n; ++t) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    for (int e = 0; e < E; ++e) l[t * E + e] = step * perm[e] - 1.0f;
  }
  return l;
}

// Indices sorted by value descending, ties to the lower index.
std::vector<int> ranked(const ref::VecD& v) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  return order;
}

TEST(Kernels, GateSoftmaxTopkMatchesFloat64) {
  std::mt19937 g(21);
  // (experts, k, renormalize, routed_scaling, tokens): k = E included; many
  // tokens to run threaded.
  for (auto [E, K, renorm, scaling, n] : {std::tuple{8, 2, true, 1.0f, 9}, {16, 4, false, 1.0f, 9},
                                          {5, 5, true, 1.0f, 9}, {60, 4, false, 2.5f, 9}, {1, 1, true, 1.0f, 3},
                                          {64, 8, true, 1.5f, 300}, {7, 7, false, 1.0f, 4}}) {
    const float step = E > 40 ? 0.05f : 0.37f;
    auto logits = separated_logits(g, n, E, step);
    std::vector<int32_t> idx(n * K, -1);
    std::vector<float> w(n * K, NAN);
    k::GateParams p{.num_experts = E, .top_k = K, .renormalize = renorm, .routed_scaling = scaling};
    k::moe_gate_topk(logits.data(), idx.data(), w.data(), n, p);
    for (int t = 0; t < n; ++t) {
      ref::VecD prob(E);
      double m = -1e300, z = 0;
      for (int e = 0; e < E; ++e) m = std::max(m, static_cast<double>(logits[t * E + e]));
      for (int e = 0; e < E; ++e) z += (prob[e] = std::exp(logits[t * E + e] - m));
      for (auto& x : prob) x /= z;
      const auto order = ranked(prob);
      double sum = 0;
      for (int j = 0; j < K; ++j) sum += prob[order[j]];
      for (int j = 0; j < K; ++j) {
        ASSERT_EQ(idx[t * K + j], order[j]) << "token " << t << " choice " << j;
        const double want = (renorm ? prob[order[j]] / sum : prob[order[j]]) * scaling;
        EXPECT_NEAR(w[t * K + j], want, 1e-6 * std::max(1.0, want));
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
  EXPECT_NEAR(w[1], 1.25f, 1e-6);
}

// DeepSeek-V3 routing written out as in HF's modeling code, in float64.
struct SigmoidRef {
  std::vector<int> idx;
  ref::VecD w;
  double margin;  // smallest gap at a decision the choice depends on
};
SigmoidRef sigmoid_route(const float* l, const std::vector<float>& bias, int E, int K, int n_group, int topk_group,
                         bool renorm, double scaling) {
  ref::VecD s(E), choice(E);
  for (int e = 0; e < E; ++e) {
    s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(l[e])));
    choice[e] = s[e] + (bias.empty() ? 0.0 : bias[e]);
  }
  double margin = 1e300;
  auto gaps = [&](const ref::VecD& v, const std::vector<int>& order, int upto) {
    for (int j = 0; j + 1 < static_cast<int>(order.size()) && j < upto; ++j)
      if (v[order[j]] != v[order[j + 1]]) margin = std::min(margin, v[order[j]] - v[order[j + 1]]);
  };
  if (n_group > 1) {
    const int per = E / n_group;
    ref::VecD gscore(n_group);
    for (int gi = 0; gi < n_group; ++gi) {
      ref::VecD in(choice.begin() + gi * per, choice.begin() + (gi + 1) * per);
      std::sort(in.rbegin(), in.rend());
      gscore[gi] = in[0] + (per > 1 ? in[1] : 0.0);
    }
    const auto gorder = ranked(gscore);
    gaps(gscore, gorder, topk_group);
    std::vector<bool> kept(n_group, false);
    for (int j = 0; j < topk_group; ++j) kept[gorder[j]] = true;
    for (int e = 0; e < E; ++e)
      if (!kept[e / per]) choice[e] = 0.0;
  }
  const auto order = ranked(choice);
  gaps(choice, order, K);
  SigmoidRef r{{order.begin(), order.begin() + K}, ref::VecD(K), margin};
  double sum = 0;
  for (int j = 0; j < K; ++j) sum += (r.w[j] = s[order[j]]);
  for (int j = 0; j < K; ++j) r.w[j] = (renorm ? r.w[j] / (sum + 1e-20) : r.w[j]) * scaling;
  return r;
}

TEST(Kernels, GateSigmoidGroupedMatchesFloat64) {
  std::mt19937 g(23);
  struct Case {
    int E, K, n_group, topk_group;
    bool bias, renorm;
    float scaling, bias_mean;
  };
  // Plain sigmoid top-k, with and without the correction bias; grouped
  // selection as in DeepSeek-V3 (scaled down); a negative bias so that masked
  // experts (0.0) outrank kept ones, which HF's masking also does.
  for (auto c : {Case{8, 2, 1, 1, false, true, 1.0f, 0}, Case{16, 4, 1, 1, true, false, 1.0f, 0},
                 Case{16, 4, 4, 2, true, true, 2.5f, 0}, Case{64, 8, 8, 3, true, true, 2.5f, 0},
                 Case{32, 6, 8, 4, false, true, 1.0f, 0}, Case{12, 12, 3, 3, true, true, 1.0f, 0},
                 Case{16, 3, 4, 1, true, true, 1.0f, -1.0f}}) {
    const int n = 40;
    std::vector<float> bias;
    if (c.bias) bias = ref::random_vec(g, c.E, 0.3f);
    for (auto& b : bias) b += c.bias_mean;
    std::vector<float> logits(n * c.E);
    std::vector<SigmoidRef> want;
    for (int t = 0; t < n; ++t) {
      // Redraw a token's logits until every decision has a clear margin, so
      // float32 and float64 cannot disagree on the choice.
      for (int tries = 0;; ++tries) {
        ASSERT_LT(tries, 1000);
        auto l = ref::random_vec(g, c.E, 2.0f);
        auto r = sigmoid_route(l.data(), bias, c.E, c.K, c.n_group, c.topk_group, c.renorm, c.scaling);
        if (r.margin < 1e-4) continue;
        std::copy(l.begin(), l.end(), logits.begin() + t * c.E);
        want.push_back(r);
        break;
      }
    }
    std::vector<int32_t> idx(n * c.K, -1);
    std::vector<float> w(n * c.K, NAN);
    k::GateParams p{.num_experts = c.E, .top_k = c.K, .scoring = k::GateScoring::kSigmoid, .renormalize = c.renorm,
                    .routed_scaling = c.scaling, .correction_bias = c.bias ? bias.data() : nullptr,
                    .n_group = c.n_group, .topk_group = c.topk_group};
    k::moe_gate_topk(logits.data(), idx.data(), w.data(), n, p);
    for (int t = 0; t < n; ++t)
      for (int j = 0; j < c.K; ++j) {
        ASSERT_EQ(idx[t * c.K + j], want[t].idx[j]) << "E " << c.E << " token " << t << " choice " << j;
        EXPECT_NEAR(w[t * c.K + j], want[t].w[j], 1e-6 * std::max(1.0, want[t].w[j]));
      }
  }
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

TEST(Kernels, MoePermuteGroupsByExpertStably) {
  std::mt19937 g(24);
  for (auto [n, E, K] : {std::tuple{1, 4, 1}, {13, 8, 2}, {50, 16, 4}, {6, 3, 3}}) {
    std::vector<int32_t> idx(n * K);
    std::vector<float> w = ref::random_vec(g, n * K);
    for (int t = 0; t < n; ++t) {
      std::vector<int> perm(E);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      // Only even experts are used (when there are enough), so odd ones stay empty.
      std::stable_partition(perm.begin(), perm.end(), [&](int e) { return e % 2 == 0 || E < 2 * K; });
      for (int j = 0; j < K; ++j) idx[t * K + j] = perm[j];
    }
    std::vector<int32_t> offsets(E + 1, -1), row_token(n * K, -1);
    std::vector<float> row_w(n * K, NAN);
    k::moe_permute(idx.data(), w.data(), n, K, E, offsets.data(), row_token.data(), row_w.data());
    std::vector<int32_t> want_off{0}, want_tok;
    std::vector<float> want_w;
    for (int e = 0; e < E; ++e) {
      for (int t = 0; t < n; ++t)
        for (int j = 0; j < K; ++j)
          if (idx[t * K + j] == e) want_tok.push_back(t), want_w.push_back(w[t * K + j]);
      want_off.push_back(static_cast<int32_t>(want_tok.size()));
    }
    EXPECT_EQ(offsets, want_off);
    EXPECT_EQ(row_token, want_tok);
    EXPECT_EQ(row_w, want_w);
  }
}

TEST(Kernels, ScatterAddWeightedAccumulatesIntoOutput) {
  std::mt19937 g(25);
  for (auto [tokens, rows, dim] : {std::tuple{1, 1, 1}, {5, 12, 70}, {64, 512, 300}}) {
    auto y = ref::random_vec(g, rows * dim), w = ref::random_vec(g, rows), out = ref::random_vec(g, tokens * dim);
    std::vector<int32_t> tok(rows);
    std::uniform_int_distribution<int> pick(0, tokens - 1);
    for (auto& t : tok) t = pick(g);  // repeats: several rows land on one token
    ref::VecD r = ref::to_double(out);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < dim; ++j) r[tok[i] * dim + j] += static_cast<double>(w[i]) * y[i * dim + j];
    k::scatter_add_weighted(y.data(), tok.data(), w.data(), out.data(), rows, dim);
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << rows << " rows";
  }
}

// permute -> gather -> grouped SwiGLU -> weighted scatter equals a dense loop
// over every token's chosen experts, including experts that receive no tokens
// (with null weights) and top_k = num_experts. The output starts non-zero: the
// scatter adds to it.
TEST(Kernels, MoeLayerMatchesDenseFloat64Loop) {
  std::mt19937 g(22);
  for (auto [n, E, K, H, I] : {std::tuple{1, 4, 1, 8, 16}, {17, 8, 2, 32, 48}, {40, 16, 4, 24, 40},
                               {5, 4, 4, 16, 8}, {64, 8, 2, 128, 96}, {1, 8, 2, 256, 512}, {3, 5, 2, 33, 17}}) {
    std::vector<std::vector<float>> wg(E), wu(E), wd(E);
    auto x = ref::random_vec(g, n * H);
    // Route every token among the first half of the experts (all of them when
    // k needs it): the rest stay empty.
    const int used = E / 2 >= K ? E / 2 : E;
    std::vector<int32_t> idx(n * K);
    std::vector<float> w(n * K);
    for (int t = 0; t < n; ++t) {
      std::vector<int> perm(used);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), g);
      for (int j = 0; j < K; ++j) idx[t * K + j] = perm[j], w[t * K + j] = 0.1f + 0.2f * j;
    }
    std::vector<k::ExpertWeights> ew(E);
    for (int e = 0; e < E; ++e) {
      if (std::find(idx.begin(), idx.end(), e) == idx.end()) continue;  // unused: null weights
      wg[e] = ref::random_vec(g, I * H, 0.2f);
      wu[e] = ref::random_vec(g, I * H, 0.2f);
      wd[e] = ref::random_vec(g, H * I, 0.2f);
      ew[e] = {wg[e].data(), wu[e].data(), wd[e].data()};
    }
    std::vector<int32_t> offsets(E + 1), row_token(n * K);
    std::vector<float> row_w(n * K);
    k::moe_permute(idx.data(), w.data(), n, K, E, offsets.data(), row_token.data(), row_w.data());
    int max_rows = 0;
    for (int e = 0; e < E; ++e) max_rows = std::max(max_rows, offsets[e + 1] - offsets[e]);
    // Scratch exactly as large as documented, followed by a guard band.
    const size_t scratch_size = 3 * static_cast<size_t>(max_rows) * I, guard = 64;
    std::vector<float> xp(n * K * H), yp(n * K * H, NAN), scratch(scratch_size + guard, -3.0f);
    auto out = ref::random_vec(g, n * H);
    ref::VecD r = ref::to_double(out);
    k::gather_rows(x.data(), row_token.data(), xp.data(), n * K, H);
    k::grouped_swiglu(xp.data(), yp.data(), offsets.data(), E, ew.data(), H, I, scratch.data());
    k::scatter_add_weighted(yp.data(), row_token.data(), row_w.data(), out.data(), n * K, H);
    for (size_t i = scratch_size; i < scratch.size(); ++i) ASSERT_EQ(scratch[i], -3.0f) << "scratch overrun";

    for (int t = 0; t < n; ++t)
      for (int j = 0; j < K; ++j) {
        const int e = idx[t * K + j];
        ref::VecD h(I);
        for (int i = 0; i < I; ++i) {
          double gs = 0, us = 0;
          for (int c = 0; c < H; ++c) {
            gs += static_cast<double>(wg[e][i * H + c]) * x[t * H + c];
            us += static_cast<double>(wu[e][i * H + c]) * x[t * H + c];
          }
          h[i] = gs / (1 + std::exp(-gs)) * us;
        }
        for (int hh = 0; hh < H; ++hh) {
          double s = 0;
          for (int i = 0; i < I; ++i) s += wd[e][hh * I + i] * h[i];
          r[t * H + hh] += w[t * K + j] * s;
        }
      }
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << n << " tokens, " << E << " experts, k " << K;
  }
}

}  // namespace
}  // namespace tandem
