#include <gtest/gtest.h>

#include "planner_test_util.h"

namespace tandem::planner {
namespace {

using testing::round_hw;
using testing::small_shape;

TEST(PerfModel, MinMicroBatchesFollowsEq3) {
  EXPECT_EQ(min_micro_batches(0.0, 1.0), 2);   // free communication: two halves ping-pong
  EXPECT_EQ(min_micro_batches(0.3, 1.0), 3);   // T_c < T_f / 2 -> m >= 3
  EXPECT_EQ(min_micro_batches(0.5, 1.0), 3);
  EXPECT_EQ(min_micro_batches(0.6, 1.0), 4);   // otherwise m >= 4
  EXPECT_EQ(min_micro_batches(0.99, 1.0), 4);
  EXPECT_EQ(min_micro_batches(1.5, 1.0), 5);   // T_c > T_f breaks condition (2); Eq. 3 still says how many
}

// Every number below is bytes / 1e12 s (or / 1e10 on the NIC), written out.
TEST(PerfModel, StageTimesMatchHandComputation) {
  const ModelShape g = small_shape();
  const HardwareProfile hw = round_hw();
  Workload w;
  w.avg_context = 100;
  Plan p{/*tp_a=*/1, /*n_a=*/2, /*tp_e=*/1, /*n_e=*/4, /*m=*/2, /*b_a=*/16};
  const StageTimes t = stage_times(g, hw, hw, p, w);

  const double qkv = 1024.0 * (1024 + 2 * 256) * 2 + 16 * (1024 + 1536) * 2;
  const double kv_read = 16 * 100 * 2 * 256 * 2;
  const double o_proj = 1024.0 * 1024 * 2 + 16 * (1024 + 1024) * 2;
  const double norms = 4 * 16 * 1024 * 2;
  const double gate = 1024 * 8 * 2;
  EXPECT_NEAR(t.attn, (qkv + kv_read + o_proj + norms + gate) / 1e12, 1e-12);

  // b_e = n_a b_a K / E = 2 * 16 * 2 / 8 = 8 tokens, 2 experts per node.
  EXPECT_DOUBLE_EQ(t.b_e, 8);
  const double one_expert = 3.0 * 1024 * 4096 * 2 + 8 * (2 * 1024 + 3 * 4096) * 2;
  EXPECT_NEAR(t.expert, 2 * one_expert / 1e12, 1e-12);

  EXPECT_NEAR(t.a2e_busy, 16 * 2 * 1024 * 2 / 1e10, 1e-12);  // b_a K h bytes
  EXPECT_NEAR(t.e2a_busy, 2 * 8 * 1024 * 2 / 1e10, 1e-12);   // experts/node * b_e * h bytes
  EXPECT_EQ(t.a2e_latency, 0);
  EXPECT_NEAR(t.head, (1024.0 * 1000 * 2 + 16 * 1024 * 2) / 1e12, 1e-12);
}

TEST(PerfModel, IterationTimeIsEq5WhenCommunicationIsHidden) {
  StageTimes t;
  t.attn = 1.0;
  t.expert = 0.9;
  t.a2e_busy = t.e2a_busy = 0.2;
  t.a2e_latency = t.e2a_latency = 0.05;
  t.head = 0.1;
  const std::vector<bool> moe(10, true);
  for (int m : {3, 4}) {
    Plan p;
    p.m = m;
    const double T_a = 1.0, T_e = 0.9, T_c = 0.25, T_f = 1.0, L = 10;
    const double eq5 = (T_a + T_e + 2 * T_c) + T_f * (m * L - 1);
    EXPECT_NEAR(iteration_time(t, p, moe), eq5 + m * t.head, 1e-12) << "m=" << m;
  }
  // m = 2 cannot hide T_a + T_e + 2 T_c = 2.4 behind 2 T_f = 2: the round trip sets the cycle.
  Plan p;
  p.m = 2;
  EXPECT_NEAR(iteration_time(t, p, moe), 9 * 2.4 + 2.4 + 1.0 + 2 * 0.1, 1e-12);
}

TEST(PerfModel, MemoryFollowsEq8) {
  const ModelShape g = testing::shipped_model("mixtral-8x22b");
  const HardwareProfile h = testing::shipped_hw("H20");
  Workload w;
  w.avg_context = 650;
  Plan p{2, 4, 1, 8, 3, 100};
  const Estimate e = estimate(g, h, h, p, w);
  // 4 m b_a s h L / g bytes of KV per tp_a GPUs: kv_dim = h / g = 1024 here.
  EXPECT_NEAR(e.attn_kv, 4.0 * 3 * 100 * 650 * 6144 * 56 / 6 / 2, 1);
  EXPECT_NEAR(e.attn_weights, 2 * g.attention_params() / 2, 1);
  // One expert of every layer per node: 56 * 3 * 6144 * 16384 * 2 bytes = 33.8 GB (reference section 3).
  EXPECT_NEAR(e.expert_weights / 1e9, 33.8, 0.1);
  // Mixtral-8x22B is 141B parameters (Table 4), about 39B active (section 2.2).
  EXPECT_NEAR(g.total_params() / 1e9, 141, 1.5);
  EXPECT_NEAR((g.attention_params() + 2 * 56 * g.expert_params()) / 1e9, 39, 1.5);
}

// A profile measured on the planned model is read, not fitted: T_a, T_e and
// the head come from its points (interpolated, and extended past the last).
TEST(PerfModel, MeasuredPointsOfThePlannedModelReplaceTheRates) {
  const ModelShape g = small_shape();
  HardwareProfile h = round_hw();
  h.kind = "measured";
  h.measured_model = "small";
  h.measurements = {{"attention", 1, 100, 1000}, {"attention", 5, 100, 2000},   // at context 100
                    {"attention", 1, 300, 3000}, {"attention", 5, 300, 6000},   // at context 300
                    {"experts", 1, 0, 8000},     {"experts", 3, 0, 12000},      // all 8 experts
                    {"head", 1, 0, 50},          {"head", 5, 0, 90}};
  Plan p;
  p.n_a = 2;
  p.n_e = 2;
  p.b_a = 3;  // b_e = n_a b_a K / E = 1.5
  Workload w;
  w.avg_context = 200;
  const StageTimes t = stage_times(g, h, h, p, w);
  // batch 3: 1500 us at context 100, 4500 us at 300; context 200: 3000 us.
  EXPECT_NEAR(t.attn, 3000e-6, 1e-9);
  // 1.5 tokens per expert: 9000 us for all 8 experts; each node holds half of them.
  EXPECT_NEAR(t.expert, 9000e-6 / 2, 1e-9);
  EXPECT_NEAR(t.head, 70e-6, 1e-9);  // batch 3, halfway from 50 to 90 us
  // Past the last point: along the last segment.
  p.b_a = 9;  // at context 100: 1000 + 8 * 250 = 3000 us; at 300: 3000 + 8 * 750 = 9000 us; at 200: 6000 us
  EXPECT_NEAR(stage_times(g, h, h, p, w).attn, 6000e-6, 1e-9);

  // Another model on the same profile: the fitted rates, not the points.
  ModelShape other = g;
  other.name = "other";
  EXPECT_NEAR(stage_times(other, h, h, p, w).attn, stage_times(other, round_hw(), round_hw(), p, w).attn, 1e-12);
}

TEST(PerfModel, DbrxHas132BParameters) {
  const ModelShape g = testing::shipped_model("dbrx");
  EXPECT_EQ(g.experts, 16);
  EXPECT_EQ(g.top_k, 4);
  EXPECT_NEAR(g.total_params() / 1e9, 132, 1.5);
}

}  // namespace
}  // namespace tandem::planner
