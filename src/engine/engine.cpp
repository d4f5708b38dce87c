#include "tandem/engine/engine.h"

#include <algorithm>
#include <chrono>
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

Result<std::unique_ptr<Engine>> Engine::create(const model::ModelConfig& config, const model::ModelWeights& weights,
                                               const EngineOptions& options) {
  if (options.max_batch_tokens <= 0) return invalid_argument("max_batch_tokens must be positive");
  if (options.micro_batches <= 0) return invalid_argument("micro_batches must be positive");
  KvCacheShape shape{config.num_layers, options.num_blocks, options.block_size, config.num_kv_heads,
                     config.head_dim};
  TANDEM_ASSIGN_OR_RETURN(auto cache, KvCache::create(shape, options.max_kv_bytes));
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

Status Engine::validate(const GenerationRequest& r) const {
  if (r.prompt.empty()) return invalid_argument("prompt: must hold at least one token");
  for (size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= config_.vocab_size)
      return invalid_argument("prompt[" + std::to_string(i) + "]: token id " + std::to_string(r.prompt[i]) +
                              " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
  if (r.max_tokens <= 0) return invalid_argument("max_tokens: must be positive");
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  if (total > config_.max_position_embeddings)
    return invalid_argument("prompt (" + std::to_string(r.prompt.size()) + " tokens) + max_tokens (" +
                            std::to_string(r.max_tokens) + ") exceeds the model's context of " +
                            std::to_string(config_.max_position_embeddings));
  const int64_t blocks = (total + options_.block_size - 1) / options_.block_size;
  if (blocks > cache_->shape().num_blocks)
    return resource_exhausted("request needs " + std::to_string(blocks) + " KV blocks but the cache has only " +
                              std::to_string(cache_->shape().num_blocks));
  if (r.sampling.top_p <= 0 || r.sampling.top_p > 1) return invalid_argument("top_p: must be in (0, 1]");
  if (r.sampling.top_k < 0) return invalid_argument("top_k: must be >= 0");
  return Status::ok();
}

namespace {
struct SeqState {
  size_t request = 0;
  std::vector<int32_t> tokens;  // prompt followed by generated tokens
  int64_t computed = 0;         // tokens whose K/V are in the cache
  SequenceKv kv;
  SamplerRng rng{0};
  bool done = false;
};
}  // namespace

Result<std::vector<GenerationResult>> Engine::generate(const std::vector<GenerationRequest>& requests,
                                                       const TokenCallback& on_token) {
  for (size_t i = 0; i < requests.size(); ++i)
    TANDEM_RETURN_IF_ERROR(validate(requests[i]).with_context("request " + std::to_string(i)));

  std::vector<GenerationResult> results(requests.size());
  std::vector<SeqState> seqs(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    seqs[i].request = i;
    seqs[i].tokens = requests[i].prompt;
    seqs[i].rng = SamplerRng(requests[i].seed);
  }
  const int64_t bs = options_.block_size;
  std::vector<float> logits, scratch(static_cast<size_t>(2 * config_.vocab_size));

  while (true) {
    // Admit work for this step: every unfinished sequence contributes its uncomputed
    // tokens, bounded by the step's token budget (prefill is chunked).
    ForwardBatch b;
    std::vector<SeqState*> sampled;
    std::vector<SeqState*> in_batch;
    int64_t budget = options_.max_batch_tokens;
    int64_t prefill_tokens = 0;
    for (SeqState& s : seqs) {
      if (s.done || budget == 0) continue;
      const int64_t pending = static_cast<int64_t>(s.tokens.size()) - s.computed;
      const int64_t take = std::min(pending, budget);
      Status st = s.kv.reserve(*cache_, s.computed + take);
      if (!st.is_ok()) {
        if (in_batch.empty()) return st;  // cannot make progress at all
        continue;                         // retry next step once others finish
      }
      in_batch.push_back(&s);
      const int64_t prompt_len = static_cast<int64_t>(requests[s.request].prompt.size());
      prefill_tokens += std::max<int64_t>(0, std::min(prompt_len, s.computed + take) - s.computed);
      budget -= take;
      const int32_t row = static_cast<int32_t>(in_batch.size() - 1);
      for (int64_t p = s.computed; p < s.computed + take; ++p) {
        b.tokens.push_back(s.tokens[static_cast<size_t>(p)]);
        b.positions.push_back(static_cast<int32_t>(p));
        b.seq_of_token.push_back(row);
        b.slots.push_back(s.kv.slot(p, bs));
        b.ctx_len.push_back(static_cast<int32_t>(p + 1));
      }
      if (s.computed + take == static_cast<int64_t>(s.tokens.size())) {
        b.logits_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
        sampled.push_back(&s);
      }
      s.computed += take;
    }
    if (in_batch.empty()) break;

    for (SeqState* s : in_batch)
      b.max_blocks_per_seq = std::max<int64_t>(b.max_blocks_per_seq, static_cast<int64_t>(s->kv.blocks().size()));
    b.block_tables.assign(in_batch.size() * static_cast<size_t>(b.max_blocks_per_seq), 0);
    for (size_t r = 0; r < in_batch.size(); ++r)
      std::copy(in_batch[r]->kv.blocks().begin(), in_batch[r]->kv.blocks().end(),
                b.block_tables.begin() + static_cast<int64_t>(r) * b.max_blocks_per_seq);

    const auto t0 = std::chrono::steady_clock::now();
    TANDEM_RETURN_IF_ERROR(forward_pipelined(runner_, b, options_.micro_batches, *experts_, logits));
    for (size_t r = 0; r < sampled.size(); ++r) {
      SeqState& s = *sampled[r];
      const GenerationRequest& req = requests[s.request];
      const float u = s.rng.next_uniform();
      const int32_t tok = kernels::cpu::sample(logits.data() + r * static_cast<size_t>(config_.vocab_size),
                                               config_.vocab_size, req.sampling, u, scratch.data());
      GenerationResult& res = results[s.request];
      res.tokens.push_back(tok);
      if (on_token) on_token(s.request, tok);
      const bool stop = std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), tok) !=
                        req.stop_token_ids.end();
      if (stop || static_cast<int32_t>(res.tokens.size()) >= req.max_tokens) {
        res.finish = stop ? FinishReason::kStop : FinishReason::kLength;
        s.done = true;
        s.kv.release();
      } else {
        s.tokens.push_back(tok);
      }
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (prefill_tokens > 0) {
      stats_.prompt_seconds += dt;
      stats_.prompt_tokens += prefill_tokens;
    } else {
      stats_.decode_seconds += dt;
      stats_.decode_tokens += static_cast<int64_t>(sampled.size());
    }
  }
  return results;
}

}  // namespace tandem::engine
