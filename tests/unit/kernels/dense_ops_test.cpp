#include <gtest/gtest.h>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

TEST(Kernels, LinearMatchesFloat64) {
  std::mt19937 g(1);
  for (auto [n, in, out] : {std::tuple{1, 1, 1}, {1, 64, 96}, {7, 33, 13}, {64, 256, 130}, {3, 1000, 7}}) {
    auto x = ref::random_vec(g, n * in), w = ref::random_vec(g, out * in);
    std::vector<float> y(n * out);
    k::linear(x.data(), w.data(), y.data(), n, in, out);
    EXPECT_LT(ref::rel_err(y, ref::linear(x, w, n, in, out)), 1e-5) << n << "x" << in << "x" << out;
  }
}

TEST(Kernels, EmbeddingGathersRows) {
  std::mt19937 g(2);
  auto table = ref::random_vec(g, 50 * 8);
  std::vector<int32_t> ids{3, 0, 49, 3};
  std::vector<float> out(4 * 8);
  k::embedding(table.data(), ids.data(), out.data(), 4, 8);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) EXPECT_EQ(out[i * 8 + j], table[ids[i] * 8 + j]);
}

TEST(Kernels, RmsNormMatchesFloat64AndMayRunInPlace) {
  std::mt19937 g(3);
  for (auto [n, dim] : {std::pair{1, 1}, {5, 64}, {3, 1000}, {130, 17}}) {
    auto x = ref::random_vec(g, n * dim, 3.0f), w = ref::random_vec(g, dim);
    std::vector<float> y(x.size());
    k::rmsnorm(x.data(), w.data(), y.data(), n, dim, 1e-6f);
    auto r = ref::rmsnorm(x, w, n, dim, 1e-6);
    EXPECT_LT(ref::rel_err(y, r), 1e-5);
    k::rmsnorm(x.data(), w.data(), x.data(), n, dim, 1e-6f);
    EXPECT_EQ(x, y);
  }
}

TEST(Kernels, AddRmsNormUpdatesResidual) {
  std::mt19937 g(4);
  const int n = 9, dim = 48;
  auto res = ref::random_vec(g, n * dim), x = ref::random_vec(g, n * dim), w = ref::random_vec(g, dim);
  std::vector<float> sum(res.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = res[i] + x[i];
  std::vector<float> y(res.size());
  k::add_rmsnorm(res.data(), x.data(), w.data(), y.data(), n, dim, 1e-5f);
  ref::VecD sumd(sum.begin(), sum.end());
  EXPECT_LT(ref::rel_err(res, sumd), 1e-6);
  EXPECT_LT(ref::rel_err(y, ref::rmsnorm(sum, w, n, dim, 1e-5)), 1e-5);
}

TEST(Kernels, RopeNeoxMatchesFloat64) {
  std::mt19937 g(5);
  for (auto [n, heads, d, rot] : {std::tuple{1, 1, 2, 2}, {6, 3, 16, 16}, {4, 2, 64, 32}, {3, 5, 128, 128}}) {
    auto x = ref::random_vec(g, n * heads * d);
    std::vector<int32_t> pos(n);
    for (int i = 0; i < n; ++i) pos[i] = i * 37 + 5;
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i) inv[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / rot));
    ref::VecD r(x.begin(), x.end());
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < rot / 2; ++i) {
          const double a = static_cast<double>(pos[t]) * inv[i];
          const size_t b = (t * heads + h) * d;
          r[b + i] = x[b + i] * std::cos(a) - x[b + i + rot / 2] * std::sin(a);
          r[b + i + rot / 2] = x[b + i + rot / 2] * std::cos(a) + x[b + i] * std::sin(a);
        }
    k::rope_neox(x.data(), pos.data(), inv.data(), n, heads, d, rot, 1.0f);
    // float32 angles for positions up to ~200 lose ~1e-5 relative.
    EXPECT_LT(ref::rel_err(x, r), 1e-4) << n << " " << heads << " " << d << " " << rot;
  }
}

TEST(Kernels, SiluMul) {
  std::mt19937 g(6);
  auto a = ref::random_vec(g, 333, 4.0f), b = ref::random_vec(g, 333);
  std::vector<float> out(333);
  k::silu_mul(a.data(), b.data(), out.data(), 3, 111);
  ref::VecD r(333);
  for (int i = 0; i < 333; ++i) r[i] = a[i] / (1.0 + std::exp(-static_cast<double>(a[i]))) * b[i];
  EXPECT_LT(ref::rel_err(out, r), 1e-6);
}

}  // namespace
}  // namespace tandem
