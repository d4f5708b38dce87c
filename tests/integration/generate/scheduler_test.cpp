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

}  // namespace
}  // namespace tandem
