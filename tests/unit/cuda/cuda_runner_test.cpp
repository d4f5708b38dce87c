// The GPU forward against the CPU one: the same prefill of ragged sequences
// over scattered KV blocks, then decode steps, give the same logits to FP32
// rounding, on a Mixtral-style and a Qwen3-MoE-style model (dense first layer,
// per-head q/k norms).
#include "tandem/engine/cuda_runner.h"

#include <unistd.h>

#include <filesystem>

#include "cuda_test_util.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/make_model.h"

namespace tandem::engine {
namespace {

using kernels::cuda::testing::CudaTest;

class CudaRunnerTest : public CudaTest, public ::testing::WithParamInterface<std::string> {};

// The batch of `lens[i]` new tokens per sequence after `done[i]` earlier ones,
// with logits for every sequence's last token.
ForwardBatch make_batch(const std::vector<std::vector<int32_t>>& tables, const std::vector<int>& done,
                        const std::vector<int>& lens, int64_t block_size, int64_t max_blocks, int seed) {
  ForwardBatch b;
  b.max_blocks_per_seq = max_blocks;
  for (size_t s = 0; s < tables.size(); ++s) {
    for (int64_t j = 0; j < max_blocks; ++j)
      b.block_tables.push_back(j < static_cast<int64_t>(tables[s].size()) ? tables[s][static_cast<size_t>(j)] : 0);
    for (int t = 0; t < lens[s]; ++t) {
      const int pos = done[s] + t;
      b.tokens.push_back(static_cast<int32_t>((pos * 31 + static_cast<int>(s) * 17 + seed) % 250 + 3));
      b.positions.push_back(pos);
      b.seq_of_token.push_back(static_cast<int32_t>(s));
      b.slots.push_back(static_cast<int64_t>(tables[s][static_cast<size_t>(pos / block_size)]) * block_size +
                        pos % block_size);
      b.ctx_len.push_back(pos + 1);
    }
    b.logits_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
  }
  return b;
}

TEST_P(CudaRunnerTest, LogitsMatchTheCpuRunner) {
  const std::string dir = ::testing::TempDir() + "/cuda_runner_" + GetParam() + "_" + std::to_string(getpid());
  ASSERT_TRUE(model::make_model({.preset = GetParam(), .seed = 5, .out_dir = dir, .dtype = DType::kF32}).is_ok());
  auto ck = model::Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  const auto& c = ck->config;
  auto w = model::ModelWeights::load(c, *ck->weights);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();

  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  auto cpu_cache = KvCache::create(shape, shape.bytes());
  ASSERT_TRUE(cpu_cache.is_ok());
  ModelRunner cpu(c, **w, cpu_cache->get());
  auto gpu = CudaModelRunner::create(c, **w, shape);
  ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();

  // Non-contiguous, interleaved blocks, the same ids in both caches.
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60}, {12, 48, 3, 27}};
  const int64_t max_blocks = 5;
  std::vector<int> done = {0, 0, 0};
  std::vector<int> lens = {13, 1, 9};  // ragged prefill, one sequence of a single token
  for (int step = 0; step < 4; ++step) {
    const ForwardBatch b = make_batch(tables, done, lens, shape.block_size, max_blocks, step);
    std::vector<float> want, got;
    cpu.forward(b, want);
    TANDEM_ASSERT_OK((*gpu)->forward(b, got));
    ASSERT_EQ(got.size(), want.size());
    double err = 0, ref = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
      ref = std::max(ref, std::abs(static_cast<double>(want[i])));
    }
    EXPECT_LE(err, 1e-4 * std::max(ref, 1.0)) << GetParam() << " step " << step << ": max |Δ| " << err;
    for (size_t s = 0; s < done.size(); ++s) done[s] += lens[s];
    lens = {1, 1, 1};  // decode
  }
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Presets, CudaRunnerTest, ::testing::Values("tiny-mixtral", "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST_F(CudaTest, CudaRunnerRefusesAKvCacheOfAnotherShape) {
  const std::string dir = ::testing::TempDir() + "/cuda_runner_shape_" + std::to_string(getpid());
  ASSERT_TRUE(model::make_model({.preset = "tiny-mixtral", .seed = 1, .out_dir = dir, .dtype = DType::kF32}).is_ok());
  auto ck = model::Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok());
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  ASSERT_TRUE(w.is_ok());
  const KvCacheShape wrong{ck->config.num_layers + 1, 8, 4, ck->config.num_kv_heads, ck->config.head_dim};
  auto gpu = CudaModelRunner::create(ck->config, **w, wrong);
  EXPECT_EQ(gpu.status().code(), StatusCode::kInvalidArgument) << gpu.status().to_string();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tandem::engine
