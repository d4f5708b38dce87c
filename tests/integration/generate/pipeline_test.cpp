// Ping-pong micro-batching: splitting a step into m micro-batches, with the
// experts completing asynchronously, gives the same tokens as m = 1.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "tandem/engine/engine.h"
#include "tandem/engine/expert_executor.h"
#include "test_model.h"

namespace tandem {
namespace {

// Runs the experts only when the pipeline waits for them, the way a remote
// executor completes late: reading the output before wait() would see zeros.
class DeferredExecutor : public engine::ExpertExecutor {
 public:
  explicit DeferredExecutor(engine::ModelRunner& runner) : runner_(runner) {}
  Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* idx, const float* w,
                  float* out) override {
    auto key = std::make_pair(layer, mb);
    if (pending_.count(key)) return internal_error("dispatched twice");
    pending_[key] = {moe_in, n, idx, w, out};
    ++dispatches;
    return Status::ok();
  }
  Status wait(int64_t layer, int mb) override {
    auto it = pending_.find({layer, mb});
    if (it == pending_.end()) return internal_error("wait without dispatch");
    const Call& c = it->second;
    runner_.experts(layer, c.in, c.n, c.idx, c.w, c.out);
    pending_.erase(it);
    return Status::ok();
  }
  int dispatches = 0;
  bool drained() const { return pending_.empty(); }

 private:
  struct Call {
    const float* in;
    int64_t n;
    const int32_t* idx;
    const float* w;
    float* out;
  };
  engine::ModelRunner& runner_;
  std::map<std::pair<int64_t, int>, Call> pending_;
};

std::vector<engine::GenerationRequest> requests(const testing::LoadedModel& m, int count) {
  std::vector<engine::GenerationRequest> reqs;
  for (int i = 0; i < count; ++i) {
    engine::GenerationRequest r;
    r.prompt = *m.ck.tokenizer->encode("request number " + std::to_string(i) + std::string(i % 4, '!'));
    r.max_tokens = 6;
    r.sampling.temperature = i % 2 ? 0.8f : 0.0f;
    r.seed = 100 + i;
    reqs.push_back(r);
  }
  return reqs;
}

class PipelineOnPreset : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(PipelineOnPreset, MicroBatchedEqualsSingleBatch) {
  const auto& [preset, m] = GetParam();
  const auto& model = testing::tiny_model(preset);
  auto reqs = requests(model, 7);
  auto one = engine::Engine::create(model.ck.config, *model.weights, {.num_blocks = 128, .block_size = 4});
  auto many = engine::Engine::create(model.ck.config, *model.weights,
                                     {.num_blocks = 128, .block_size = 4, .micro_batches = m});
  auto a = (*one)->generate(reqs);
  auto b = (*many)->generate(reqs);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ((*a)[i].tokens, (*b)[i].tokens) << "request " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, PipelineOnPreset,
                         ::testing::Combine(::testing::Values("tiny-mixtral", "tiny-qwen3-moe"), ::testing::Values(2, 3)),
                         [](const auto& info) {
                           std::string n = std::get<0>(info.param) + "_m" + std::to_string(std::get<1>(info.param));
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Pipeline, AsynchronousExpertsGiveTheSameTokens) {
  const auto& model = testing::tiny_model("tiny-qwen3-moe");
  auto reqs = requests(model, 5);
  auto ref = engine::Engine::create(model.ck.config, *model.weights, {.num_blocks = 128, .block_size = 4});
  auto want = (*ref)->generate(reqs);
  ASSERT_TRUE(want.is_ok());
  auto eng = engine::Engine::create(model.ck.config, *model.weights,
                                    {.num_blocks = 128, .block_size = 4, .micro_batches = 3});
  // A second runner holds the experts, as an expert node would.
  engine::ModelRunner expert_side(model.ck.config, *model.weights, nullptr);
  DeferredExecutor deferred(expert_side);
  (*eng)->set_expert_executor(&deferred);
  auto got = (*eng)->generate(reqs);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ((*want)[i].tokens, (*got)[i].tokens) << "request " << i;
  EXPECT_TRUE(deferred.drained());
  EXPECT_GT(deferred.dispatches, 0);
}

// A prefill batch of `seqs` sequences of `len` tokens, sequence s in KV block s
// (blocks of 4 tokens), with logits for each sequence's last token.
engine::ForwardBatch prefill_batch(int seqs, int len) {
  engine::ForwardBatch b;
  b.max_blocks_per_seq = 1;
  for (int s = 0; s < seqs; ++s) {
    b.block_tables.push_back(s);
    for (int t = 0; t < len; ++t) {
      b.tokens.push_back(5 + t + s);
      b.positions.push_back(t);
      b.seq_of_token.push_back(s);
      b.slots.push_back(s * 4 + t);
      b.ctx_len.push_back(t + 1);
    }
    b.logits_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
  }
  return b;
}

// tiny-mixtral's CPU runner over a cache of 16 blocks of 4 tokens.
struct TinyRunner {
  const testing::LoadedModel& model = testing::tiny_model("tiny-mixtral");
  std::unique_ptr<engine::KvCache> cache =
      engine::KvCache::create({config().num_layers, 16, 4, config().num_kv_heads, config().head_dim}, size_t{1} << 30)
          .value();
  engine::ModelRunner runner{config(), *model.weights, cache.get()};
  const model::ModelConfig& config() const { return model.ck.config; }
};

// The time breakdown accounts for one step: the experts run inside wait()
// here (a late executor), so a slow expert shows up as wait time, and the
// parts never add up to more than the step.
TEST(Pipeline, TimesShowWhereTheStepWent) {
  TinyRunner tiny;
  const auto& c = tiny.config();
  engine::ModelRunner& runner = tiny.runner;
  struct SlowExperts : DeferredExecutor {
    using DeferredExecutor::DeferredExecutor;
    Status wait(int64_t layer, int mb) override {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return DeferredExecutor::wait(layer, mb);
    }
  } slow(runner);
  const engine::ForwardBatch b = prefill_batch(2, 3);
  engine::PipelineTimes t;
  std::vector<float> logits;
  engine::CpuForwardStages stages(runner);
  ASSERT_TRUE(engine::forward_pipelined(stages, b, 2, slow, logits, &t).is_ok());
  EXPECT_EQ(t.steps, 1);
  EXPECT_EQ(logits.size(), 2 * static_cast<size_t>(c.vocab_size));
  // Two micro-batches, every layer MoE: 2 * layers waits of >= 5 ms.
  EXPECT_GE(t.wait_s, 2 * c.num_layers * 0.005);
  EXPECT_GT(t.attend_s, 0);
  EXPECT_GT(t.head_s, 0);
  EXPECT_LE(t.attend_s + t.dispatch_s + t.wait_s + t.land_s + t.head_s, t.total_s * 1.0001);
  engine::PipelineTimes sum;
  sum += t;
  sum += t;
  EXPECT_EQ(sum.steps, 2);
  EXPECT_DOUBLE_EQ(sum.wait_s, 2 * t.wait_s);
}

// A GPU data plane wants device memory; the CPU stages cannot give it and say
// so before any work is done.
TEST(Pipeline, CpuStagesRefuseADeviceResidentExecutor) {
  TinyRunner tiny;
  struct OnDevice : DeferredExecutor {
    using DeferredExecutor::DeferredExecutor;
    bool device_resident() const override { return true; }
  } gpu_plane(tiny.runner);
  engine::CpuForwardStages stages(tiny.runner);
  const engine::ForwardBatch b = prefill_batch(1, 1);
  std::vector<float> logits;
  const Status st = engine::forward_pipelined(stages, b, 1, gpu_plane, logits);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
  EXPECT_NE(st.message().find("cuda_ipc"), std::string::npos) << st.to_string();
  EXPECT_EQ(gpu_plane.dispatches, 0);
}

TEST(Pipeline, SplitKeepsSequencesWholeAndBalanced) {
  engine::ForwardBatch b;
  b.max_blocks_per_seq = 2;
  const std::vector<int> lens{5, 1, 1, 1, 4};
  for (size_t s = 0; s < lens.size(); ++s) {
    b.block_tables.push_back(static_cast<int32_t>(10 * s));
    b.block_tables.push_back(static_cast<int32_t>(10 * s + 1));
    for (int p = 0; p < lens[s]; ++p) {
      b.tokens.push_back(static_cast<int32_t>(s));
      b.positions.push_back(p);
      b.seq_of_token.push_back(static_cast<int32_t>(s));
      b.slots.push_back(p);
      b.ctx_len.push_back(p + 1);
    }
    b.logits_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
  }
  auto mbs = engine::split_micro_batches(b, 3);
  ASSERT_EQ(mbs.size(), 3u);
  size_t tokens = 0, rows = 0;
  for (const auto& mb : mbs) {
    tokens += mb.tokens.size();
    rows += mb.logits_rows.size();
    for (size_t t = 0; t < mb.tokens.size(); ++t) {
      // The block table row a token points at is its own sequence's.
      EXPECT_EQ(mb.block_tables[mb.seq_of_token[t] * 2], 10 * mb.tokens[t]);
    }
  }
  EXPECT_EQ(tokens, b.tokens.size());
  EXPECT_EQ(rows, b.logits_rows.size());
  EXPECT_EQ(engine::split_micro_batches(b, 99).size(), lens.size());  // at most one per sequence
}

}  // namespace
}  // namespace tandem
