// `tandem plan` end to end: the binary's table, trace and deployment YAML, the
// latter read back by the real deployment loader.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "planner_test_util.h"
#include "tandem/api/deployment.h"
#include "tandem/planner/hardware.h"

namespace tandem::planner {
namespace {

std::string tandem_bin() {
  const char* b = std::getenv("TANDEM_BIN");
  return b ? b : std::string(TANDEM_BINARY_DIR) + "/src/cli/tandem";
}

// Runs a shell command, returns its exit status and stdout + stderr.
int run(const std::string& cmd, std::string& out) {
  out.clear();
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

class PlanCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(tandem_bin())) GTEST_SKIP() << "no tandem binary at " << tandem_bin();
    dir_ = std::filesystem::temp_directory_path() / ("tandem_plan_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::filesystem::path dir_;
};

TEST_F(PlanCli, WritesADeploymentTheLoaderAcceptsAndATrace) {
  const std::string yaml = (dir_ / "deployment.yaml").string(), trace = (dir_ / "trace.json").string();
  std::string out;
  const int rc = run(tandem_bin() + " plan --model " + testing::source_path("configs/models/dbrx") +
                         " --attention-hw H20 --expert-hw L40S --tpot-slo-ms 150 --gpus 32 --hardware-dir " +
                         testing::source_path("configs/hardware") + " --out " + yaml + " --trace " + trace,
                     out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("tok/s/GPU"), std::string::npos) << out;
  EXPECT_NE(out.find("simulated iteration"), std::string::npos) << out;
  auto d = api::DeploymentConfig::from_file(yaml);
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_TRUE(d->plan.present);
  EXPECT_EQ(d->plan.attention_hw, "H20");
  EXPECT_EQ(d->plan.expert_hw, "L40S");
  EXPECT_LE(d->plan.predicted_tpot_ms, 150);
  EXPECT_LE(d->attention_nodes * d->plan.attention_tp + d->expert_nodes * d->plan.expert_tp, 32);
  std::ifstream t(trace);
  const auto j = nlohmann::json::parse(t, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_GT(j["traceEvents"].size(), 100u);
}

TEST_F(PlanCli, ExplainsAnUnreachableSlo) {
  std::string out;
  const int rc = run(tandem_bin() + " plan --model " + testing::source_path("configs/models/mixtral-8x22b") +
                         " --attention-hw A800 --tpot-slo-ms 1 --hardware-dir " +
                         testing::source_path("configs/hardware") + " --out " + (dir_ / "x.yaml").string(),
                     out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_NE(out.find("TPOT SLO of 1.0 ms is unreachable"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x.yaml"));
}

// `tandem profile` on this machine's CPU backend, and the planner taking the
// measured profile in place of a spec-derived one.
TEST_F(PlanCli, ProfilesTheCpuBackendAndPlansOnTheMeasuredProfile) {
  const std::string model = (dir_ / "tiny").string(), dep = (dir_ / "dep.yaml").string(),
                    prof = (dir_ / "measured.yaml").string(), plan = (dir_ / "plan.yaml").string();
  std::string out;
  ASSERT_EQ(run(tandem_bin() + " make-model --preset tiny-mixtral --seed 1 --out " + model, out), 0) << out;
  std::ofstream(dep) << "model: {path: " << model << "}\ncluster: {attention_nodes: 1, expert_nodes: 2}\n";
  ASSERT_EQ(run(tandem_bin() + " profile --config " + dep + " --reps 2 --out " + prof, out), 0) << out;
  EXPECT_NE(out.find("fitted:"), std::string::npos) << out;
  auto h = HardwareProfile::from_file(prof);
  ASSERT_TRUE(h.is_ok()) << h.status().to_string();
  EXPECT_EQ(h->kind, "measured");
  EXPECT_EQ(h->device, "cpu");
  // attention: 5 batches x 3 contexts; experts: 8 loads; head: 5 batches; m2n: 3 sizes x 3 fan-outs.
  EXPECT_EQ(h->measurements.size(), 15u + 8u + 5u + 9u);
  EXPECT_EQ(h->measured_model, "tiny");
  ASSERT_EQ(run(tandem_bin() + " plan --model " + model + " --attention-hw " + prof + " --tpot-slo-ms 100 --out " +
                    plan,
                out),
            0)
      << out;
  auto d = api::DeploymentConfig::from_file(plan);
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->device, "cpu");
  EXPECT_EQ(d->plan.attention_hw, "measured");
}

}  // namespace
}  // namespace tandem::planner
