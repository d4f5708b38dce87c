// Dense CPU kernels against float64 references: linear, embedding, RMSNorm,
// fused add + RMSNorm, RoPE, SiLU·up, and zero-size calls.
#include <gtest/gtest.h>

#include <tuple>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

TEST(Kernels, LinearMatchesFloat64) {
  std::mt19937 g(1);
  // Single rows (the gemv path, threaded once large), primes, non-multiples of
  // 8 and 16, and a small-Mixtral projection.
  for (auto [n, in, out] : {std::tuple{1, 1, 1}, {1, 64, 96}, {7, 33, 13}, {2, 17, 1}, {64, 256, 130},
                            {3, 1000, 7}, {1, 1000, 301}, {31, 129, 67}, {1, 1024, 2816}, {97, 1024, 211}}) {
    auto x = ref::random_vec(g, n * in), w = ref::random_vec(g, out * in);
    std::vector<float> y(n * out, NAN);
    k::linear(x.data(), w.data(), y.data(), n, in, out);
    EXPECT_LT(ref::rel_err(y, ref::linear(x, w, n, in, out)), 1e-5) << n << "x" << in << "x" << out;
  }
}

TEST(Kernels, EmbeddingAndGatherCopyRows) {
  std::mt19937 g(2);
  for (auto [vocab, hidden, n] : {std::tuple{50, 8, 4}, {1, 1, 1}, {1000, 257, 300}}) {
    auto table = ref::random_vec(g, vocab * hidden);
    std::vector<int32_t> ids(n);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    for (auto& id : ids) id = pick(g);
    ids[0] = vocab - 1;
    std::vector<float> out(n * hidden, NAN), out2(n * hidden, NAN);
    k::embedding(table.data(), ids.data(), out.data(), n, hidden);
    k::gather_rows(table.data(), ids.data(), out2.data(), n, hidden);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < hidden; ++j) {
        ASSERT_EQ(out[i * hidden + j], table[ids[i] * hidden + j]) << i << "," << j;
        ASSERT_EQ(out2[i * hidden + j], table[ids[i] * hidden + j]) << i << "," << j;
      }
  }
}

TEST(Kernels, RmsNormMatchesFloat64AndMayRunInPlace) {
  std::mt19937 g(3);
  // (n, dim, input scale, eps): tiny inputs make eps matter; large ones would
  // overflow a float sum of squares computed carelessly.
  for (auto [n, dim, scale, eps] : {std::tuple{1, 1, 3.0f, 1e-6f}, {5, 64, 3.0f, 1e-6f}, {3, 1000, 3.0f, 1e-6f},
                                    {130, 17, 3.0f, 1e-6f}, {67, 1031, 1.0f, 1e-5f}, {1, 4096, 1.0f, 1e-5f},
                                    {9, 24, 1e-3f, 1e-5f}, {4, 333, 1e4f, 1e-6f}}) {
    auto x = ref::random_vec(g, n * dim, scale), w = ref::random_vec(g, dim);
    std::vector<float> y(x.size(), NAN);
    k::rmsnorm(x.data(), w.data(), y.data(), n, dim, eps);
    EXPECT_LT(ref::rel_err(y, ref::rmsnorm(x, w, n, dim, eps)), 1e-5) << n << "x" << dim << " scale " << scale;
    k::rmsnorm(x.data(), w.data(), x.data(), n, dim, eps);
    EXPECT_EQ(x, y);
  }
}

TEST(Kernels, AddRmsNormUpdatesResidualAndMatchesFloat64) {
  std::mt19937 g(4);
  for (auto [n, dim] : {std::pair{1, 1}, {9, 48}, {70, 1024}, {3, 1031}}) {
    auto res = ref::random_vec(g, n * dim), x = ref::random_vec(g, n * dim), w = ref::random_vec(g, dim);
    std::vector<float> sum(res.size());
    ref::VecD sumd(res.size());
    for (size_t i = 0; i < sum.size(); ++i) {
      sum[i] = res[i] + x[i];
      sumd[i] = static_cast<double>(res[i]) + x[i];
    }
    std::vector<float> y(res.size(), NAN);
    k::add_rmsnorm(res.data(), x.data(), w.data(), y.data(), n, dim, 1e-5f);
    EXPECT_LT(ref::rel_err(res, sumd), 1e-6) << n << "x" << dim;
    EXPECT_LT(ref::rel_err(y, ref::rmsnorm(sum, w, n, dim, 1e-5)), 1e-5) << n << "x" << dim;
  }
}

TEST(Kernels, RopeNeoxMatchesFloat64) {
  std::mt19937 g(5);
  // (n, heads, head_dim, rot_dim, attention_scaling); rot_dim < head_dim is partial
  // rotary, whose tail must stay untouched.
  for (auto [n, heads, d, rot, att] : {std::tuple{1, 1, 2, 2, 1.0f}, {6, 3, 16, 16, 1.0f}, {4, 2, 64, 32, 1.0f},
                                       {3, 5, 128, 128, 0.75f}, {64, 8, 128, 128, 1.0f}, {7, 3, 20, 6, 1.2f}}) {
    auto x = ref::random_vec(g, n * heads * d);
    std::vector<int32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[i] = (i * 37 + 5) % 301;
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i) inv[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / rot));
    ref::VecD r(x.begin(), x.end());
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < rot / 2; ++i) {
          const double a = static_cast<double>(pos[t]) * inv[i];
          const size_t b = (t * heads + h) * d;
          r[b + i] = att * (x[b + i] * std::cos(a) - x[b + i + rot / 2] * std::sin(a));
          r[b + i + rot / 2] = att * (x[b + i + rot / 2] * std::cos(a) + x[b + i] * std::sin(a));
        }
    k::rope_neox(x.data(), pos.data(), inv.data(), n, heads, d, rot, att);
    // Angles are rounded to float32 (as HF does): for positions up to ~300 that
    // costs ~3e-5 relative against exact angles.
    EXPECT_LT(ref::rel_err(x, r), 1e-4) << n << " " << heads << " " << d << " " << rot;
  }
}

TEST(Kernels, SiluMulMatchesFloat64AndMayRunInPlace) {
  std::mt19937 g(6);
  for (auto [n, dim] : {std::pair{1, 1}, {3, 111}, {300, 333}}) {
    auto a = ref::random_vec(g, n * dim, 4.0f), b = ref::random_vec(g, n * dim);
    a[0] = -100.0f;  // exp(100) overflows float: the product must still be ~0, not NaN
    std::vector<float> out(n * dim, NAN);
    k::silu_mul(a.data(), b.data(), out.data(), n, dim);
    ref::VecD r(n * dim);
    for (int i = 0; i < n * dim; ++i) r[i] = a[i] / (1.0 + std::exp(-static_cast<double>(a[i]))) * b[i];
    EXPECT_LT(ref::rel_err(out, r), 1e-6);
    k::silu_mul(a.data(), b.data(), a.data(), n, dim);
    EXPECT_EQ(a, out);
  }
}

// Zero tokens / rows / experts: every op returns without touching its outputs.
TEST(Kernels, ZeroSizedCallsAreNoOps) {
  std::vector<float> buf(64, 7.0f), out(64, 7.0f), res(64, 7.0f);
  const std::vector<float> untouched(64, 7.0f);
  std::vector<int32_t> ids(8, 0), idx(8, 5), offsets(9, 3);
  std::vector<int64_t> slots(8, 0);
  k::linear(buf.data(), buf.data(), out.data(), 0, 4, 4);
  k::linear(buf.data(), buf.data(), out.data(), 4, 4, 0);
  k::embedding(buf.data(), ids.data(), out.data(), 0, 4);
  k::rmsnorm(buf.data(), buf.data(), out.data(), 0, 4, 1e-5f);
  k::add_rmsnorm(res.data(), buf.data(), buf.data(), out.data(), 0, 4, 1e-5f);
  k::rope_neox(out.data(), ids.data(), buf.data(), 0, 2, 4, 4, 1.0f);
  k::silu_mul(buf.data(), buf.data(), out.data(), 0, 4);
  k::gather_rows(buf.data(), ids.data(), out.data(), 0, 4);
  k::scatter_add_weighted(buf.data(), ids.data(), buf.data(), out.data(), 0, 4);
  k::PagedKv cache{res.data(), res.data(), 4, 4, 1, 4};
  k::kv_cache_write(buf.data(), buf.data(), slots.data(), 0, cache);
  k::attention_prefill(buf.data(), buf.data(), buf.data(), out.data(), 0, 2, 1, 4, 0.5f);
  k::attention_paged(buf.data(), out.data(), 0, 2, cache, ids.data(), 1, ids.data(), ids.data(), 0.5f);
  k::moe_gate_topk(buf.data(), idx.data(), out.data(), 0, {.num_experts = 4, .top_k = 2});
  k::grouped_swiglu(buf.data(), out.data(), offsets.data(), 8, nullptr, 4, 4, res.data());  // all experts empty
  EXPECT_EQ(out, untouched);
  EXPECT_EQ(res, untouched);
  EXPECT_EQ(idx, std::vector<int32_t>(8, 5));
  k::moe_permute(idx.data(), buf.data(), 0, 2, 8, offsets.data(), ids.data(), out.data());
  EXPECT_EQ(offsets, std::vector<int32_t>(9, 0));
  EXPECT_EQ(out, untouched);
}

}  // namespace
}  // namespace tandem
