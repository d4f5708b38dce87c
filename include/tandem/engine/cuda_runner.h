// The forward pass on a GPU: ModelRunner's math, op for op, over the CUDA
// kernels (tandem/kernels/cuda.h) in FP32, with the weights and the paged KV
// cache in device memory. Only the batch description goes up per step and only
// the logits come back. It is the GPU twin the CPU runner is checked against
// (tests/unit/cuda/cuda_runner_test.cpp); engines and cluster nodes on the GPU
// build on it.
//
// Supported now: Mixtral- and Qwen3-MoE-style models (no attention biases, no
// gated shared expert); the others are refused with UNIMPLEMENTED naming the
// missing piece. Built only where nvcc is (TANDEM_HAVE_CUDA).
#pragma once

#include <memory>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_runner.h"
#include "tandem/model/config.h"
#include "tandem/model/weights.h"

namespace tandem::engine {

class CudaModelRunner {
 public:
  // Uploads `weights` and allocates a KV cache of `kv` on the current device:
  // RESOURCE_EXHAUSTED saying how much was asked and how much is free when it
  // does not fit.
  static Result<std::unique_ptr<CudaModelRunner>> create(const model::ModelConfig& config,
                                                         const model::ModelWeights& weights, const KvCacheShape& kv);
  ~CudaModelRunner();

  // logits [logits_rows, vocab] on the host, as ModelRunner::forward. The batch's
  // slots and block tables index this runner's device cache, whose blocks the
  // caller hands out (an engine's KvCache of the same shape, unbacked).
  Status forward(const ForwardBatch& batch, std::vector<float>& logits);

  size_t device_bytes() const;  // weights + KV cache

 private:
  struct Impl;
  explicit CudaModelRunner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::engine
