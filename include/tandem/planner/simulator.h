// A discrete-event simulator of one decode iteration of the ping-pong pipeline:
// micro-batch by micro-batch and layer by layer, with every attention node,
// every expert node and the NIC of each as a resource. Attention nodes run
// their work in the engine's program order (layer by layer, micro-batches in
// order, LM heads after the last layer has landed for all, as
// src/engine/pipeline.cpp does); expert nodes and NICs serve in arrival order.
// It checks the analytic model (perf_model.h) and exports its timeline as a
// Chrome / Perfetto trace.
#pragma once

#include <string>
#include <vector>

#include "tandem/planner/perf_model.h"

namespace tandem::planner {

struct TraceEvent {
  std::string name;
  int pid = 0;  // 1 attention nodes, 2 attention NICs, 3 expert nodes, 4 expert NICs
  int tid = 0;  // node index
  double start = 0, duration = 0;  // seconds
};

struct SimResult {
  double t_total = 0;           // seconds, first attention start to last LM head end
  double attention_busy = 0;    // busy fraction of attention node 0 over t_total
  double expert_busy = 0;       // busy fraction of expert node 0
  int64_t events = 0;           // events processed
  std::vector<TraceEvent> trace;  // filled when asked for

  // Chrome trace-event JSON (chrome://tracing, ui.perfetto.dev).
  std::string chrome_trace_json() const;
};

struct SimOptions {
  bool record_trace = false;
  // Per expert node, a factor on its expert time and E2A bytes (routing skew:
  // 1.2 = 20% more tokens than the uniform share). Empty: uniform, the analytic
  // model's assumption. The closed form cannot express this; the simulator can.
  std::vector<double> expert_load;
};

SimResult simulate(const Plan& p, const StageTimes& t, const std::vector<bool>& layer_is_moe,
                   const SimOptions& options = {});

}  // namespace tandem::planner
