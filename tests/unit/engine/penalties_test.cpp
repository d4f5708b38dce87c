// The logits adjustments a request may ask for, against their published
// definitions: OpenAI's logit_bias and presence/frequency penalties
// (mu[j] - c[j]·frequency - [c[j] > 0]·presence over tokens generated so far)
// and the repetition penalty of HF transformers / vLLM (over prompt and
// output: positive logits divided by it, others multiplied, once per token).
#include <gtest/gtest.h>

#include "tandem/engine/penalties.h"

#include <cmath>

namespace tandem::engine {
namespace {

TEST(Penalties, FollowTheirDefinitions) {
  LogitsAdjustments a;
  a.logit_bias = {{1, 2.5f}, {6, -100.0f}};
  a.presence_penalty = 0.5f;
  a.frequency_penalty = 0.25f;
  a.repetition_penalty = 2.0f;
  PenaltyState st(a, /*prompt=*/{2, 3, 2});
  st.add_generated(3);
  st.add_generated(4);
  st.add_generated(4);
  std::vector<float> logits = {1.0f, 1.0f, 4.0f, -4.0f, 6.0f, 1.0f, 3.0f};
  st.apply(a, logits.data(), static_cast<int64_t>(logits.size()));
  EXPECT_FLOAT_EQ(logits[0], 1.0f);                        // untouched
  EXPECT_FLOAT_EQ(logits[1], 3.5f);                        // biased
  EXPECT_FLOAT_EQ(logits[2], 2.0f);                        // in the prompt: 4 / 2
  EXPECT_FLOAT_EQ(logits[3], -8.0f - 0.25f - 0.5f);        // prompt and output once: -4 · 2, then generated once
  EXPECT_FLOAT_EQ(logits[4], 3.0f - 2 * 0.25f - 0.5f);     // output only: 6 / 2, generated twice
  EXPECT_FLOAT_EQ(logits[5], 1.0f);
  EXPECT_FLOAT_EQ(logits[6], -97.0f);                      // banned
}

// The bias comes before the repetition penalty (vLLM's order); ids outside
// the row are skipped.
TEST(Penalties, BiasFirstAndOnlyInsideTheRow) {
  LogitsAdjustments a;
  a.logit_bias = {{0, 1.0f}, {3, 5.0f}, {-1, 5.0f}};
  a.repetition_penalty = 2.0f;
  PenaltyState st(a, /*prompt=*/{0, 7});
  st.add_generated(9);
  std::vector<float> logits = {1.0f, 1.0f, 1.0f};
  st.apply(a, logits.data(), 3);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);  // (1 + 1) / 2, not 1 / 2 + 1
  EXPECT_FLOAT_EQ(logits[1], 1.0f);
  EXPECT_FLOAT_EQ(logits[2], 1.0f);
}

// min_p keeps tokens at least min_p as likely as the most likely one at the
// temperature given; banned tokens get -inf.
TEST(Penalties, MinPAndBans) {
  std::vector<float> logits = {0.0f, std::log(0.5f), std::log(0.2f)};
  apply_min_p(0.3f, 1.0f, logits.data(), 3);
  EXPECT_FLOAT_EQ(logits[1], std::log(0.5f));
  EXPECT_TRUE(std::isinf(logits[2]) && logits[2] < 0);
  logits = {0.0f, std::log(0.5f), std::log(0.2f)};
  apply_min_p(0.3f, 2.0f, logits.data(), 3);  // flatter at T = 2: 0.2^(1/2) = 0.45 >= 0.3
  EXPECT_FLOAT_EQ(logits[2], std::log(0.2f));
  apply_min_p(0.3f, 0.0f, logits.data(), 3);  // greedy: nothing to drop
  EXPECT_FLOAT_EQ(logits[2], std::log(0.2f));
  ban_tokens({2, 7, -1}, logits.data(), 3);
  EXPECT_TRUE(std::isinf(logits[2]));
  EXPECT_FLOAT_EQ(logits[0], 0.0f);
  LogitsAdjustments a;
  a.min_tokens = 2;
  EXPECT_TRUE(a.changes_argmax(1));
  EXPECT_FALSE(a.changes_argmax(2));
  a.min_p = 0.5f;
  EXPECT_TRUE(a.any());
}

TEST(Penalties, NeutralValuesChangeNothing) {
  LogitsAdjustments a;
  EXPECT_FALSE(a.any());
  PenaltyState st(a, {0, 1});
  st.add_generated(1);
  std::vector<float> logits = {0.5f, -0.5f, 2.0f};
  const auto before = logits;
  st.apply(a, logits.data(), 3);
  EXPECT_EQ(logits, before);
  a.presence_penalty = -1.0f;  // negative: encourages repeats
  EXPECT_TRUE(a.any());
  st.apply(a, logits.data(), 3);
  EXPECT_FLOAT_EQ(logits[1], 0.5f);
}

}  // namespace
}  // namespace tandem::engine
