// The analytic performance model of a disaggregated deployment, after
// MegaScale-Infer (Zhu et al., 2025, arXiv 2504.02263) section 4: per-micro-batch
// attention time T_a, expert time T_e and communication time T_c from roofline
// costs of the GEMMs of Table 2 and the M2N traffic of Eq. 6; the ping-pong
// conditions of Eq. 1-3; the iteration latency of Eq. 5; the memory limit of
// Eq. 8. docs/planner.md derives each formula and says where we chose.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tandem/model/config.h"
#include "tandem/planner/hardware.h"

namespace tandem::planner {

// The parts of a model the cost model needs, from its config.json.
struct ModelShape {
  std::string name;
  int64_t hidden = 0;       // h
  int64_t expert_ffn = 0;   // h'
  int64_t layers = 0;       // L (all decoder layers)
  int64_t experts = 0;      // E
  int64_t top_k = 0;        // K
  int64_t heads = 0;
  int64_t kv_heads = 0;     // g = heads / kv_heads
  int64_t head_dim = 0;
  int64_t vocab = 0;
  int64_t dense_ffn = 0;    // MLP width of dense layers (they run on attention nodes)
  int64_t shared_ffn = 0;   // shared expert width (runs on attention nodes)
  bool tied_embeddings = false;
  std::vector<bool> layer_is_moe;

  static ModelShape from_config(const model::ModelConfig& c, const std::string& name);
  // Loads DIR/config.json or a config.json path.
  static Result<ModelShape> load(const std::string& dir_or_config);

  int64_t q_dim() const { return heads * head_dim; }
  int64_t kv_dim() const { return kv_heads * head_dim; }
  int64_t moe_layers() const;
  // P_a: every parameter that is not a routed expert (embeddings, attention,
  // router gates, norms, dense MLPs, shared experts, LM head).
  double attention_params() const;
  // Parameters of one routed expert in one layer: gate, up and down projections.
  double expert_params() const { return 3.0 * static_cast<double>(hidden) * static_cast<double>(expert_ffn); }
  double total_params() const { return attention_params() + expert_params() * experts * moe_layers(); }
};

struct Workload {
  double avg_context = 650;  // s: mean tokens in context during decode (prompt + half the output)
  double weight_bytes = 2;   // BF16 weights
  double act_bytes = 2;      // BF16 activations on the wire
  double kv_bytes = 2;       // BF16 KV cache
};

// One deployment: n_a attention nodes of tp_a GPUs, n_e expert nodes of tp_e
// GPUs, m micro-batches of b_a sequences per attention node.
struct Plan {
  int tp_a = 1, n_a = 1, tp_e = 1, n_e = 1, m = 1;
  int64_t b_a = 1;

  int64_t global_batch() const { return b_a * m * n_a; }  // B = b_a m n_a (section 4.2)
  int gpus() const { return tp_a * n_a + tp_e * n_e; }
  int attention_gpus() const { return tp_a * n_a; }
  int expert_gpus() const { return tp_e * n_e; }
  std::string to_string() const;
};

// Per micro-batch and per layer, in seconds.
struct StageTimes {
  double attn = 0;         // T_a: attention node, MoE layer
  double dense_attn = 0;   // attention node, dense layer (attention + local MLP)
  double expert = 0;       // T_e: expert node
  double a2e_busy = 0;     // attention NIC occupancy of one A2E send (all destinations)
  double a2e_latency = 0;  // first-byte latency added in flight
  double e2a_busy = 0;
  double e2a_latency = 0;
  double head = 0;         // final norm + LM head of one micro-batch on an attention node
  double b_e = 0;          // tokens per expert per micro-batch

  double a2e() const { return a2e_busy + a2e_latency; }
  double e2a() const { return e2a_busy + e2a_latency; }
};

struct Estimate {
  StageTimes t;
  double t_f = 0;         // max(T_a, T_e) (section 4.1)
  double t_c = 0;         // max(A2E, E2A) (Eq. 6)
  double bottleneck = 0;  // slowest resource per micro-batch: max(T_a, T_e, NIC occupancies)
  double round_trip = 0;  // T_a + A2E + T_e + E2A: one micro-batch through one layer, no queueing
  double cycle = 0;       // per-layer period of one micro-batch: max(m * bottleneck, round_trip)
  int min_m = 0;          // smallest m with m >= 2 (1 + T_c / T_f) (Eq. 3)
  bool comm_hidden = false;
  double t_total = 0;     // latency of one decode iteration = time per output token (Eq. 5 generalised)
  double tokens_per_s = 0;
  double cost_per_hour = 0;
  double per_gpu = 0;     // tokens/s per GPU
  double per_dollar = 0;  // tokens per unit of price (tokens/s * 3600 / cost per hour)
  // Per GPU, bytes (Eq. 8 and its expert-side twin).
  double attn_weights = 0, attn_kv = 0, attn_capacity = 0;
  double expert_weights = 0, expert_capacity = 0;

  bool fits_memory() const {
    return attn_weights + attn_kv <= attn_capacity && expert_weights <= expert_capacity;
  }
  double attn_headroom() const { return attn_capacity - attn_weights - attn_kv; }
  double expert_headroom() const { return expert_capacity - expert_weights; }
};

// Smallest m that hides communication (Eq. 3): m >= 2 (1 + T_c / T_f).
int min_micro_batches(double t_c, double t_f);

StageTimes stage_times(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he, const Plan& p,
                       const Workload& w);
Estimate estimate(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he, const Plan& p,
                  const Workload& w);
// Iteration latency from stage times alone (used by estimate, and by tests
// against the simulator).
double iteration_time(const StageTimes& t, const Plan& p, const std::vector<bool>& layer_is_moe);

// A colocated deployment of the same model for comparison: one replica on tp
// GPUs of one kind holding attention and all experts (experts sharded over the
// tp GPUs), the whole batch of `batch` sequences in one step, no ping-pong.
struct ColocatedEstimate {
  int tp = 1;
  int64_t batch = 0;
  double t_total = 0, tokens_per_s = 0, per_gpu = 0, per_dollar = 0;
  double weights = 0, kv = 0, capacity = 0;
  bool fits_memory() const { return weights + kv <= capacity; }
};
ColocatedEstimate estimate_colocated(const ModelShape& g, const HardwareProfile& h, int tp, int64_t batch,
                                     const Workload& w);

}  // namespace tandem::planner
