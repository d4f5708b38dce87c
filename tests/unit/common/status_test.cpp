#include <gtest/gtest.h>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem {
namespace {

Result<int> half_of(int x) {
  if (x % 2) return invalid_argument("odd: " + std::to_string(x));
  return x / 2;
}

Result<int> quarter_of(int x) {
  TANDEM_ASSIGN_OR_RETURN(int h, half_of(x));
  return half_of(h);
}

TEST(Status, PropagatesErrorsWithCode) {
  EXPECT_EQ(*quarter_of(8), 2);
  auto r = quarter_of(6);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().to_string(), "INVALID_ARGUMENT: odd: 3");
  EXPECT_EQ(r.status().with_context("loading x").message(), "loading x: odd: 3");
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (float f : {0.f, 1.f, -2.5f, 3.140625f, 0x1p-100f, 65280.f}) {
    EXPECT_EQ(bf16_to_float(float_to_bf16(f)), f) << f;
  }
  // 1 + 2^-8 is exactly half way between two bf16 values: ties to even (1.0).
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
}

TEST(DType, F16RoundTrip) {
  for (float f : {0.f, 1.f, -2.5f, 65504.f, 6.103515625e-05f, 5.960464477539063e-08f}) {
    EXPECT_EQ(f16_to_float(float_to_f16(f)), f) << f;
  }
}

}  // namespace
}  // namespace tandem
