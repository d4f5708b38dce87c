// argmax and sample: the GPU must pick the CPU's token for the same uniform.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <random>

#include "cuda_test_util.h"

namespace tandem::kernels::cuda::testing {
namespace {

using SamplingCuda = CudaTest;

TEST_F(SamplingCuda, ArgmaxLowestIndexOnTies) {
  std::vector<float> x = random_floats(151936, 201);
  x[70000] = 5.0f;
  x[90000] = 5.0f;
  x[150000] = 5.0f;
  DeviceBuffer<float> dx(x);
  Result<int32_t> got = argmax(dx.get(), static_cast<int64_t>(x.size()));
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(*got, 70000);
  EXPECT_EQ(*got, cpu::argmax(x.data(), static_cast<int64_t>(x.size())));

  std::vector<float> one = {-1.0f};
  DeviceBuffer<float> done(one);
  Result<int32_t> got1 = argmax(done.get(), 1);
  ASSERT_TRUE(got1.is_ok());
  EXPECT_EQ(*got1, 0);
}

TEST_F(SamplingCuda, ArgmaxRowsWritesDeviceIds) {
  const int64_t rows = 6, n = 1001;
  auto x = random_floats(rows * n, 202);
  // Rows the CPU scan treats specially: a NaN first (it never moves off index
  // 0), NaNs elsewhere (skipped), a tie (the lower id), all -inf (index 0).
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  x[1 * n + 0] = nan;
  x[2 * n + 5] = nan;
  x[2 * n + 700] = nan;
  x[3 * n + 10] = x[3 * n + 900] = 50.0f;
  std::fill(x.begin() + 4 * n, x.begin() + 5 * n, -inf);
  std::vector<int32_t> ref(rows);
  for (int64_t r = 0; r < rows; ++r) ref[r] = cpu::argmax(x.data() + r * n, n);
  DeviceBuffer<float> dx(x);
  DeviceBuffer<int32_t> dout(rows);
  TANDEM_ASSERT_OK(argmax_rows(dx.get(), rows, n, dout.get()));
  EXPECT_EQ(dout.to_host(), ref);
}

struct SampleCase {
  int64_t vocab;
  SamplingParams params;
};

TEST_F(SamplingCuda, SampleMatchesCpuForTheSameUniform) {
  std::vector<SampleCase> cases = {
      {1000, {0.0f, 0, 1.0f}},      // greedy
      {1000, {1.0f, 0, 1.0f}},      // plain softmax
      {32000, {0.7f, 50, 1.0f}},    // top-k
      {32000, {1.0f, 0, 0.9f}},     // top-p
      {151936, {0.8f, 40, 0.95f}},  // both, Qwen-sized vocabulary
      {7, {2.0f, 3, 0.5f}},
  };
  std::mt19937 gen(203);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  for (const SampleCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "vocab=" << c.vocab << " T=" << c.params.temperature
                                      << " top_k=" << c.params.top_k << " top_p=" << c.params.top_p);
    // Peaked enough that top-p cuts somewhere interesting.
    auto logits = random_floats(c.vocab, 204 + static_cast<uint32_t>(c.vocab), -8.0f, 8.0f);
    std::vector<float> host_scratch(2 * c.vocab);
    DeviceBuffer<float> dlogits(logits), dscratch(2 * c.vocab);
    for (int draw = 0; draw < 50; ++draw) {
      const float u = unif(gen);
      const int32_t want = cpu::sample(logits.data(), c.vocab, c.params, u, host_scratch.data());
      Result<int32_t> got = sample(dlogits.get(), c.vocab, c.params, u, dscratch.get());
      ASSERT_TRUE(got.is_ok()) << got.status().to_string();
      EXPECT_EQ(*got, want) << "uniform " << u;
    }
  }
}

}  // namespace
}  // namespace tandem::kernels::cuda::testing
