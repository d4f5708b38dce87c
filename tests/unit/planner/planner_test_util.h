// Shared fixtures of the planner tests: the shipped hardware profiles and model
// configs, and a round-number profile for hand-computed cases.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tandem/planner/hardware.h"
#include "tandem/planner/perf_model.h"

namespace tandem::planner::testing {

inline std::string source_path(const std::string& rel) { return std::string(TANDEM_SOURCE_DIR) + "/" + rel; }

inline HardwareProfile shipped_hw(const std::string& name) {
  auto h = HardwareProfile::find(name, source_path("configs/hardware"));
  EXPECT_TRUE(h.is_ok()) << h.status().to_string();
  return h.is_ok() ? *h : HardwareProfile{};
}

inline ModelShape shipped_model(const std::string& dir) {
  auto g = ModelShape::load(source_path("configs/models/" + dir));
  EXPECT_TRUE(g.is_ok()) << g.status().to_string();
  return g.is_ok() ? *g : ModelShape{};
}

// 1000 TFLOP/s, 1000 GB/s, 10 GB/s NIC, every efficiency 1 and every latency
// and overhead 0: decode kernels are memory-bound and times are bytes / 1e12.
inline HardwareProfile round_hw() {
  HardwareProfile h;
  h.name = "ROUND";
  h.kind = "spec-derived";
  h.source = "test";
  h.peak_tflops = 1000;
  h.compute_efficiency = 1;
  h.layer_overhead_us = 0;
  h.memory_gb = 100;
  h.memory_bw_gbps = 1000;
  h.memory_efficiency = 1;
  h.memory_usable_fraction = 1;
  h.interconnect_gbps = 100;
  h.interconnect_latency_us = 0;
  h.nic_gbps = 10;
  h.nic_latency_us = 0;
  h.nic_per_message_us = 0;
  h.nic_efficiency = 1;
  h.price_per_hour = 1;
  return h;
}

// h 1024, h' 4096, 2 layers, 8 experts top-2, 8 query / 2 KV heads of 128, vocab 1000.
inline ModelShape small_shape() {
  ModelShape g;
  g.name = "small";
  g.hidden = 1024;
  g.expert_ffn = 4096;
  g.layers = 2;
  g.experts = 8;
  g.top_k = 2;
  g.heads = 8;
  g.kv_heads = 2;
  g.head_dim = 128;
  g.vocab = 1000;
  g.layer_is_moe = {true, true};
  return g;
}

}  // namespace tandem::planner::testing
