#include "tandem/engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace tandem::engine {

struct Scheduler::Seq {
  SequenceId id = 0;
  GenerationRequest req;
  SequenceCallbacks cb;
  std::vector<int32_t> tokens;  // prompt + generated (the last sampled token is not yet computed)
  int64_t generated = 0;
  int64_t computed = 0;         // tokens whose K/V are in the cache
  int64_t prompt_lp_next = 1;   // next prompt token whose log-probabilities are owed
  SequenceKv kv;
  SamplerRng rng{0};
  PenaltyState penalties;
  model::TokenGuide::State guide;  // with req.guide
  bool cancelled = false;  // asked to stop by the client
  bool done = false;       // on_finish was called
};

Status validate_request(const model::ModelConfig& c, const GenerationRequest& r, int64_t num_blocks,
                        int64_t block_size) {
  if (r.prompt.empty()) return invalid_argument("prompt: must hold at least one token");
  for (size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size)
      return invalid_argument("prompt[" + std::to_string(i) + "]: token id " + std::to_string(r.prompt[i]) +
                              " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  // logprobs and prompt_logprobs: -1 (none) or 0..kMaxTopLogprobs alternatives.
  auto alternatives = [](const char* field, int32_t v) {
    if (v >= -1 && v <= kMaxTopLogprobs) return Status::ok();
    return invalid_argument(std::string(field) + ": must be in [0, " + std::to_string(kMaxTopLogprobs) +
                            "] (or -1: none), got " + std::to_string(v));
  };
  TANDEM_RETURN_IF_ERROR(alternatives("prompt_logprobs", r.prompt_logprobs));
  if (r.max_tokens < 0 || (r.max_tokens == 0 && r.prompt_logprobs < 0))
    return invalid_argument("max_tokens: must be positive (0 only with prompt_logprobs), got " +
                            std::to_string(r.max_tokens));
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  if (total > c.max_position_embeddings)
    return invalid_argument("prompt (" + std::to_string(r.prompt.size()) + " tokens) + max_tokens (" +
                            std::to_string(r.max_tokens) + ") exceeds the model's context of " +
                            std::to_string(c.max_position_embeddings));
  const int64_t blocks = (total + block_size - 1) / block_size;
  if (blocks > num_blocks)
    return resource_exhausted("request needs " + std::to_string(blocks) + " KV blocks but the cache has only " +
                              std::to_string(num_blocks));
  if (!(r.sampling.temperature >= 0)) return invalid_argument("temperature: must be >= 0");
  if (!(r.sampling.top_p > 0 && r.sampling.top_p <= 1)) return invalid_argument("top_p: must be in (0, 1]");
  if (r.sampling.top_k < 0) return invalid_argument("top_k: must be >= 0");
  const LogitsAdjustments& a = r.adjust;
  if (!(a.presence_penalty >= -2 && a.presence_penalty <= 2))
    return invalid_argument("presence_penalty: must be in [-2, 2]");
  if (!(a.frequency_penalty >= -2 && a.frequency_penalty <= 2))
    return invalid_argument("frequency_penalty: must be in [-2, 2]");
  if (!(a.repetition_penalty >= 0.01f && a.repetition_penalty <= 100))
    return invalid_argument("repetition_penalty: must be in [0.01, 100]");
  if (!(a.min_p >= 0 && a.min_p <= 1)) return invalid_argument("min_p: must be in [0, 1]");
  if (a.min_tokens < 0 || a.min_tokens > r.max_tokens)
    return invalid_argument("min_tokens: must be in [0, max_tokens = " + std::to_string(r.max_tokens) + "], got " +
                            std::to_string(a.min_tokens));
  if (r.guide && a.min_tokens > 0)
    return invalid_argument("min_tokens: not with guided output (the grammar decides where the text may end)");
  if (r.guide && r.guide->vocab_size() != c.vocab_size)
    return invalid_argument("guide: built for a vocabulary of " + std::to_string(r.guide->vocab_size()) +
                            " tokens, the model has " + std::to_string(c.vocab_size));
  for (const auto& [token, bias] : a.logit_bias) {
    if (token < 0 || token >= c.vocab_size)
      return invalid_argument("logit_bias: token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
    if (!(bias >= -100 && bias <= 100))
      return invalid_argument("logit_bias: the bias of token " + std::to_string(token) + " must be in [-100, 100]");
  }
  return alternatives("logprobs", r.logprobs);
}

Scheduler::Scheduler(const model::ModelConfig& config, ModelRunner& runner, KvCache& cache, ExpertExecutor& experts,
                     const SchedulerOptions& options)
    : config_(config),
      runner_(runner),
      cache_(cache),
      experts_(experts),
      options_(options),
      scratch_(static_cast<size_t>(2 * config.vocab_size)) {}

Scheduler::~Scheduler() = default;

// A backend's answer is checked before anything reads it: a short logits
// buffer or an out-of-vocabulary token would otherwise be read out of bounds
// or fed back as the next input.
Status Scheduler::check_step_output(size_t rows) const {
  const auto V = static_cast<size_t>(config_.vocab_size);
  const auto sampled_rows = static_cast<size_t>(std::count(greedy_.begin(), greedy_.end(), uint8_t{0}));
  if (logits_.size() != sampled_rows * V)
    return internal_error("forward returned " + std::to_string(logits_.size()) + " logits for " +
                          std::to_string(sampled_rows) + " rows of " + std::to_string(V));
  if (sampled_rows == rows) return Status::ok();
  if (argmax_.size() != rows)
    return internal_error("forward returned " + std::to_string(argmax_.size()) + " tokens for " +
                          std::to_string(rows) + " rows");
  for (size_t r = 0; r < rows; ++r)
    if (greedy_[r] && (argmax_[r] < 0 || argmax_[r] >= config_.vocab_size))
      return internal_error("forward returned token " + std::to_string(argmax_[r]) + " for row " +
                            std::to_string(r) + ", outside the vocabulary");
  return Status::ok();
}

// Masks `logits` (one row, already adjusted) to the tokens s's grammar allows
// next. The stop tokens keep their logits only where the text is complete
// (and min_tokens is reached); elsewhere they are masked too. A state that no
// token can continue, or an automaton that outgrew its limit, ends the
// sequence with an error naming it.
Status Scheduler::apply_guide(const Seq& s, std::vector<float>& logits) {
  model::TokenGuide& guide = *s.req.guide;
  TANDEM_ASSIGN_OR_RETURN(auto mask, guide.allowed(s.guide));
  const bool accepting = guide.accepting(s.guide);
  const bool may_stop = accepting && s.generated >= s.req.adjust.min_tokens;
  stop_logits_.clear();
  for (int32_t t : s.req.stop_token_ids)
    if (t >= 0 && t < config_.vocab_size) stop_logits_.push_back({t, logits[static_cast<size_t>(t)]});
  model::mask_logits(*mask, logits.data(), config_.vocab_size);
  for (auto [t, l] : stop_logits_) logits[static_cast<size_t>(t)] = may_stop ? l : -INFINITY;
  if (std::none_of(logits.begin(), logits.end(), [](float l) { return l > -INFINITY; }))
    return failed_precondition(std::string("guided decoding: no token of the vocabulary can continue the output") +
                               (accepting ? " (it is complete but may not stop yet)" : "") + " after " +
                               std::to_string(s.generated) + " tokens");
  return Status::ok();
}

Result<SequenceId> Scheduler::submit(GenerationRequest request, SequenceCallbacks callbacks) {
  TANDEM_RETURN_IF_ERROR(validate_request(config_, request, cache_.shape().num_blocks, cache_.block_size()));
  auto s = std::make_unique<Seq>();
  s->tokens = request.prompt;
  s->rng = SamplerRng(request.seed);
  if (request.adjust.any()) s->penalties = PenaltyState(request.adjust, request.prompt);
  if (request.guide) s->guide = request.guide->start();
  s->req = std::move(request);
  s->cb = std::move(callbacks);
  std::lock_guard<std::mutex> lock(mu_);
  s->id = next_id_++;
  const SequenceId id = s->id;
  incoming_.push_back(std::move(s));
  ++waiting_count_;
  return id;
}

void Scheduler::cancel(SequenceId id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.push_back(id);
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s;
  s.waiting = waiting_count_;
  s.running = running_count_;
  s.free_blocks = cache_.allocator().num_free();
  s.preemptions = preemptions_;
  s.prefix_lookup_tokens = prefix_lookup_tokens_;
  s.prefix_hit_tokens = prefix_hit_tokens_;
  s.cached_blocks = cache_.allocator().num_cached();
  s.tokens = tokens_;
  return s;
}

void Scheduler::finish(Seq& s, const Status& st, FinishReason reason) {
  if (s.done) return;
  s.done = true;
  s.kv.release();
  if (s.cb.on_finish) s.cb.on_finish(st, reason);
  s.cb = {};
}

void Scheduler::preempt(Seq& victim) {
  // Recompute later from scratch: the prompt plus what was generated so far.
  victim.kv.release();
  victim.computed = 0;
  std::lock_guard<std::mutex> lock(mu_);
  ++preemptions_;
}

bool Scheduler::serves_before(const Seq& a, const Seq& b) {
  return a.req.priority != b.req.priority ? a.req.priority < b.req.priority : a.id < b.id;
}

template <typename List>
void Scheduler::insert_in_order(List& list, std::unique_ptr<Seq> s) {
  auto at = std::upper_bound(list.begin(), list.end(), s,
                             [](const auto& a, const auto& b) { return serves_before(*a, *b); });
  list.insert(at, std::move(s));
}

void Scheduler::preempt_last() {
  preempt(*running_.back());
  std::unique_ptr<Seq> victim = std::move(running_.back());
  running_.pop_back();
  insert_in_order(waiting_, std::move(victim));
}

void Scheduler::admit() {
  // Admit in (priority, arrival) order while the prompt fits with a block to
  // spare for decode. A more urgent sequence makes room by preempting
  // strictly less urgent running ones, least urgent first, and only when that
  // makes it fit; a request never preempts one of its own priority here.
  const int64_t bs = cache_.block_size();
  auto outranks_last = [&](const Seq& s) {
    return !running_.empty() && s.req.priority < running_.back()->req.priority;
  };
  std::vector<const Seq*> preempted;  // here, to make room: not admitted again in this call
  auto preempt_for = [&] {
    preempted.push_back(running_.back().get());
    preempt_last();  // goes behind the sequence it makes room for: it is less urgent
  };
  while (!waiting_.empty()) {
    Seq& s = *waiting_.front();
    if (std::find(preempted.begin(), preempted.end(), &s) != preempted.end()) break;
    size_t outranked = 0;  // running sequences less urgent than s, at the back
    for (auto it = running_.rbegin(); it != running_.rend() && s.req.priority < (*it)->req.priority; ++it) ++outranked;
    const bool full = static_cast<int64_t>(running_.size()) >= options_.max_running_sequences;
    if (full && outranked == 0) break;
    const auto len = static_cast<int64_t>(s.tokens.size());
    // The last token is always computed: its logits give the next one. So is
    // every token whose logits give a prompt log-probability still owed.
    int64_t reusable = len - 1;
    if (s.req.prompt_logprobs >= 0 && s.prompt_lp_next < static_cast<int64_t>(s.req.prompt.size()))
      reusable = std::min(reusable, s.prompt_lp_next - 1);
    if (options_.prefix_caching && s.computed == 0) s.computed = s.kv.adopt_prefix(cache_, s.tokens, reusable);
    const int64_t need = (len + 1 + bs - 1) / bs - static_cast<int64_t>(s.kv.blocks().size());
    const int64_t free = cache_.allocator().num_free();
    // What preempting them would free: blocks only they hold (a shared
    // prefix, or blocks s just adopted, stay held).
    int64_t reclaimable = 0;
    if (outranked > 0 && (full || need > free))
      for (size_t k = running_.size() - outranked; k < running_.size(); ++k)
        reclaimable += cache_.allocator().freed_by_release(running_[k]->kv.blocks());
    // Preempting is futile when s would still not fit (and still not run alone).
    const bool futile = need > free + reclaimable && outranked < running_.size();
    if ((full || need > free) && !futile) {
      if (full) preempt_for();
      while (need > cache_.allocator().num_free() && outranks_last(s)) preempt_for();
    }
    if (static_cast<int64_t>(running_.size()) >= options_.max_running_sequences ||
        (need > cache_.allocator().num_free() && !running_.empty())) {
      s.kv.release();  // its cached blocks stay cached
      s.computed = 0;
      break;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Tokens it could have taken from the cache (a scored prompt: few), and its last.
      prefix_lookup_tokens_ += options_.prefix_caching ? reusable + 1 : 0;
      prefix_hit_tokens_ += s.computed;
    }
    std::unique_ptr<Seq> admitted = std::move(waiting_.front());
    waiting_.pop_front();
    insert_in_order(running_, std::move(admitted));
  }
}

bool Scheduler::step() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      insert_in_order(waiting_, std::move(incoming_.front()));
      incoming_.pop_front();
    }
    for (SequenceId id : cancelled_) {
      for (auto& s : running_)
        if (s->id == id) s->cancelled = true;
      for (auto& s : waiting_)
        if (s->id == id) s->cancelled = true;
    }
    cancelled_.clear();
  }
  // Removes finished sequences, ending cancelled ones first.
  auto drop_finished = [&](auto& list) {
    for (auto& s : list) {
      if (s->cancelled) finish(*s, Status(StatusCode::kCancelled, "cancelled by the client"), FinishReason::kStop);
      if (s->done) s.reset();
    }
    list.erase(std::remove(list.begin(), list.end(), nullptr), list.end());
  };
  drop_finished(running_);
  drop_finished(waiting_);
  admit();

  // Build the step: every running sequence contributes its uncomputed tokens
  // within the token budget, most urgent first; a sequence that cannot get KV
  // blocks preempts the least urgent other one.
  const int64_t bs = cache_.block_size();
  ForwardBatch b;
  std::vector<Seq*> in_batch, scored;  // scored: all prompt tokens scored, nothing to sample (max_tokens 0)
  // What each logits row is for: the next token of `seq` (prompt_index -1)
  // or the log-probabilities of its prompt token prompt_index.
  struct RowUse {
    Seq* seq;
    int64_t prompt_index;
  };
  std::vector<RowUse> rows;
  int64_t budget = options_.max_batch_tokens, prefill_tokens = 0, sampled_rows = 0;
  int64_t prompt_rows_left = std::max<int64_t>(1, options_.max_prompt_logprob_rows);
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Seq& s = *running_[i];
    const int64_t prompt_len = static_cast<int64_t>(s.req.prompt.size());
    const int64_t pending = static_cast<int64_t>(s.tokens.size()) - s.computed;
    int64_t take = std::min(pending, budget);
    // Positions [first_scored, prompt_len - 1) give owed prompt log-probabilities.
    const int64_t first_scored =
        s.req.prompt_logprobs >= 0 ? std::max(s.computed, s.prompt_lp_next - 1) : prompt_len;
    if (first_scored < std::min(s.computed + take, prompt_len - 1)) {
      take = std::min(take, first_scored - s.computed + prompt_rows_left);
      if (take == 0) continue;  // this step's rows are spent: next step
    }
    Status st = s.kv.reserve(cache_, s.computed + take);
    while (!st.is_ok() && running_.size() > i + 1) {
      preempt_last();
      st = s.kv.reserve(cache_, s.computed + take);
    }
    if (!st.is_ok()) break;  // nothing left to preempt: try again next step
    in_batch.push_back(&s);
    budget -= take;
    prefill_tokens += std::max<int64_t>(0, std::min(prompt_len, s.computed + take) - s.computed);
    const int32_t row = static_cast<int32_t>(in_batch.size() - 1);
    for (int64_t p = s.computed; p < s.computed + take; ++p) {
      b.tokens.push_back(s.tokens[static_cast<size_t>(p)]);
      b.positions.push_back(static_cast<int32_t>(p));
      b.seq_of_token.push_back(row);
      b.slots.push_back(s.kv.slot(p, bs));
      b.ctx_len.push_back(static_cast<int32_t>(p + 1));
      if (p >= first_scored && p < prompt_len - 1) {
        b.logits_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
        rows.push_back({&s, p + 1});
        --prompt_rows_left;
      }
    }
    if (s.computed + take == static_cast<int64_t>(s.tokens.size())) {
      if (s.req.max_tokens > 0) {
        b.logits_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
        rows.push_back({&s, -1});
        ++sampled_rows;
      } else {
        scored.push_back(&s);
      }
    }
    s.computed += take;
  }
  if (in_batch.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_count_ = static_cast<int64_t>(waiting_.size());
    running_count_ = static_cast<int64_t>(running_.size());
    return false;
  }
  for (Seq* s : in_batch)
    b.max_blocks_per_seq = std::max<int64_t>(b.max_blocks_per_seq, static_cast<int64_t>(s->kv.blocks().size()));
  b.block_tables.assign(in_batch.size() * static_cast<size_t>(b.max_blocks_per_seq), 0);
  for (size_t r = 0; r < in_batch.size(); ++r)
    std::copy(in_batch[r]->kv.blocks().begin(), in_batch[r]->kv.blocks().end(),
              b.block_tables.begin() + static_cast<int64_t>(r) * b.max_blocks_per_seq);

  const auto t0 = std::chrono::steady_clock::now();
  greedy_.assign(rows.size(), 0);
  if (options_.forward_split)
    for (size_t r = 0; r < rows.size(); ++r) {  // a row whose log-probabilities are asked for needs its logits
      const Seq& s = *rows[r].seq;
      greedy_[r] = rows[r].prompt_index < 0 && kernels::is_greedy(s.req.sampling) && s.req.logprobs < 0 &&
                           !s.req.adjust.changes_argmax(s.generated) && !s.req.guide
                       ? 1
                       : 0;
    }
  Status st = options_.forward_split ? options_.forward_split(b, greedy_, logits_, argmax_)
              : options_.forward     ? options_.forward(b, logits_)
                                     : forward_pipelined(runner_, b, options_.micro_batches, experts_, logits_);
  if (st.is_ok()) st = check_step_output(rows.size());
  if (st.is_ok() && options_.prefix_caching)
    for (Seq* s : in_batch) s->kv.publish(s->tokens, s->computed);
  if (!st.is_ok()) {
    // The step's sequences cannot continue (e.g. an expert node died): end them.
    for (Seq* s : in_batch) finish(*s, st, FinishReason::kStop);
  } else {
    size_t packed = 0;  // logits rows come packed when the greedy ones are split off
    const auto V = static_cast<size_t>(config_.vocab_size);
    for (size_t r = 0; r < rows.size(); ++r) {
      Seq& s = *rows[r].seq;
      if (const int64_t index = rows[r].prompt_index; index >= 0) {
        const float* row = logits_.data() + packed++ * V;
        const int32_t token = s.req.prompt[static_cast<size_t>(index)];
        token_logprobs(row, config_.vocab_size, token, s.req.prompt_logprobs, logprobs_);
        if (s.cb.on_prompt_logprobs) s.cb.on_prompt_logprobs(index, logprobs_);
        s.prompt_lp_next = index + 1;
        continue;
      }
      // Drawn for every row, greedy or not, so a sequence's random stream does
      // not depend on how its rows came back.
      const float u = s.rng.next_uniform();
      int32_t tok = 0;
      if (greedy_[r]) {
        tok = argmax_[r];
      } else {
        const float* row = logits_.data() + packed++ * V;
        if (s.req.adjust.any() || s.req.guide) {  // on a copy: log-probabilities stay the model's
          adjusted_.assign(row, row + V);
          s.penalties.apply(s.req.adjust, adjusted_.data(), config_.vocab_size);
          if (s.generated < s.req.adjust.min_tokens) ban_tokens(s.req.stop_token_ids, adjusted_.data(), config_.vocab_size);
          if (s.req.guide) {
            if (Status g = apply_guide(s, adjusted_); !g.is_ok()) {
              finish(s, g, FinishReason::kStop);
              continue;
            }
          }
          if (!kernels::is_greedy(s.req.sampling))
            apply_min_p(s.req.adjust.min_p, s.req.sampling.temperature, adjusted_.data(), config_.vocab_size);
          tok = kernels::cpu::sample(adjusted_.data(), config_.vocab_size, s.req.sampling, u, scratch_.data());
        } else {
          tok = kernels::cpu::sample(row, config_.vocab_size, s.req.sampling, u, scratch_.data());
        }
        if (s.req.logprobs >= 0 && s.cb.on_logprobs) {
          token_logprobs(row, config_.vocab_size, tok, s.req.logprobs, logprobs_);
          s.cb.on_logprobs(logprobs_);
        }
      }
      ++s.generated;
      if (s.req.adjust.any()) s.penalties.add_generated(tok);
      if (s.cb.on_token) s.cb.on_token(tok);
      const bool stop =
          std::find(s.req.stop_token_ids.begin(), s.req.stop_token_ids.end(), tok) != s.req.stop_token_ids.end();
      // A guided text that nothing may extend is finished: the stop token it
      // would have to sample next is not waited for.
      bool complete = false;
      if (s.req.guide && !stop) {
        s.guide = s.req.guide->advance(s.guide, tok);
        complete = s.req.guide->complete(s.guide);
      }
      if (stop || complete || s.generated >= s.req.max_tokens) {
        finish(s, Status::ok(), stop || complete ? FinishReason::kStop : FinishReason::kLength);
      } else {
        s.tokens.push_back(tok);
      }
    }
    for (Seq* s : scored) finish(*s, Status::ok(), FinishReason::kLength);
  }
  drop_finished(running_);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  if (prefill_tokens > 0) {
    tokens_.prompt_seconds += dt;
    tokens_.prompt_tokens += prefill_tokens;
  } else {
    tokens_.decode_seconds += dt;
    tokens_.decode_tokens += sampled_rows;
  }
  waiting_count_ = static_cast<int64_t>(waiting_.size());
  running_count_ = static_cast<int64_t>(running_.size());
  return true;
}

}  // namespace tandem::engine
