// Continuous batching over a paged KV cache. Requests arrive and are cancelled
// from any thread; step() (one thread) admits waiting sequences while their
// prompts fit in the cache, builds one forward batch of at most max_batch_tokens
// (chunked prefill plus one decode token per running sequence), runs it and
// samples. A decode that finds the cache full preempts the least urgent
// running sequence, of equal urgency the latest to arrive (its blocks are
// freed and it is recomputed later), so no
// request is lost and outputs do not change. With prefix caching a sequence is
// admitted holding the cached blocks of its longest whole-block prefix (a
// shared system prompt, an earlier turn of the chat, its own tokens before a
// preemption) and computes only the rest; every block it fills becomes
// reusable once its forward has succeeded. Sequences are served in
// (priority, arrival) order: a more urgent one is admitted first and, when
// the batch or the cache is full, preempts the least urgent running ones.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/engine.h"

namespace tandem::engine {

using SequenceId = uint64_t;

struct SequenceCallbacks {
  std::function<void(int32_t token)> on_token;
  // Called once, last: status is OK with a finish reason, or the error that ended it.
  std::function<void(const Status& status, FinishReason reason)> on_finish;
  // With GenerationRequest::logprobs >= 0: called just before on_token with
  // that token's log-probabilities.
  std::function<void(const TokenLogprobs& logprobs)> on_logprobs = {};
  // With GenerationRequest::prompt_logprobs >= 0: prompt token `index`'s
  // log-probabilities, for index 1, 2, ... in order, each once (also when the
  // sequence is preempted and recomputed), all before its first token.
  std::function<void(int64_t index, const TokenLogprobs& logprobs)> on_prompt_logprobs = {};
};

struct SchedulerOptions {
  int64_t max_running_sequences = 64;
  int64_t max_batch_tokens = 2048;
  int micro_batches = 1;
  bool prefix_caching = true;
  // Logits rows a step may carry for prompt log-probabilities (each a row of
  // vocab floats brought to the host): a long prompt asking for them is
  // prefilled in chunks of at most this many tokens.
  int64_t max_prompt_logprob_rows = 512;
  ForwardFn forward{};  // set: replaces the pipelined CPU forward (engine.h)
  SplitForwardFn forward_split{};  // set: replaces both (engine.h)
};

struct SchedulerStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t free_blocks = 0;
  int64_t preemptions = 0;
  int64_t prefix_lookup_tokens = 0;  // tokens of admitted sequences looked up in the prefix cache
  int64_t prefix_hit_tokens = 0;     // of those, found cached (not computed again)
  int64_t cached_blocks = 0;         // blocks whose content can be reused now
  EngineStats tokens;
};

class Scheduler {
 public:
  // All references must outlive the scheduler.
  Scheduler(const model::ModelConfig& config, ModelRunner& runner, KvCache& cache, ExpertExecutor& experts,
            const SchedulerOptions& options);
  ~Scheduler();

  // Validates and queues a request (thread-safe). INVALID_ARGUMENT names the field;
  // a request that can never fit in the cache is RESOURCE_EXHAUSTED.
  Result<SequenceId> submit(GenerationRequest request, SequenceCallbacks callbacks);
  // Ends a sequence at the next step and frees its blocks (thread-safe; unknown ids are ignored).
  void cancel(SequenceId id);
  // Runs one step; returns false when there was nothing to do. An error here is
  // fatal for the step's sequences (they are finished with it) but not for the scheduler.
  bool step();
  SchedulerStats stats() const;

 private:
  struct Seq;
  Status validate(const GenerationRequest& r) const;
  void finish(Seq& s, const Status& st, FinishReason reason);
  void admit();
  void preempt(Seq& victim);
  // (priority, arrival) order: the order of admission, and of the budget within a step.
  static bool serves_before(const Seq& a, const Seq& b);
  // Preempts the least urgent running sequence (running_.back()) back into waiting_.
  void preempt_last();
  // Inserts `s` into waiting_ or running_ at its place in that order.
  template <typename List>
  static void insert_in_order(List& list, std::unique_ptr<Seq> s);
  Status check_step_output(size_t rows) const;
  Status apply_guide(const Seq& s, std::vector<float>& logits);

  const model::ModelConfig& config_;
  ModelRunner& runner_;
  KvCache& cache_;
  ExpertExecutor& experts_;
  SchedulerOptions options_;

  mutable std::mutex mu_;                    // guards incoming_, cancelled_, next_id_, stats mirrors
  std::deque<std::unique_ptr<Seq>> incoming_;
  std::vector<SequenceId> cancelled_;
  SequenceId next_id_ = 1;
  int64_t waiting_count_ = 0, running_count_ = 0;

  // Owned by the step thread.
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;  // in (priority, arrival) order, as waiting_
  int64_t preemptions_ = 0;  // guarded by mu_
  int64_t prefix_lookup_tokens_ = 0, prefix_hit_tokens_ = 0;  // guarded by mu_
  EngineStats tokens_;
  std::vector<float> logits_, scratch_, adjusted_;
  std::vector<std::pair<int32_t, float>> stop_logits_;  // apply_guide
  std::vector<uint8_t> greedy_;    // per logits row, for forward_split
  std::vector<int32_t> argmax_;    // its greedy rows' tokens
  TokenLogprobs logprobs_;
};

}  // namespace tandem::engine
