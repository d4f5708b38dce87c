#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "planner_test_util.h"
#include "tandem/planner/simulator.h"

namespace tandem::planner {
namespace {

TEST(Simulator, HandTraceOfTwoMicroBatches) {
  // m = 2, T_a = 1, T_e = 3, no communication: layer 1 A0 [0,1] A1 [1,2], E0 [1,4] E1 [4,7];
  // layer 2 A0 [4,5] A1 [7,8], E0 [7,10] E1 [10,13]; heads at 13 and 13.5.
  StageTimes t;
  t.attn = 1;
  t.expert = 3;
  t.head = 0.5;
  Plan p;
  p.m = 2;
  SimOptions o;
  o.record_trace = true;
  const SimResult r = simulate(p, t, {true, true}, o);
  EXPECT_DOUBLE_EQ(r.t_total, 14);
  EXPECT_DOUBLE_EQ(iteration_time(t, p, {true, true}), 14);
  EXPECT_EQ(r.trace.size(), 4u + 4u + 4u + 4u + 2u);  // attn, a2e, experts, e2a, heads
}

// The analytic model against the simulator, over a grid of shapes, hardware
// pairs and micro-batch counts (issue 5: within 5% on latency and throughput).
TEST(Simulator, AgreesWithAnalyticModelWithin5Percent) {
  const ModelShape models[] = {testing::shipped_model("mixtral-8x22b"), testing::shipped_model("dbrx"),
                               testing::shipped_model("qwen3-30b-a3b")};
  const std::pair<const char*, const char*> hws[] = {{"H20", "L40S"}, {"A800", "A800"}, {"H800", "H800"}};
  Workload w;
  int cases = 0;
  double worst = 0;
  for (const auto& g : models) {
    for (const auto& [a, e] : hws) {
      const HardwareProfile ha = testing::shipped_hw(a), he = testing::shipped_hw(e);
      for (int m : {1, 2, 3, 4}) {
        for (int n_a : {1, 3, 8}) {
          for (int64_t b_a : {4, 32, 128}) {
            const int n_e = static_cast<int>(std::min<int64_t>(g.experts, 16));
            Plan p{2, n_a, 1, n_e, m, b_a};
            const Estimate est = estimate(g, ha, he, p, w);
            const SimResult sim = simulate(p, est.t, g.layer_is_moe);
            const double err = std::abs(est.t_total - sim.t_total) / sim.t_total;
            worst = std::max(worst, err);
            // Throughput is B / latency in both, so one bound covers both.
            EXPECT_LT(err, 0.05) << g.name << " " << a << "+" << e << " " << p.to_string() << ": analytic "
                                 << est.t_total * 1e3 << " ms, simulated " << sim.t_total * 1e3 << " ms";
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 3 * 3 * 4 * 3 * 3);
  std::printf("worst relative difference over %d cases: %.3f%%\n", cases, worst * 100);
}

// Routing skew, which the closed form does not model: one hot expert node
// slows the whole pipeline towards the latency of a uniformly slower one.
TEST(Simulator, HotExpertNodeSetsThePace) {
  const ModelShape g = testing::shipped_model("mixtral-8x22b");
  const HardwareProfile h = testing::shipped_hw("A800");
  Plan p{2, 2, 1, 8, 3, 298};
  const Estimate est = estimate(g, h, h, p, Workload{});
  const double uniform = simulate(p, est.t, g.layer_is_moe).t_total;
  SimOptions skew;
  skew.expert_load = {1.3, 1, 1, 1, 1, 1, 1, 1};
  const double skewed = simulate(p, est.t, g.layer_is_moe, skew).t_total;
  StageTimes slow = est.t;
  slow.expert *= 1.3;
  slow.e2a_busy *= 1.3;
  EXPECT_NEAR(uniform, est.t_total, 1e-9 * uniform);
  EXPECT_GT(skewed, uniform * 1.1);
  EXPECT_LE(skewed, iteration_time(slow, p, g.layer_is_moe) * (1 + 1e-9));
}

TEST(Simulator, ExportsChromeTrace) {
  const ModelShape g = testing::small_shape();
  const HardwareProfile h = testing::round_hw();
  Plan p{1, 2, 1, 4, 3, 8};
  const Estimate est = estimate(g, h, h, p, Workload{});
  SimOptions o;
  o.record_trace = true;
  const SimResult r = simulate(p, est.t, g.layer_is_moe, o);
  const auto j = nlohmann::json::parse(r.chrome_trace_json());
  ASSERT_TRUE(j.contains("traceEvents"));
  int complete = 0, attn0 = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "X") {
      ++complete;
      EXPECT_GE(e["dur"].get<double>(), 0);
      if (e["pid"] == 1 && e["tid"] == 0) ++attn0;
    }
  }
  // Per layer and micro-batch: 2 attention, 2 A2E, 4 expert, 4 E2A tasks; then 2 x 3 heads.
  EXPECT_EQ(complete, 2 * 3 * (2 + 2 + 4 + 4) + 2 * 3);
  EXPECT_EQ(attn0, 2 * 3 + 3);
}

}  // namespace
}  // namespace tandem::planner
