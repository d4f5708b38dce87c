// The forward pass on a GPU: ModelRunner's math, op for op, over the CUDA
// kernels (tandem/kernels/cuda.h), in FP32 or in BF16 (weights, activations and
// KV cache in BF16, accumulation in FP32, router and LM-head logits in FP32),
// with the weights and the paged KV cache in device memory. Only the batch description goes up per step and only
// the logits come back (with forward_split, only the sampled rows' logits: a
// greedy row's argmax is taken on the device and comes back as one token). It is the GPU twin the CPU runner is checked against
// (tests/unit/cuda/cuda_runner_test.cpp), and it backs the GPU flavours of the
// cluster's nodes:
//   - colocated (one process, every expert): forward();
//   - attention node (weights loaded attention_side, no experts): stages(), the
//     ping-pong pipeline's stages, which hand the routed tokens over in pinned
//     host memory;
//   - expert node (a slice of the experts, no attention): experts().
//
// Supported now: Mixtral- and Qwen3-MoE-style models (no attention biases, no
// gated shared expert); the others are refused with UNIMPLEMENTED naming the
// missing piece. Built only where nvcc is (TANDEM_HAVE_CUDA). A runner is used
// by one thread at a time, on that thread's current device and stream.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"
#include "tandem/engine/forward_stages.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_runner.h"
#include "tandem/model/config.h"
#include "tandem/model/weights.h"

namespace tandem::engine {

// Makes the calling thread use the GPU of node slot `slot`: the visible
// devices are dealt round-robin, so nodes share a GPU when there are more
// nodes than GPUs. Returns the ordinal; UNAVAILABLE when no GPU can be used.
// CUDA's current device is per thread: every thread that drives a runner calls
// this before its first CUDA call.
Result<int> use_cuda_device(int slot);

enum class ExpertGemm {
  // Three cuBLAS GEMMs per expert with rows (kernels::cuda::grouped_swiglu_host_offsets).
  kPerExpert,
  // Every expert's gate/up in one grouped-batched cuBLAS call, then all downs
  // in another (kernels::cuda::grouped_swiglu_batched).
  kBatched,
  // Our weight-streaming kernel with the routing left on the device
  // (kernels::cuda::grouped_swiglu_device) when experts get few rows (at most
  // kDeviceExpertRowsPerExpert on average), per-expert GEMMs otherwise. No
  // host synchronisation per layer, so with cuda_graphs a decode step's
  // layers are captured whole (attention, router and experts), not only
  // their attention.
  kDevice,
};
// "per-expert", "batched", "device".
std::string_view expert_gemm_name(ExpertGemm g);
Result<ExpertGemm> parse_expert_gemm(std::string_view name);
// The average rows per expert up to which kDevice uses its own kernel: the
// kernel's row tile, so each expert's weights are read about once.
inline constexpr int64_t kDeviceExpertRowsPerExpert = 8;

struct CudaRunnerOptions {
  DType dtype = DType::kF32;  // kF32 or kBF16
  // Replay each layer's attention of decode steps as a CUDA graph (captured on
  // the second step of a shape); off by default until measured to pay.
  bool cuda_graphs = false;
  // How a MoE layer's experts run; per-expert cuBLAS GEMMs by default until
  // the others are measured to pay (cuda_kernels_bench, generate_bench).
  ExpertGemm experts = ExpertGemm::kPerExpert;
};

class CudaModelRunner {
 public:
  // Uploads `weights` and allocates a KV cache of `kv` on the current device:
  // RESOURCE_EXHAUSTED saying how much was asked and how much is free when it
  // does not fit.
  static Result<std::unique_ptr<CudaModelRunner>> create(const model::ModelConfig& config,
                                                         const model::ModelWeights& weights, const KvCacheShape& kv,
                                                         const CudaRunnerOptions& options = {});
  ~CudaModelRunner();

  // An expert node's runner: only the experts `weights` holds, no KV cache.
  static Result<std::unique_ptr<CudaModelRunner>> create_expert_side(const model::ModelConfig& config,
                                                                     const model::ModelWeights& weights,
                                                                     const CudaRunnerOptions& options = {});

  // logits [logits_rows, vocab] on the host, as ModelRunner::forward. The batch's
  // slots and block tables index this runner's device cache, whose blocks the
  // caller hands out (an engine's KvCache of the same shape, unbacked).
  Status forward(const ForwardBatch& batch, std::vector<float>& logits);
  // The same with the rows split as SplitForwardFn (engine.h): greedy rows'
  // argmax computed on the device, only the other rows' logits copied back.
  Status forward_split(const ForwardBatch& batch, const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                       std::vector<int32_t>& tokens);

  // The pipeline stages of an attention node (forward_pipelined); valid as
  // long as the runner.
  ForwardStages& stages();

  // out [n, hidden] = Σ over the chosen experts this runner holds of
  // w·expert(x), for x [n, hidden] routed by ids/w [n, top_k]; all host
  // memory, as ModelRunner::experts but overwriting `out`. The caller has
  // checked layer and ids.
  Status experts(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w, float* out);
  // The same with x [n, hidden] FP32 already on the device (ids and w on the
  // host): the sum stays on the device, FP32, in a buffer of the runner that
  // is valid until its next call; enqueued on the current stream.
  Result<const float*> experts_device(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w);

  size_t device_bytes() const;  // weights + KV cache
  // CUDA graphs replayed so far, one per layer and step (0 with cuda_graphs
  // off, or after a failed capture turned them off); of these, how many held
  // the whole layer rather than its attention only.
  uint64_t graph_launches() const;
  uint64_t whole_layer_graph_launches() const;
  // MoE layers whose experts the host ran through the device-offset kernel
  // (ExpertGemm::kDevice); a replayed graph runs it without counting here.
  uint64_t device_expert_layers() const;

  struct Impl;  // the FP32 or BF16 implementation (cuda_runner.cpp)

 private:
  explicit CudaModelRunner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::engine
