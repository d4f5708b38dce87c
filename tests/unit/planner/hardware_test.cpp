#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "planner_test_util.h"

namespace tandem::planner {
namespace {

using testing::source_path;

TEST(Hardware, ShippedProfilesLoadAndSayWhereTheirNumbersComeFrom) {
  for (const char* name : {"A800", "H800", "H20", "L40S", "H100", "H200"}) {
    auto h = HardwareProfile::find(name, source_path("configs/hardware"));
    ASSERT_TRUE(h.is_ok()) << h.status().to_string();
    EXPECT_EQ(h->name, name);
    EXPECT_EQ(h->kind, "spec-derived");
    EXPECT_FALSE(h->source.empty());
    EXPECT_FALSE(h->price_source.empty());
    EXPECT_GT(h->peak_tflops, 0);
    EXPECT_GT(h->memory_bw_gbps, 0);
    EXPECT_GT(h->nic_gbps, 0);
    EXPECT_GT(h->price_per_hour, 0);
  }
  // The paper's Table 3 numbers, where it has them.
  auto h20 = testing::shipped_hw("H20");
  EXPECT_EQ(h20.peak_tflops, 148);
  EXPECT_EQ(h20.memory_gb, 96);
  EXPECT_EQ(h20.memory_bw_gbps, 4096);
  EXPECT_EQ(h20.price_per_hour, 1.85);
  auto l40s = testing::shipped_hw("L40S");
  EXPECT_EQ(l40s.peak_tflops, 362);
  EXPECT_EQ(l40s.memory_bw_gbps, 864);
  EXPECT_EQ(l40s.price_per_hour, 1.08);
}

TEST(Hardware, RoundTripsThroughYaml) {
  HardwareProfile h = testing::shipped_hw("H200");
  h.kind = "measured";
  h.measurements.push_back({"experts", 64, 0, 812.5});
  auto back = HardwareProfile::from_yaml(h.to_yaml(), "rt.yaml");
  ASSERT_TRUE(back.is_ok()) << back.status().to_string() << "\n" << h.to_yaml();
  EXPECT_EQ(back->to_yaml(), h.to_yaml());
  ASSERT_EQ(back->measurements.size(), 1u);
  EXPECT_EQ(back->measurements[0].us, 812.5);
}

void expect_refused(const std::string& yaml, const std::string& key_path, const std::string& what = "") {
  auto h = HardwareProfile::from_yaml(yaml, "bad.yaml");
  ASSERT_FALSE(h.is_ok()) << yaml;
  const std::string& m = h.status().message();
  EXPECT_NE(m.find("bad.yaml"), std::string::npos) << m;
  EXPECT_NE(m.find(key_path), std::string::npos) << m;
  if (!what.empty()) {
    EXPECT_NE(m.find(what), std::string::npos) << m;
  }
}

TEST(Hardware, RefusesBadFilesWithKeyPath) {
  std::ifstream in(source_path("configs/hardware/h20.yaml"));
  const std::string ok((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(HardwareProfile::from_yaml(ok, "ok.yaml").is_ok());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = ok;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  expect_refused(with("bf16_tflops:", "bf16_tflop:"), "compute.bf16_tflop", "unknown key");
  expect_refused(with("bf16_tflops: 148", "bf16_tflops: fast"), "compute.bf16_tflops", "expected a number");
  expect_refused(with("bf16_tflops: 148", "bf16_tflops: -1"), "compute.bf16_tflops", "must be in");
  expect_refused(with("gpus_per_node: 8", "gpus_per_node: 2.5"), "interconnect.gpus_per_node", "integer");
  expect_refused(with("kind: spec-derived", "kind: guessed"), "kind", "spec-derived or measured");
  expect_refused(with("efficiency: 0.7", "efficiency: 1.5"), "compute.efficiency", "(0, 1]");
  expect_refused("name: X\nkind: measured\nsource: s\n", "compute", "required");
  expect_refused(ok + "colour: green\n", "colour", "unknown key");
  expect_refused("name: [\n", "not valid YAML");
  expect_refused(ok + "measurements: [{what: gpu, us: 1}]\n", "measurements[0].what", "attention, experts, head or m2n");
}

TEST(Hardware, FindNamesTheKnownProfiles) {
  auto h = HardwareProfile::find("B300", source_path("configs/hardware"));
  ASSERT_FALSE(h.is_ok());
  EXPECT_NE(h.status().message().find("h20"), std::string::npos) << h.status().message();
  EXPECT_TRUE(HardwareProfile::find("h800", source_path("configs/hardware")).is_ok());
  EXPECT_TRUE(HardwareProfile::find(source_path("configs/hardware/l40s.yaml"), "/nonexistent").is_ok());
}

}  // namespace
}  // namespace tandem::planner
