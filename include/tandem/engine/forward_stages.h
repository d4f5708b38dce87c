// The forward pass cut where the ping-pong pipeline needs it, independent of
// where the math runs. forward_pipelined drives these stages per layer and
// micro-batch and moves the routed tokens through an ExpertExecutor; the CPU
// backend (ModelRunner) and the GPU backend (CudaModelRunner) each implement
// them, so both attention-node flavours share one pipeline.
//
// The expert hand-off is in host memory: the executors send over sockets or
// UCX from there. A GPU backend stages through pinned memory (one device->host
// copy of the routed activations and one host->device copy of the combined
// output per layer and micro-batch).
#pragma once

#include <cstdint>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/model_runner.h"

namespace tandem::engine {

// Micro-batch state an ExpertExecutor reads and writes; all null for a layer
// without routed experts. The routing is in host memory; the activations too,
// unless the stages were begun for a device-resident executor.
struct ExpertInputs {
  const float* moe_in = nullptr;     // [n, hidden]
  const int32_t* topk_idx = nullptr;  // [n, top_k]
  const float* topk_w = nullptr;     // [n, top_k]
  float* out = nullptr;              // [n, hidden], zeroed: the experts' weighted sum is added here
};

class ForwardStages {
 public:
  virtual ~ForwardStages() = default;
  virtual const model::ModelConfig& config() const = 0;
  virtual bool layer_is_moe(int64_t layer) const = 0;

  // Takes the micro-batches of one step (valid until logits() returns) and
  // embeds their tokens. `device_exchange`: moe_in and out of attend() are to
  // be device memory (ExpertExecutor::device_resident); FAILED_PRECONDITION
  // where the stages cannot give that.
  virtual Status begin(const std::vector<ForwardBatch>& micro_batches, bool device_exchange) = 0;
  // Micro-batch i through `layer`'s attention, the feed-forward that stays on
  // this side (dense MLP, shared expert) and, on a MoE layer, the router.
  virtual Result<ExpertInputs> attend(int64_t layer, size_t i) = 0;
  // Layer `layer` of micro-batch i is complete (its experts' output is in
  // `out`): fold it into the residual stream.
  virtual Status land(int64_t layer, size_t i) = 0;
  // logits [logits_rows of every micro-batch in order, vocab] on the host.
  virtual Status logits(std::vector<float>& logits) = 0;
  // The same rows split as SplitForwardFn (engine.h) returns them: greedy
  // rows as argmax tokens, the others as packed logits. This default gets
  // every row's logits and splits them on the host; a GPU backend overrides it
  // to keep the greedy rows' logits on the device.
  virtual Status logits_split(const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                              std::vector<int32_t>& tokens);
};

// full [rows, vocab] split as SplitForwardFn returns it: tokens [rows] (the
// argmax where greedy[r], -1 elsewhere) and the rows not greedy packed into
// `logits`. greedy has one entry per row.
void split_logits_rows(const std::vector<float>& full, int64_t vocab, const std::vector<uint8_t>& greedy,
                       std::vector<float>& logits, std::vector<int32_t>& tokens);

// The CPU backend's stages over a ModelRunner (which must outlive them).
class CpuForwardStages final : public ForwardStages {
 public:
  explicit CpuForwardStages(ModelRunner& runner) : runner_(runner) {}
  const model::ModelConfig& config() const override { return runner_.config(); }
  bool layer_is_moe(int64_t layer) const override { return runner_.layer_is_moe(layer); }
  Status begin(const std::vector<ForwardBatch>& micro_batches, bool device_exchange) override;
  Result<ExpertInputs> attend(int64_t layer, size_t i) override;
  Status land(int64_t layer, size_t i) override;
  Status logits(std::vector<float>& logits) override;

 private:
  struct State {
    std::vector<float> hidden, moe_in, moe_out, topk_w;
    std::vector<int32_t> topk_idx;
  };
  ModelRunner& runner_;
  const std::vector<ForwardBatch>* mbs_ = nullptr;
  std::vector<State> state_;
};

}  // namespace tandem::engine
