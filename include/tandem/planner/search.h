// The deployment-plan search (MegaScale-Infer section 4.2, Algorithm 1), widened
// to also choose n_e and n_a directly: for every tensor-parallel degree of both
// node kinds, expert-node count, micro-batch count and attention-node count, the
// largest per-node micro-batch that meets the time-per-output-token SLO and fits
// in memory; plans are ranked by decode throughput per GPU or per unit of cost.
// When nothing fits, the error names the binding constraint.
#pragma once

#include <string>
#include <vector>

#include "tandem/api/deployment.h"
#include "tandem/planner/perf_model.h"

namespace tandem::planner {

enum class Objective { kPerGpu, kPerDollar };

struct SearchOptions {
  double tpot_slo_ms = 150;
  int max_gpus = 0;               // 0: no limit
  double budget_per_hour = 0;     // 0: no limit (price units of the hardware files)
  Objective objective = Objective::kPerGpu;
  int min_micro_batches = 1;
  int max_micro_batches = 4;      // N_m of Algorithm 1 (the paper uses 4)
  int max_attention_nodes = 64;   // the deployment schema's limits
  int max_expert_nodes = 256;
  int64_t max_batch_per_micro_batch = 4096;  // b_a upper end of the search
  Workload workload;
  size_t keep = 10;               // plans returned
};

struct Candidate {
  Plan plan;
  Estimate est;
};

struct SearchResult {
  std::vector<Candidate> plans;  // best first
  int64_t evaluated = 0;         // plans whose batch was searched
};

// Objective value of a candidate under `o`.
double score(const Estimate& e, Objective o);

Result<SearchResult> search(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he,
                            const SearchOptions& o);

// The best colocated deployment (perf_model.h) on `hw` under the same SLO and
// memory limits; not_found-style error when none fits.
Result<ColocatedEstimate> best_colocated(const ModelShape& g, const HardwareProfile& hw, const SearchOptions& o);

// The deployment YAML of a plan: cluster shape, batch limits and KV blocks sized
// for it, and the informational `plan:` section.
struct DeploymentInputs {
  std::string model_path;
  std::string attention_hw, expert_hw;
  std::string device = "cuda";
  int kv_block_size = 16;
};
api::DeploymentConfig to_deployment(const Candidate& c, const SearchOptions& o, const DeploymentInputs& in);

}  // namespace tandem::planner
