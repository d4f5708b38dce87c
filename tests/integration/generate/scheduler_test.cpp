// The step-based scheduler the attention nodes run: admission, cancellation,
// preemption when the KV cache runs out, and submissions from other threads.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "tandem/engine/scheduler.h"
#include "test_model.h"

namespace tandem {
namespace {

struct Harness {
  explicit Harness(int64_t num_blocks, int64_t block_size = 4, engine::SchedulerOptions opt = {})
      : m(testing::tiny_model("tiny-mixtral")) {
    const auto& c = m.ck.config;
    cache = std::move(engine::KvCache::create({c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim},
                                              size_t{1} << 30)
                          .value());
    runner = std::make_unique<engine::ModelRunner>(c, *m.weights, cache.get());
    local = std::make_unique<engine::LocalExpertExecutor>(*runner);
    sched = std::make_unique<engine::Scheduler>(c, *runner, *cache, *local, opt);
  }
  const testing::LoadedModel& m;
  std::unique_ptr<engine::KvCache> cache;
  std::unique_ptr<engine::ModelRunner> runner;
  std::unique_ptr<engine::LocalExpertExecutor> local;
  std::unique_ptr<engine::Scheduler> sched;
};

struct Collected {
  std::vector<int32_t> tokens;
  bool finished = false;
  Status status;
};

engine::SequenceCallbacks collect(Collected& c) {
  return {[&c](int32_t t) { c.tokens.push_back(t); },
          [&c](const Status& st, engine::FinishReason) {
            c.finished = true;
            c.status = st;
          }};
}

engine::GenerationRequest request(const testing::LoadedModel& m, const std::string& text, int max_tokens) {
  engine::GenerationRequest r;
  r.prompt = *m.ck.tokenizer->encode(text);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return r;
}

TEST(Scheduler, CancelFreesBlocksAtTheNextStep) {
  Harness h(64);
  Collected a, b;
  auto ida = h.sched->submit(request(h.m, "first sequence here", 50), collect(a));
  auto idb = h.sched->submit(request(h.m, "second one", 5), collect(b));
  ASSERT_TRUE(ida.is_ok() && idb.is_ok());
  for (int i = 0; i < 3; ++i) h.sched->step();
  EXPECT_LT(h.cache->allocator().num_free(), 64);
  h.sched->cancel(*ida);
  while (h.sched->step()) {
  }
  EXPECT_TRUE(a.finished);
  EXPECT_EQ(a.status.code(), StatusCode::kCancelled);
  EXPECT_LT(a.tokens.size(), 50u);
  EXPECT_TRUE(b.finished && b.status.is_ok());
  EXPECT_EQ(b.tokens.size(), 5u);
  EXPECT_EQ(h.cache->allocator().num_free(), 64);
  EXPECT_EQ(h.sched->stats().running, 0);
}

// A cache too small for all sequences at once forces preemption; every
// request still completes with exactly the tokens it gets when run alone.
TEST(Scheduler, PreemptionUnderMemoryPressureKeepsOutputs) {
  std::vector<engine::GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) reqs.push_back(request(testing::tiny_model("tiny-mixtral"), "pressure " + std::to_string(i), 24));
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : reqs) {
    Harness h(64);
    Collected c;
    ASSERT_TRUE(h.sched->submit(r, collect(c)).is_ok());
    while (h.sched->step()) {
    }
    alone.push_back(c.tokens);
  }
  Harness tight(20);  // each request needs ~8 blocks of 4: four of them do not fit together
  std::vector<Collected> got(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) ASSERT_TRUE(tight.sched->submit(reqs[i], collect(got[i])).is_ok());
  int steps = 0;
  while (tight.sched->step()) ASSERT_LT(++steps, 10000);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_TRUE(got[i].finished && got[i].status.is_ok()) << got[i].status.to_string();
    EXPECT_EQ(got[i].tokens, alone[i]) << "request " << i;
  }
  EXPECT_GT(tight.sched->stats().preemptions, 0);
  EXPECT_EQ(tight.cache->allocator().num_free(), 20);
}

TEST(Scheduler, RefusesRequestsThatCanNeverFit) {
  Harness h(4);
  Collected c;
  auto id = h.sched->submit(request(h.m, "long", 40), collect(c));
  EXPECT_EQ(id.status().code(), StatusCode::kResourceExhausted);
  auto bad = request(h.m, "x", 1);
  bad.sampling.top_k = -1;
  EXPECT_NE(h.sched->submit(bad, collect(c)).status().message().find("top_k"), std::string::npos);
}

TEST(Scheduler, AcceptsSubmissionsFromOtherThreadsWhileStepping) {
  Harness h(256, 4, {.max_running_sequences = 8});
  std::vector<Collected> got(16);
  std::atomic<int> submitted{0};
  std::thread producer([&] {
    for (int i = 0; i < 16; ++i) {
      ASSERT_TRUE(h.sched->submit(request(h.m, "thread " + std::to_string(i), 4), collect(got[i])).is_ok());
      ++submitted;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  int idle = 0;
  while (submitted < 16 || idle < 2) idle = h.sched->step() ? 0 : idle + 1;
  producer.join();
  while (h.sched->step()) {
  }
  for (const auto& c : got) {
    EXPECT_TRUE(c.finished);
    EXPECT_EQ(c.tokens.size(), 4u);
  }
}

std::vector<int32_t> run_alone(Harness& h, const engine::GenerationRequest& r) {
  Collected c;
  EXPECT_TRUE(h.sched->submit(r, collect(c)).is_ok());
  while (h.sched->step()) {
  }
  EXPECT_TRUE(c.finished && c.status.is_ok()) << c.status.to_string();
  return c.tokens;
}

engine::GenerationRequest with_prompt(std::vector<int32_t> prompt, int max_tokens, float temperature = 0) {
  engine::GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  r.sampling.top_p = 0.9f;
  r.seed = 7;
  return r;
}

// Requests sharing a long prefix (a system prompt) take its cached blocks and
// compute only the rest, and generate exactly what they generate without the
// cache: greedy and sampled.
TEST(Scheduler, PrefixCachingReusesSharedPrefixesWithTheSameOutputs) {
  const auto& m = testing::tiny_model("tiny-mixtral");
  const auto shared = *m.ck.tokenizer->encode("You are a helpful assistant. Answer briefly and well, please.");
  ASSERT_GE(shared.size(), 8u);
  std::vector<engine::GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    auto p = shared;
    const auto tail = *m.ck.tokenizer->encode(" question " + std::to_string(i));
    p.insert(p.end(), tail.begin(), tail.end());
    reqs.push_back(with_prompt(p, 6, i % 2 ? 0.8f : 0.0f));
  }
  Harness cold(64, 4, {.prefix_caching = false});
  Harness warm(64, 4);
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(run_alone(warm, reqs[i]), run_alone(cold, reqs[i])) << "request " << i;

  const auto w = warm.sched->stats(), c = cold.sched->stats();
  EXPECT_EQ(c.prefix_hit_tokens, 0);
  EXPECT_EQ(c.prefix_lookup_tokens, 0);
  int64_t prompts = 0;
  for (const auto& r : reqs) prompts += static_cast<int64_t>(r.prompt.size());
  EXPECT_EQ(w.prefix_lookup_tokens, prompts);
  // Every request after the first finds at least the shared whole blocks.
  const int64_t shared_blocks = static_cast<int64_t>(shared.size()) / 4;
  EXPECT_GE(w.prefix_hit_tokens, 3 * shared_blocks * 4);
  EXPECT_EQ(w.tokens.prompt_tokens, c.tokens.prompt_tokens - w.prefix_hit_tokens);
  EXPECT_GT(w.cached_blocks, 0);
  EXPECT_EQ(warm.cache->allocator().num_free(), 64);  // cached blocks nobody holds count as free
}

// A prompt seen before in full is not taken whole: its last token is computed
// again, because its logits give the first generated token.
TEST(Scheduler, PrefixCachingAlwaysComputesTheLastPromptToken) {
  std::vector<int32_t> prompt(12);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(10 + 3 * i);  // 3 whole blocks of 4
  Harness warm(64, 4);
  const auto first = run_alone(warm, with_prompt(prompt, 5));
  const auto second = run_alone(warm, with_prompt(prompt, 5));
  EXPECT_EQ(first, second);
  EXPECT_EQ(warm.sched->stats().prefix_hit_tokens, 8);  // 2 of the 3 blocks
  // Its generated tokens were cached too: a follow-up turn that extends the
  // whole exchange finds the prompt and the answer's whole blocks.
  auto next = prompt;
  next.insert(next.end(), first.begin(), first.end() - 1);  // the last token was never fed back
  next.push_back(5);
  const int64_t before = warm.sched->stats().prefix_hit_tokens;
  run_alone(warm, with_prompt(next, 2));
  EXPECT_EQ(warm.sched->stats().prefix_hit_tokens - before, 16);
}

// Sequences admitted together compute their common prefix each (nothing is
// cached before a forward succeeds) and still agree; one admitted later hits.
TEST(Scheduler, PrefixCachingWithConcurrentIdenticalPrompts) {
  const auto& m = testing::tiny_model("tiny-mixtral");
  const auto prompt = *m.ck.tokenizer->encode("the same prompt from three clients at once");
  Harness h(64, 4);
  std::vector<Collected> got(3);
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(h.sched->submit(with_prompt(prompt, 8), collect(got[i])).is_ok());
  h.sched->step();
  EXPECT_EQ(h.sched->stats().prefix_hit_tokens, 0);
  ASSERT_TRUE(h.sched->submit(with_prompt(prompt, 8), collect(got[2])).is_ok());
  while (h.sched->step()) {
  }
  EXPECT_EQ(h.sched->stats().prefix_hit_tokens, static_cast<int64_t>((prompt.size() - 1) / 4 * 4));
  for (const auto& g : got) {
    EXPECT_TRUE(g.finished && g.status.is_ok());
    EXPECT_EQ(g.tokens, got[0].tokens);
  }
  EXPECT_EQ(h.cache->allocator().num_free(), 64);
}

// A forward that fails caches nothing: its blocks may hold half-written K/V.
TEST(Scheduler, PrefixCachingPublishesOnlyAfterASuccessfulForward) {
  const auto& m = testing::tiny_model("tiny-mixtral");
  std::vector<int32_t> prompt(9, 17);
  bool fail = true;
  Harness h(64, 4);
  h.sched = std::make_unique<engine::Scheduler>(
      m.ck.config, *h.runner, *h.cache, *h.local,
      engine::SchedulerOptions{.forward = [&](const engine::ForwardBatch& b, std::vector<float>& logits) {
        if (fail) return internal_error("injected forward failure");
        return engine::forward_pipelined(*h.runner, b, 1, *h.local, logits);
      }});
  Collected a;
  ASSERT_TRUE(h.sched->submit(with_prompt(prompt, 3), collect(a)).is_ok());
  h.sched->step();
  EXPECT_TRUE(a.finished);
  EXPECT_EQ(a.status.code(), StatusCode::kInternal);
  EXPECT_EQ(h.sched->stats().cached_blocks, 0);
  fail = false;
  Collected b;
  ASSERT_TRUE(h.sched->submit(with_prompt(prompt, 3), collect(b)).is_ok());
  while (h.sched->step()) {
  }
  EXPECT_TRUE(b.finished && b.status.is_ok());
  EXPECT_EQ(h.sched->stats().prefix_hit_tokens, 0);
  EXPECT_EQ(h.sched->stats().cached_blocks, 2);  // 9 prompt + 2 fed-back tokens computed: 2 whole blocks
}

// A prompt whose tokens are to be scored is computed whole, even when its
// prefix is cached (the cached blocks hold K/V, not logits), and gives the
// same scores as without the cache; a step carries at most
// max_prompt_logprob_rows of them; preempted and recomputed, each prompt
// token is still scored exactly once, in order.
TEST(Scheduler, PromptLogprobsComputeCachedPrefixesAndCountEachTokenOnce) {
  const auto& m = testing::tiny_model("tiny-mixtral");
  const auto prompt = *m.ck.tokenizer->encode("a prompt to be scored token by token, twice over, on a small cache");
  ASSERT_GE(prompt.size(), 12u);
  struct Scores {
    std::vector<int64_t> index;
    std::vector<float> logprob;
  };
  auto scoring = [&](Collected& c, Scores& s) {
    auto cb = collect(c);
    cb.on_prompt_logprobs = [&s](int64_t i, const engine::TokenLogprobs& lp) {
      s.index.push_back(i);
      s.logprob.push_back(lp.logprob);
    };
    return cb;
  };
  auto req = with_prompt(prompt, 3);
  req.prompt_logprobs = 0;
  std::vector<int64_t> all(prompt.size() - 1);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i) + 1;

  int64_t widest = 0;
  Harness h(64, 4);
  h.sched = std::make_unique<engine::Scheduler>(
      m.ck.config, *h.runner, *h.cache, *h.local,
      engine::SchedulerOptions{.max_prompt_logprob_rows = 5,
                               .forward = [&](const engine::ForwardBatch& b, std::vector<float>& logits) {
                                 widest = std::max<int64_t>(widest, static_cast<int64_t>(b.logits_rows.size()));
                                 return engine::forward_pipelined(*h.runner, b, 1, *h.local, logits);
                               }});
  run_alone(h, with_prompt(prompt, 3));  // caches the prompt's blocks
  const int64_t hits = h.sched->stats().prefix_hit_tokens;
  Collected c;
  Scores first;
  ASSERT_TRUE(h.sched->submit(req, scoring(c, first)).is_ok());
  while (h.sched->step()) {
  }
  ASSERT_TRUE(c.finished && c.status.is_ok()) << c.status.to_string();
  EXPECT_EQ(first.index, all);
  EXPECT_EQ(h.sched->stats().prefix_hit_tokens, hits) << "a scored prompt took cached blocks";
  EXPECT_LE(widest, 5 + 1);  // the scored rows plus the row that samples

  // Preempted by memory pressure: a 7-block cache holds one of these (19 + 8 tokens) at a time.
  Harness tight(7, 4, {.max_batch_tokens = 4});
  std::vector<Collected> got(3);
  std::vector<Scores> scores(3);
  for (int i = 0; i < 3; ++i) {
    auto r = req;
    r.max_tokens = 8;
    ASSERT_TRUE(tight.sched->submit(r, scoring(got[static_cast<size_t>(i)], scores[static_cast<size_t>(i)])).is_ok());
  }
  while (tight.sched->step()) {
  }
  EXPECT_GT(tight.sched->stats().preemptions, 0);
  for (int i = 0; i < 3; ++i) {
    const auto& g = got[static_cast<size_t>(i)];
    EXPECT_TRUE(g.finished && g.status.is_ok()) << g.status.to_string();
    EXPECT_EQ(scores[static_cast<size_t>(i)].index, all) << "request " << i;
    for (size_t k = 0; k < all.size(); ++k)
      EXPECT_NEAR(scores[static_cast<size_t>(i)].logprob[k], first.logprob[k], 1e-4) << "request " << i;
  }
}

// Priorities (lower first): with one sequence at a time, a more urgent
// arrival preempts the running one and finishes first; equal priorities keep
// arrival order; every output is what the request gives alone.
TEST(Scheduler, MoreUrgentRequestsPreemptAndFinishFirst) {
  const auto& m = testing::tiny_model("tiny-mixtral");
  Harness h(64, 4, {.max_running_sequences = 1});
  std::vector<engine::GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) reqs.push_back(request(m, "urgency " + std::to_string(i), 6));
  reqs[1].priority = 1;   // less urgent than 0 and 3
  reqs[2].priority = -1;  // the most urgent: preempts 0
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : reqs) {
    Harness one(64);
    alone.push_back(run_alone(one, r));
  }
  std::vector<Collected> got(reqs.size());
  std::vector<int> finished_order;
  auto submit = [&](size_t i) {
    auto cb = collect(got[i]);
    auto inner = cb.on_finish;
    cb.on_finish = [&, i, inner](const Status& st, engine::FinishReason r) {
      finished_order.push_back(static_cast<int>(i));
      inner(st, r);
    };
    ASSERT_TRUE(h.sched->submit(reqs[i], std::move(cb)).is_ok());
  };
  submit(0);
  h.sched->step();
  h.sched->step();  // request 0 is decoding
  submit(1);
  submit(2);
  submit(3);
  int steps = 0;
  while (h.sched->step()) ASSERT_LT(++steps, 1000);
  EXPECT_EQ(finished_order, (std::vector<int>{2, 0, 3, 1}));
  EXPECT_GE(h.sched->stats().preemptions, 1);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_TRUE(got[i].finished && got[i].status.is_ok());
    EXPECT_EQ(got[i].tokens, alone[i]) << "request " << i;
  }
}

// When the KV cache is full, a more urgent request takes the blocks of a less
// urgent running one instead of waiting for it to finish.
TEST(Scheduler, MoreUrgentRequestsTakeKvBlocksFromLessUrgentOnes) {
  Harness h(8, 4);  // 32 slots: one request of ~27 tokens at a time
  std::vector<int32_t> prompt(20, 5);
  auto low = with_prompt(prompt, 6);
  low.priority = 3;
  auto high = with_prompt(std::vector<int32_t>(20, 9), 6);
  Collected a, b;
  std::vector<char> order;
  auto cb_a = collect(a);
  cb_a.on_finish = [&](const Status& st, engine::FinishReason) {
    order.push_back('a');
    a.finished = true;
    a.status = st;
  };
  auto cb_b = collect(b);
  cb_b.on_finish = [&](const Status& st, engine::FinishReason) {
    order.push_back('b');
    b.finished = true;
    b.status = st;
  };
  ASSERT_TRUE(h.sched->submit(low, std::move(cb_a)).is_ok());
  h.sched->step();
  ASSERT_TRUE(h.sched->submit(high, std::move(cb_b)).is_ok());
  int steps = 0;
  while (h.sched->step()) ASSERT_LT(++steps, 1000);
  EXPECT_EQ(order, (std::vector<char>{'b', 'a'}));
  EXPECT_TRUE(a.status.is_ok() && b.status.is_ok());
  // Once, not preempted, re-admitted and preempted again in the same step.
  EXPECT_EQ(h.sched->stats().preemptions, 1);
  Harness alone(8, 4);
  EXPECT_EQ(a.tokens, run_alone(alone, low));
  // A request that would not fit even in the blocks of every less urgent one
  // preempts nothing (here: more urgent than the 4-block one, less than the
  // other; it needs all 8 blocks).
  Harness room(8, 4);
  Collected c, d;
  ASSERT_TRUE(room.sched->submit(with_prompt(std::vector<int32_t>(6, 5), 4), collect(c)).is_ok());
  auto big_low = with_prompt(std::vector<int32_t>(14, 7), 4);
  big_low.priority = 2;
  ASSERT_TRUE(room.sched->submit(big_low, collect(d)).is_ok());
  room.sched->step();  // both running: 2 + 4 blocks held, 2 free
  Collected e;
  auto urgent = with_prompt(std::vector<int32_t>(28, 9), 2);
  urgent.priority = 1;
  ASSERT_TRUE(room.sched->submit(urgent, collect(e)).is_ok());
  room.sched->step();
  EXPECT_EQ(room.sched->stats().preemptions, 0) << "preempted a sequence for a request that still could not run";
  while (room.sched->step()) {
  }
  EXPECT_TRUE(c.finished && d.finished && e.finished);

  // Nor one whose would-be victim holds only blocks the urgent request shares
  // (its cached prefix): preempting it would free nothing.
  Harness shared(8, 4);
  std::vector<int32_t> prefix(16);
  for (size_t i = 0; i < prefix.size(); ++i) prefix[i] = static_cast<int32_t>(20 + i);
  auto holder = with_prompt(prefix, 4);  // 4 whole blocks, cached after its first step
  holder.priority = 3;
  auto other = with_prompt(std::vector<int32_t>(7, 5), 2);  // 2 blocks, as urgent as it gets here
  Collected f, g, u;
  ASSERT_TRUE(shared.sched->submit(other, collect(f)).is_ok());
  ASSERT_TRUE(shared.sched->submit(holder, collect(g)).is_ok());
  shared.sched->step();  // 6 blocks held, 2 free
  auto extends = prefix;
  for (int i = 0; i < 12; ++i) extends.push_back(60 + i);
  auto wants_more = with_prompt(extends, 1);  // 8 blocks: the 4 cached ones + 4
  wants_more.priority = 1;
  ASSERT_TRUE(shared.sched->submit(wants_more, collect(u)).is_ok());
  shared.sched->step();
  EXPECT_EQ(shared.sched->stats().preemptions, 0) << "preempted a sequence whose blocks the request shares";
  while (shared.sched->step()) {
  }
  EXPECT_TRUE(f.finished && g.finished && u.finished);
  EXPECT_TRUE(u.status.is_ok()) << u.status.to_string();
}

}  // namespace
}  // namespace tandem
