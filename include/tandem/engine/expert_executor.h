// Where the experts of a MoE layer run. The attention side hands over the
// routed tokens of one micro-batch and collects the combined expert output
// later, so it can run the next micro-batch's attention in between (ping-pong).
// LocalExpertExecutor runs them in this process; the cluster's remote executor
// sends them over the M2N transport to the expert nodes.
#pragma once

#include <cstdint>

#include "tandem/common/status.h"
#include "tandem/engine/forward_stages.h"
#include "tandem/engine/model_runner.h"

namespace tandem::engine {

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  // Starts the experts of `layer` for micro-batch `mb`: moe_in [n, hidden],
  // routing [n, top_k]. The inputs must stay valid until wait() returns; the
  // weighted sum of the chosen experts' outputs is added into out [n, hidden].
  virtual Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                          const float* topk_w, float* out) = 0;
  // Blocks until the dispatch of (layer, mb) has landed in its `out`.
  virtual Status wait(int64_t layer, int mb) = 0;
  // Forgets every dispatch not yet waited for (after a failed step), so that
  // nothing of it can land in a later step.
  virtual void abort() {}
  // True for a GPU data plane: moe_in and out of dispatch() are then FP32
  // device memory of the calling thread's device, and the output is added on
  // the calling thread's stream (routing stays in host memory).
  virtual bool device_resident() const { return false; }
};

// Runs the experts synchronously with a ModelRunner that holds them.
class LocalExpertExecutor : public ExpertExecutor {
 public:
  explicit LocalExpertExecutor(ModelRunner& runner) : runner_(runner) {}
  Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                  const float* topk_w, float* out) override {
    runner_.experts(layer, moe_in, n, topk_idx, topk_w, out);
    return Status::ok();
  }
  Status wait(int64_t, int) override { return Status::ok(); }

 private:
  ModelRunner& runner_;
};

// The tokens (rows of topk_idx [n, k]) that chose at least one expert in
// [first, last): what one expert node must be sent, in order.
std::vector<int32_t> rows_routed_to(const int32_t* topk_idx, int64_t n, int64_t k, int64_t first, int64_t last);

// Splits a batch into at most m micro-batches of whole sequences with balanced
// token counts; logits rows keep their order across the split.
std::vector<ForwardBatch> split_micro_batches(const ForwardBatch& batch, int m);

// Where an attention node's forward time goes, as its host sees it (GPU work
// is counted where the host waits for it: the staging copies of attend and
// the logits). Seconds, summed over steps.
struct PipelineTimes {
  int64_t steps = 0;
  double attend_s = 0;    // attention, router, local FFN (and GPU staging) of every micro-batch
  double dispatch_s = 0;  // handing routed tokens to the expert executor
  double wait_s = 0;      // idle: waiting for expert output that has not arrived
  double land_s = 0;      // folding expert output into the residual stream
  double head_s = 0;      // embedding set-up, final norm, LM head, logits back
  double total_s = 0;     // whole steps
  PipelineTimes& operator+=(const PipelineTimes& o);
};

// The ping-pong forward: for every layer, micro-batch i's experts run (through
// `experts`) while micro-batch i+1's attention runs in `stages`. logits as
// ModelRunner::forward. `times`, when given, accumulates this step's breakdown.
Status forward_pipelined(ForwardStages& stages, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                         std::vector<float>& logits, PipelineTimes* times = nullptr);
// The same with the logits rows split (SplitForwardFn, engine.h; greedy has
// one entry per logits row of `batch`).
Status forward_pipelined_split(ForwardStages& stages, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                               const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                               std::vector<int32_t>& tokens, PipelineTimes* times = nullptr);
// Same over the CPU backend.
Status forward_pipelined(ModelRunner& runner, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                         std::vector<float>& logits);

}  // namespace tandem::engine
