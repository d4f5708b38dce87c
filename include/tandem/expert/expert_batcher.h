// Runs the expert work of all attention nodes on one compute thread, merging
// what is waiting into one grouped GEMM per layer: an expert's weights are then
// read once for the tokens of every sender instead of once per sender, which
// is where disaggregation gets its large expert batches (MegaScale-Infer
// section 3: each expert gathers tokens from all M attention nodes).
//
// The merge is work-conserving: a request never waits for other senders; it
// runs as soon as the thread is free, together with whatever else has arrived
// meanwhile. So a slow or dead attention node delays nobody.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/model_runner.h"

namespace tandem::expert {

// out [n, hidden] = Σ over the node's chosen experts of w·expert(x) (out is
// overwritten): the math of one pass, on whichever device holds the experts.
using ExpertCompute = std::function<Status(int64_t layer, const float* x, int64_t n, const int32_t* ids,
                                           const float* w, float* out)>;

class ExpertBatcher {
 public:
  // On the CPU, over the experts `weights` holds.
  ExpertBatcher(const model::ModelConfig& config, const model::ModelWeights& weights);
  // Through `compute` (a GPU runner), called from the batcher's thread only.
  ExpertBatcher(const model::ModelConfig& config, ExpertCompute compute);
  ~ExpertBatcher();
  ExpertBatcher(const ExpertBatcher&) = delete;
  ExpertBatcher& operator=(const ExpertBatcher&) = delete;

  // out [n, hidden] = Σ over this node's chosen experts of w·expert(x), for the
  // n tokens of x [n, hidden] routed by ids/w [n, top_k]. Blocks until done;
  // callable from any thread. The caller has checked layer and ids. An error
  // of the pass is every merged request's error.
  Status run(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w, float* out);

  struct Stats {
    uint64_t requests = 0;  // run() calls served
    uint64_t launches = 0;  // grouped-GEMM passes they took
    double busy_s = 0;      // wall time of those passes
    // Token slots routed to each expert (index: the model's expert id), every
    // layer summed: how the gate spread the work, hot experts included.
    std::vector<uint64_t> expert_tokens;
  };
  Stats stats() const;

 private:
  struct Request {
    int64_t layer;
    const float* x;
    int64_t n;
    const int32_t* ids;
    const float* w;
    float* out;
    bool done = false;
    Status status;
  };

  void loop();
  // Runs `group` (requests of one layer) as one pass.
  Status run_group(const std::vector<Request*>& group);

  const model::ModelConfig& config_;
  std::vector<uint64_t> expert_tokens_;  // Stats::expert_tokens; guarded by mu_
  std::unique_ptr<engine::ModelRunner> cpu_runner_;  // the CPU flavour's experts
  ExpertCompute compute_;
  std::vector<float> x_, out_, w_;
  std::vector<int32_t> ids_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<Request*> queue_;  // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
  Stats stats_;                 // guarded by mu_
  std::thread thread_;
};

}  // namespace tandem::expert
