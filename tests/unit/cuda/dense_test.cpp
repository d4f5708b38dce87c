// linear, embedding, norms, rope, silu_mul, conversions: GPU vs the CPU reference.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "cuda_test_util.h"

namespace tandem::kernels::cuda::testing {
namespace {

using DenseCuda = CudaTest;

struct GemmShape {
  int64_t n, in, out;
};

TEST_F(DenseCuda, LinearFp32MatchesCpu) {
  for (GemmShape s : {GemmShape{1, 1, 1}, GemmShape{1, 256, 384}, GemmShape{7, 33, 65}, GemmShape{128, 1024, 512}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << s.n << " in=" << s.in << " out=" << s.out);
    auto x = random_floats(s.n * s.in, 1);
    auto w = random_floats(s.out * s.in, 2);
    std::vector<float> ref(s.n * s.out);
    cpu::linear(x.data(), w.data(), ref.data(), s.n, s.in, s.out);
    DeviceBuffer<float> dx(x), dw(w), dy(s.n * s.out);
    TANDEM_ASSERT_OK(linear(dx.get(), dw.get(), dy.get(), s.n, s.in, s.out));
    // Different summation orders: error grows like sqrt(in).
    EXPECT_TRUE(all_close(dy.to_host(), ref, 1e-4f, 2e-6f * std::sqrt(static_cast<float>(s.in)) * 4));
  }
}

TEST_F(DenseCuda, LinearBf16MatchesCpuOnRoundedInputs) {
  const int64_t n = 19, in = 512, out = 320;
  auto x = round_bf16(random_floats(n * in, 3));
  auto w = round_bf16(random_floats(out * in, 4));
  std::vector<float> ref(n * out);
  cpu::linear(x.data(), w.data(), ref.data(), n, in, out);
  DeviceBuffer<Bf16> dx(to_bf16(x)), dw(to_bf16(w)), dy(n * out);
  DeviceBuffer<float> dy32(n * out);
  TANDEM_ASSERT_OK(linear(dx.get(), dw.get(), dy.get(), n, in, out));
  TANDEM_ASSERT_OK(linear(dx.get(), dw.get(), dy32.get(), n, in, out));
  // BF16 output: one rounding (2^-9 relative) on top of FP32 accumulation.
  EXPECT_TRUE(all_close(from_bf16(dy.to_host()), ref, 8e-3f, 1e-3f * rms(ref)));
  // FP32 output of the same product: only summation order differs.
  EXPECT_TRUE(all_close(dy32.to_host(), ref, 1e-4f, 1e-5f * rms(ref)));
}

TEST_F(DenseCuda, LinearEmptyIsANoOp) {
  TANDEM_ASSERT_OK(linear(static_cast<const float*>(nullptr), nullptr, static_cast<float*>(nullptr), 0, 16, 16));
}

TEST_F(DenseCuda, EmbeddingAndGatherRows) {
  const int64_t vocab = 1000, hidden = 96;
  auto table = random_floats(vocab * hidden, 5);
  std::vector<int32_t> ids = {0, 999, 17, 17, 512, 3};
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> ref(n * hidden), ref_g(n * hidden);
  cpu::embedding(table.data(), ids.data(), ref.data(), n, hidden);
  cpu::gather_rows(table.data(), ids.data(), ref_g.data(), n, hidden);
  DeviceBuffer<float> dt(table), dout(n * hidden), dg(n * hidden);
  DeviceBuffer<int32_t> dids(ids);
  TANDEM_ASSERT_OK(embedding(dt.get(), dids.get(), dout.get(), n, hidden));
  TANDEM_ASSERT_OK(gather_rows(dt.get(), dids.get(), dg.get(), n, hidden));
  EXPECT_EQ(dout.to_host(), ref);
  EXPECT_EQ(dg.to_host(), ref_g);

  DeviceBuffer<Bf16> dtb(to_bf16(table)), doutb(n * hidden);
  TANDEM_ASSERT_OK(embedding(dtb.get(), dids.get(), doutb.get(), n, hidden));
  EXPECT_EQ(from_bf16(doutb.to_host()), round_bf16(ref));
}

TEST_F(DenseCuda, RmsnormMatchesCpuAndMayRunInPlace) {
  for (int64_t dim : {1, 7, 128, 4096, 7168}) {
    SCOPED_TRACE(::testing::Message() << "dim=" << dim);
    const int64_t n = 5;
    auto x = random_floats(n * dim, 6, -3.0f, 3.0f);
    auto w = random_floats(dim, 7, 0.5f, 1.5f);
    std::vector<float> ref(n * dim);
    cpu::rmsnorm(x.data(), w.data(), ref.data(), n, dim, 1e-6f);
    DeviceBuffer<float> dx(x), dw(w), dy(n * dim);
    TANDEM_ASSERT_OK(rmsnorm(dx.get(), dw.get(), dy.get(), n, dim, 1e-6f));
    EXPECT_TRUE(all_close(dy.to_host(), ref, 1e-5f, 1e-6f));
    TANDEM_ASSERT_OK(rmsnorm(dx.get(), dw.get(), dx.get(), n, dim, 1e-6f));
    EXPECT_TRUE(all_close(dx.to_host(), ref, 1e-5f, 1e-6f));
  }
}

TEST_F(DenseCuda, RmsnormBf16) {
  const int64_t n = 3, dim = 2048;
  auto x = round_bf16(random_floats(n * dim, 8, -3.0f, 3.0f));
  auto w = round_bf16(random_floats(dim, 9, 0.5f, 1.5f));
  std::vector<float> ref(n * dim);
  cpu::rmsnorm(x.data(), w.data(), ref.data(), n, dim, 1e-5f);
  DeviceBuffer<Bf16> dx(to_bf16(x)), dw(to_bf16(w)), dy(n * dim);
  TANDEM_ASSERT_OK(rmsnorm(dx.get(), dw.get(), dy.get(), n, dim, 1e-5f));
  EXPECT_TRUE(all_close(from_bf16(dy.to_host()), ref, 8e-3f, 1e-5f));
}

TEST_F(DenseCuda, AddRmsnormUpdatesResidual) {
  const int64_t n = 4, dim = 1536;
  auto res = random_floats(n * dim, 10, -2.0f, 2.0f);
  auto x = random_floats(n * dim, 11, -2.0f, 2.0f);
  auto w = random_floats(dim, 12, 0.5f, 1.5f);
  std::vector<float> ref_res = res, ref_y(n * dim);
  cpu::add_rmsnorm(ref_res.data(), x.data(), w.data(), ref_y.data(), n, dim, 1e-6f);
  DeviceBuffer<float> dres(res), dx(x), dw(w), dy(n * dim);
  TANDEM_ASSERT_OK(add_rmsnorm(dres.get(), dx.get(), dw.get(), dy.get(), n, dim, 1e-6f));
  EXPECT_EQ(dres.to_host(), ref_res);  // one FP32 add each: bit-exact
  EXPECT_TRUE(all_close(dy.to_host(), ref_y, 1e-5f, 1e-6f));

  // BF16: the residual is rounded after the add, as torch does; the CPU keeps FP32.
  auto rb = round_bf16(res), xb = round_bf16(x), wb = round_bf16(w);
  std::vector<float> ref_rb = rb, ref_yb(n * dim);
  cpu::add_rmsnorm(ref_rb.data(), xb.data(), wb.data(), ref_yb.data(), n, dim, 1e-6f);
  DeviceBuffer<Bf16> drb(to_bf16(rb)), dxb(to_bf16(xb)), dwb(to_bf16(wb)), dyb(n * dim);
  TANDEM_ASSERT_OK(add_rmsnorm(drb.get(), dxb.get(), dwb.get(), dyb.get(), n, dim, 1e-6f));
  EXPECT_EQ(from_bf16(drb.to_host()), round_bf16(ref_rb));
  EXPECT_TRUE(all_close(from_bf16(dyb.to_host()), ref_yb, 1.6e-2f, 1e-3f));
}

TEST_F(DenseCuda, RopeNeoxFullAndPartialRotation) {
  struct Case {
    int64_t heads, head_dim, rot_dim;
  };
  for (Case c : {Case{4, 128, 128}, Case{2, 64, 32}, Case{3, 80, 80}}) {
    SCOPED_TRACE(::testing::Message() << "head_dim=" << c.head_dim << " rot_dim=" << c.rot_dim);
    std::vector<int32_t> pos = {0, 1, 2, 17, 1000, 4095, 8191, 32767};
    const int64_t n = static_cast<int64_t>(pos.size());
    std::vector<float> inv_freq(c.rot_dim / 2);
    for (int64_t i = 0; i < c.rot_dim / 2; ++i) {
      inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / c.rot_dim));
    }
    auto x = random_floats(n * c.heads * c.head_dim, 13);
    std::vector<float> ref = x;
    cpu::rope_neox(ref.data(), pos.data(), inv_freq.data(), n, c.heads, c.head_dim, c.rot_dim, 1.25f);
    DeviceBuffer<float> dx(x), dinv(inv_freq);
    DeviceBuffer<int32_t> dpos(pos);
    TANDEM_ASSERT_OK(rope_neox(dx.get(), dpos.get(), dinv.get(), n, c.heads, c.head_dim, c.rot_dim, 1.25f));
    // cos/sin of angles up to 32767 rad: both sides reduce the same FP32 angle.
    EXPECT_TRUE(all_close(dx.to_host(), ref, 1e-5f, 2e-6f));

    auto xb = round_bf16(x);
    std::vector<float> refb = xb;
    cpu::rope_neox(refb.data(), pos.data(), inv_freq.data(), n, c.heads, c.head_dim, c.rot_dim, 1.25f);
    DeviceBuffer<Bf16> dxb(to_bf16(xb));
    TANDEM_ASSERT_OK(rope_neox(dxb.get(), dpos.get(), dinv.get(), n, c.heads, c.head_dim, c.rot_dim, 1.25f));
    EXPECT_TRUE(all_close(from_bf16(dxb.to_host()), refb, 8e-3f, 1e-3f));
  }
}

TEST_F(DenseCuda, SiluMul) {
  const int64_t n = 33, dim = 700;
  auto g = random_floats(n * dim, 14, -20.0f, 20.0f);
  auto u = random_floats(n * dim, 15, -2.0f, 2.0f);
  std::vector<float> ref(n * dim);
  cpu::silu_mul(g.data(), u.data(), ref.data(), n, dim);
  DeviceBuffer<float> dg(g), du(u), dout(n * dim);
  TANDEM_ASSERT_OK(silu_mul(dg.get(), du.get(), dout.get(), n, dim));
  EXPECT_TRUE(all_close(dout.to_host(), ref, 1e-5f, 1e-6f));

  auto gb = round_bf16(g), ub = round_bf16(u);
  std::vector<float> refb(n * dim);
  cpu::silu_mul(gb.data(), ub.data(), refb.data(), n, dim);
  DeviceBuffer<Bf16> dgb(to_bf16(gb)), dub(to_bf16(ub)), doutb(n * dim);
  TANDEM_ASSERT_OK(silu_mul(dgb.get(), dub.get(), doutb.get(), n, dim));
  EXPECT_TRUE(all_close(from_bf16(doutb.to_host()), refb, 8e-3f, 1e-6f));
}

TEST_F(DenseCuda, ConvertRoundsLikeTheHost) {
  auto x = random_floats(10001, 16, -1000.0f, 1000.0f);
  x[0] = 1.0f + 1.0f / 256;  // a tie: rounds to even
  DeviceBuffer<float> dx(x), back(x.size());
  DeviceBuffer<Bf16> db(x.size());
  TANDEM_ASSERT_OK(convert(dx.get(), db.get(), static_cast<int64_t>(x.size())));
  TANDEM_ASSERT_OK(convert(db.get(), back.get(), static_cast<int64_t>(x.size())));
  EXPECT_EQ(back.to_host(), round_bf16(x));
}

}  // namespace
}  // namespace tandem::kernels::cuda::testing
