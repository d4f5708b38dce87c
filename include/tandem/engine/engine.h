// Single-process generation: continuous batching over a paged KV cache, prefill in
// chunks bounded by max_batch_tokens, batched decode, seeded sampling. This is the
// reference the disaggregated cluster must reproduce token for token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/expert_executor.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_runner.h"
#include "tandem/engine/penalties.h"
#include "tandem/kernels/cpu.h"
#include "tandem/model/guided.h"

namespace tandem::engine {

// Most alternatives a request may ask log-probabilities for (OpenAI's chat limit).
inline constexpr int32_t kMaxTopLogprobs = 20;

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 16;
  kernels::cpu::SamplingParams sampling;
  LogitsAdjustments adjust;  // bias and penalties, before sampling (penalties.h)
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;
  // -1: none. 0..kMaxTopLogprobs: each generated token's log-probability and
  // that many most likely alternatives.
  int32_t logprobs = -1;
  // -1: none. 0..kMaxTopLogprobs: the log-probability of every prompt token
  // after the first (given the tokens before it) and that many alternatives:
  // what evaluation harnesses score. The tokens still to score are computed,
  // not taken from the prefix cache (it holds no logits). With them
  // max_tokens may be 0 (score only).
  int32_t prompt_logprobs = -1;
  // Lower is served first (vLLM's convention); equal priorities in arrival
  // order. A waiting request preempts running ones of a strictly higher
  // value when the batch or the KV cache is full.
  int32_t priority = 0;
  // Set: the output is held to this grammar (model/guided.h). Tokens that
  // would leave it are masked out before sampling (log-probabilities stay the
  // model's); the stop tokens are allowed only where the text is complete,
  // and the sequence ends (kStop) as soon as nothing may follow. Shared by
  // the sequences that use the same grammar.
  std::shared_ptr<model::TokenGuide> guide;
};

// A generated token's log-probability under the model's distribution (the
// log-softmax of its logits before temperature, top-k and top-p: what the
// model says, whatever the sampler then did), and the most likely tokens with
// theirs, most likely first (ties: lower id first).
struct TokenLogprobs {
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};
// Fills `out` for `token` from one row of logits [vocab].
void token_logprobs(const float* logits, int64_t vocab, int32_t token, int32_t top, TokenLogprobs& out);

enum class FinishReason { kLength, kStop };

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens (a stop token is included)
  FinishReason finish = FinishReason::kLength;
  std::vector<TokenLogprobs> logprobs;  // one per token when the request asked for them
  // With prompt_logprobs: one per prompt token from the second on (entry i is prompt token i + 1's).
  std::vector<TokenLogprobs> prompt_logprobs;
};

// One forward step: logits [logits_rows, vocab] for a batch whose slots index
// the engine's KV cache; a GPU runner plugs in here in place of the CPU forward.
using ForwardFn = std::function<Status(const ForwardBatch& batch, std::vector<float>& logits)>;
// The same step with its logits rows split by how the engine samples them: a
// row with greedy[r] set comes back only as its argmax token, in tokens[r]
// (lowest id among ties, as greedy sampling picks); the other rows come back
// as logits packed in row order, [rows not greedy, vocab]. A GPU backend so
// keeps the logits of greedy rows on the device (600 KB a row for a 150k
// vocabulary in FP32). split_logits_rows (forward_stages.h) is the reference.
using SplitForwardFn = std::function<Status(const ForwardBatch& batch, const std::vector<uint8_t>& greedy,
                                            std::vector<float>& logits, std::vector<int32_t>& tokens)>;

struct EngineOptions {
  int64_t num_blocks = 512;
  int64_t block_size = 16;
  int64_t max_batch_tokens = 2048;
  size_t max_kv_bytes = size_t{8} << 30;
  int micro_batches = 1;  // ping-pong micro-batches per step (m)
  // Reuse cached KV blocks of earlier prompts' shared prefixes (scheduler.h),
  // also across generate() calls.
  bool prefix_caching = true;
  // Set: every step runs through it (a GPU runner whose device cache has the
  // shape above) and the engine keeps only the block bookkeeping of its cache.
  ForwardFn forward{};
  // Set (with or without `forward`): every step runs through it instead.
  SplitForwardFn forward_split{};
};

struct EngineStats {
  int64_t prompt_tokens = 0;
  double prompt_seconds = 0;  // wall time of steps that carried prefill tokens
  int64_t decode_tokens = 0;
  double decode_seconds = 0;  // wall time of decode-only steps
};

// Checks a request against the model and a cache of num_blocks x block_size:
// INVALID_ARGUMENT naming the field, RESOURCE_EXHAUSTED if it can never fit.
Status validate_request(const model::ModelConfig& config, const GenerationRequest& request, int64_t num_blocks,
                        int64_t block_size);

// The per-sequence random stream: same seed, same draws, on every backend.
class SamplerRng {
 public:
  explicit SamplerRng(uint64_t seed) : state_(seed) {}
  float next_uniform();  // [0, 1) with 24 random bits

 private:
  uint64_t state_;
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const model::ModelConfig& config,
                                                const model::ModelWeights& weights, const EngineOptions& options);

  using TokenCallback = std::function<void(size_t request_index, int32_t token)>;
  // Runs every request to completion; on_token is called as each token is sampled.
  Result<std::vector<GenerationResult>> generate(const std::vector<GenerationRequest>& requests,
                                                 const TokenCallback& on_token = {});

  const EngineStats& stats() const { return stats_; }
  // Runs the experts through `experts` (not owned) instead of in this process.
  void set_expert_executor(ExpertExecutor* experts) { experts_ = experts; }
  KvCache& kv_cache() { return *cache_; }

 private:
  Engine(const model::ModelConfig& config, const model::ModelWeights& weights, const EngineOptions& options,
         std::unique_ptr<KvCache> cache);

  const model::ModelConfig& config_;
  EngineOptions options_;
  std::unique_ptr<KvCache> cache_;
  ModelRunner runner_;
  LocalExpertExecutor local_experts_;
  ExpertExecutor* experts_;
  EngineStats stats_;
};

}  // namespace tandem::engine
