#include "tandem/engine/engine.h"

#include "tandem/engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace tandem::engine {

float SamplerRng::next_uniform() {
  // splitmix64: tiny, portable and identical everywhere, unlike std:: distributions.
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * 0x1p-24f;
}

void token_logprobs(const float* logits, int64_t vocab, int32_t token, int32_t top, TokenLogprobs& out) {
  out.top.clear();
  if (vocab <= 0) return;
  float mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;  // float terms, a double sum: a 150k-token vocabulary adds many tiny ones
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - mx);
  const double log_z = static_cast<double>(mx) + std::log(sum);
  auto lp = [&](int64_t i) { return static_cast<float>(static_cast<double>(logits[i]) - log_z); };
  out.logprob = token >= 0 && token < vocab ? lp(token) : -INFINITY;
  const auto k = static_cast<size_t>(std::clamp<int64_t>(top, 0, vocab));
  if (k == 0) return;
  // The k best in one pass, kept sorted (k is at most kMaxTopLogprobs): ids
  // come in increasing order, so an equal logit never displaces an earlier id.
  auto& best = out.top;
  for (int64_t i = 0; i < vocab; ++i) {
    const float v = logits[i];
    if (best.size() == k && !(v > logits[best.back().first])) continue;
    size_t at = best.size();
    while (at > 0 && v > logits[best[at - 1].first]) --at;
    if (best.size() == k) best.pop_back();
    best.insert(best.begin() + static_cast<std::ptrdiff_t>(at), {static_cast<int32_t>(i), 0.0f});
  }
  for (auto& [id, value] : best) value = lp(id);
}

Result<std::unique_ptr<Engine>> Engine::create(const model::ModelConfig& config, const model::ModelWeights& weights,
                                               const EngineOptions& options) {
  if (options.max_batch_tokens <= 0) return invalid_argument("max_batch_tokens must be positive");
  if (options.micro_batches <= 0) return invalid_argument("micro_batches must be positive");
  KvCacheShape shape{config.num_layers, options.num_blocks, options.block_size, config.num_kv_heads,
                     config.head_dim};
  std::unique_ptr<KvCache> cache;
  if (options.forward || options.forward_split) {
    TANDEM_ASSIGN_OR_RETURN(cache, KvCache::create_unbacked(shape));
  } else {
    TANDEM_ASSIGN_OR_RETURN(cache, KvCache::create(shape, options.max_kv_bytes));
  }
  return std::unique_ptr<Engine>(new Engine(config, weights, options, std::move(cache)));
}

Engine::Engine(const model::ModelConfig& config, const model::ModelWeights& weights, const EngineOptions& options,
               std::unique_ptr<KvCache> cache)
    : config_(config),
      options_(options),
      cache_(std::move(cache)),
      runner_(config, weights, cache_.get()),
      local_experts_(runner_),
      experts_(&local_experts_) {}

Result<std::vector<GenerationResult>> Engine::generate(const std::vector<GenerationRequest>& requests,
                                                       const TokenCallback& on_token) {
  for (size_t i = 0; i < requests.size(); ++i)
    TANDEM_RETURN_IF_ERROR(validate_request(config_, requests[i], cache_->shape().num_blocks, options_.block_size)
                               .with_context("request " + std::to_string(i)));
  Scheduler sched(config_, runner_, *cache_, *experts_,
                  {.max_running_sequences = static_cast<int64_t>(std::max<size_t>(1, requests.size())),
                   .max_batch_tokens = options_.max_batch_tokens,
                   .micro_batches = options_.micro_batches,
                   .prefix_caching = options_.prefix_caching,
                   .forward = options_.forward,
                   .forward_split = options_.forward_split});
  std::vector<GenerationResult> results(requests.size());
  Status failure;
  size_t finished = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SequenceCallbacks cb;
    if (requests[i].logprobs >= 0)
      cb.on_logprobs = [&, i](const TokenLogprobs& lp) { results[i].logprobs.push_back(lp); };
    if (requests[i].prompt_logprobs >= 0)
      cb.on_prompt_logprobs = [&, i](int64_t, const TokenLogprobs& lp) { results[i].prompt_logprobs.push_back(lp); };
    cb.on_token = [&, i](int32_t tok) {
      results[i].tokens.push_back(tok);
      if (on_token) on_token(i, tok);
    };
    cb.on_finish = [&, i](const Status& st, FinishReason reason) {
      results[i].finish = reason;
      if (!st.is_ok() && failure.is_ok()) failure = st.with_context("request " + std::to_string(i));
      ++finished;
    };
    TANDEM_RETURN_IF_ERROR(sched.submit(requests[i], std::move(cb)).status());
  }
  while (finished < requests.size()) {
    if (!sched.step() && finished < requests.size())
      return internal_error("scheduler made no progress with " + std::to_string(requests.size() - finished) +
                            " requests left");
  }
  const auto s = sched.stats().tokens;
  stats_.prompt_tokens += s.prompt_tokens;
  stats_.prompt_seconds += s.prompt_seconds;
  stats_.decode_tokens += s.decode_tokens;
  stats_.decode_seconds += s.decode_seconds;
  if (!failure.is_ok()) return failure;
  return results;
}

}  // namespace tandem::engine
