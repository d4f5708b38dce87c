// Hardware profiles for the deployment planner: what one GPU (or CPU socket) of
// a node kind can do, read from configs/hardware/*.yaml. A profile is either
// spec-derived (vendor datasheet numbers times assumed efficiencies) or measured
// on a machine by `tandem profile`; the planner treats both the same way.
// Parsing is strict: an unknown key or a wrong type is refused with the file
// and the key path.
#pragma once

#include <string>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::planner {

struct HardwareProfile {
  std::string source_file;  // file it came from, for messages
  std::string name;         // "H20"
  std::string kind;         // "spec-derived" | "measured"
  std::string device = "cuda";  // backend a deployment on it uses: cuda | cpu
  std::string source;       // where the numbers come from

  // compute
  double peak_tflops = 0;          // dense BF16 tensor-core peak, 1e12 FLOP/s
  double compute_efficiency = 0.7; // fraction of peak a large GEMM reaches
  double layer_overhead_us = 10;   // fixed cost per layer and micro-batch (launches, small ops)

  // memory
  double memory_gb = 0;             // 1e9 bytes
  double memory_bw_gbps = 0;        // 1e9 bytes/s
  double memory_efficiency = 0.8;   // fraction of peak a streaming kernel reaches
  double memory_usable_fraction = 0.9;  // the rest: activations, allocator, runtime context

  // scale-up interconnect between the GPUs of one server (tensor parallelism)
  std::string interconnect = "NVLink";
  double interconnect_gbps = 0;  // per GPU, per direction
  double interconnect_latency_us = 3;
  int gpus_per_node = 8;         // M_a / M_e of Algorithm 1: largest TP degree

  // scale-out network, the share of NIC bandwidth of one GPU (M2N traffic)
  double nic_gbps = 0;           // per GPU, per direction
  double nic_latency_us = 10;    // one-way, first byte
  double nic_per_message_us = 2; // per destination of a fan-out (posting, completion)
  double nic_efficiency = 0.8;   // fraction of line rate reached at the message sizes of M2N

  // price
  double price_per_hour = 0;     // per GPU, in the unit of --budget (see price_source)
  std::string price_source;

  // Measured points `tandem profile` recorded, and the model they were taken
  // on (ModelShape::name). Planning that model, the planner interpolates them
  // for T_a and T_e instead of the fitted rates above (docs/planner.md).
  std::string measured_model;
  struct Point {
    std::string what;  // attention | experts | head | m2n
    double x = 0, y = 0, us = 0;
  };
  std::vector<Point> measurements;

  double flops() const { return peak_tflops * 1e12 * compute_efficiency; }
  double mem_bw() const { return memory_bw_gbps * 1e9 * memory_efficiency; }
  double usable_bytes() const { return memory_gb * 1e9 * memory_usable_fraction; }
  double nic_bw() const { return nic_gbps * 1e9 * nic_efficiency; }
  double interconnect_bw() const { return interconnect_gbps * 1e9; }

  static Result<HardwareProfile> from_yaml(const std::string& text, const std::string& source);
  static Result<HardwareProfile> from_file(const std::string& path);
  // "H20" -> <dir>/h20.yaml; a value with a '/' or ending in .yaml is a path.
  static Result<HardwareProfile> find(const std::string& name_or_path, const std::string& dir);
  std::string to_yaml() const;
};

}  // namespace tandem::planner
