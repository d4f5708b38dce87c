// The GPU forward against the CPU one: the same prefill of ragged sequences
// over scattered KV blocks, then decode steps, give the same logits to FP32
// rounding, on a Mixtral-style and a Qwen3-MoE-style model (dense first layer,
// per-head q/k norms).
#include "tandem/engine/cuda_runner.h"
#include "tandem/engine/expert_executor.h"

#include <unistd.h>

#include <filesystem>
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

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

// A make-model checkpoint (FP32 unless asked) in a temporary directory, removed at the end.
struct GeneratedModel {
  std::string dir;
  model::Checkpoint ck;
  bool ok = false;

  GeneratedModel(const std::string& preset, uint64_t seed, const std::string& tag, DType dtype = DType::kF32)
      : dir(::testing::TempDir() + "/cuda_" + tag + "_" + preset + "_" + std::to_string(getpid())) {
    const Status made = model::make_model({.preset = preset, .seed = seed, .out_dir = dir, .dtype = dtype});
    EXPECT_TRUE(made.is_ok()) << made.to_string();
    auto opened = model::Checkpoint::open(dir);
    EXPECT_TRUE(opened.is_ok()) << opened.status().to_string();
    if (!made.is_ok() || !opened.is_ok()) return;
    ck = std::move(opened).value();
    ok = true;
  }
  ~GeneratedModel() { std::filesystem::remove_all(dir); }
  std::unique_ptr<model::ModelWeights> weights(const model::LoadOptions& options = {}) {
    auto w = model::ModelWeights::load(ck.config, *ck.weights, options);
    EXPECT_TRUE(w.is_ok()) << w.status().to_string();
    return w.is_ok() ? std::move(w).value() : nullptr;
  }
};

TEST_P(CudaRunnerTest, LogitsMatchTheCpuRunner) {
  GeneratedModel m(GetParam(), 5, "runner");
  ASSERT_TRUE(m.ok);
  const auto& c = m.ck.config;
  auto w = m.weights();
  ASSERT_TRUE(w);

  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  auto cpu_cache = KvCache::create(shape, shape.bytes());
  ASSERT_TRUE(cpu_cache.is_ok());
  ModelRunner cpu(c, *w, cpu_cache->get());
  auto gpu = CudaModelRunner::create(c, *w, shape);
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
}

INSTANTIATE_TEST_SUITE_P(Presets, CudaRunnerTest, ::testing::Values("tiny-mixtral", "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

double max_rel_diff(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, ref = 1.0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
    ref = std::max(ref, std::abs(static_cast<double>(want[i])));
  }
  return got.size() == want.size() ? err / ref : 1e30;
}

// A ragged prefill then two decode steps through the GPU stages' ping-pong
// pipeline with `m` micro-batches, against the CPU runner's forward.
void pipeline_matches_cpu(ModelRunner& cpu, CudaModelRunner& gpu, ExpertExecutor& experts, int m,
                          const std::vector<std::vector<int32_t>>& tables, int64_t block_size,
                          const std::string& what) {
  std::vector<int> done = {0, 0, 0};
  std::vector<int> lens = {13, 1, 9};
  for (int step = 0; step < 3; ++step) {
    const ForwardBatch b = make_batch(tables, done, lens, block_size, 5, step);
    std::vector<float> want, got;
    cpu.forward(b, want);
    TANDEM_ASSERT_OK(forward_pipelined(gpu.stages(), b, m, experts, got));
    EXPECT_LE(max_rel_diff(got, want), 1e-4) << what << " m=" << m << " step " << step;
    for (size_t s2 = 0; s2 < done.size(); ++s2) done[s2] += lens[s2];
    lens = {1, 1, 1};
  }
}

// An attention node on the GPU: the runner holds only the attention side, the
// experts run elsewhere (here: a CPU runner behind the executor interface),
// and the ping-pong pipeline over the GPU stages gives the CPU's logits for
// m = 1, 2, 3 through prefill and decode.
TEST_P(CudaRunnerTest, AttentionSideStagesMatchTheCpuPipeline) {
  GeneratedModel gm(GetParam(), 7, "stages");
  ASSERT_TRUE(gm.ok);
  const auto& c = gm.ck.config;
  auto all = gm.weights();
  auto attention_side = gm.weights({.attention_side = true, .expert_begin = 0, .expert_end = 0});
  ASSERT_TRUE(all && attention_side);

  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60}, {12, 48, 3, 27}};
  for (int m = 1; m <= 3; ++m) {
    auto cpu_cache = KvCache::create(shape, shape.bytes());
    ASSERT_TRUE(cpu_cache.is_ok());
    ModelRunner cpu(c, *all, cpu_cache->get());
    LocalExpertExecutor experts(cpu);
    auto gpu = CudaModelRunner::create(c, *attention_side, shape);
    ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
    pipeline_matches_cpu(cpu, **gpu, experts, m, tables, shape.block_size, GetParam());
  }
}

// A device-resident data plane stand-in: the experts of another GPU runner,
// fed straight from the attention side's device buffers (as cuda_ipc and nccl
// hand them over) and added into `out` on the same stream.
class DeviceLocalExperts : public ExpertExecutor {
 public:
  DeviceLocalExperts(CudaModelRunner& experts, int64_t hidden, int64_t max_rows)
      : experts_(experts),
        hidden_(hidden),
        rows_(identity(max_rows)),
        ones_(std::vector<float>(static_cast<size_t>(max_rows), 1.0f)) {}
  bool device_resident() const override { return true; }
  Status dispatch(int64_t layer, int, const float* moe_in, int64_t n, const int32_t* topk_idx, const float* topk_w,
                  float* out) override {
    ++dispatches;
    TANDEM_ASSIGN_OR_RETURN(const float* sum, experts_.experts_device(layer, moe_in, n, topk_idx, topk_w));
    return kernels::cuda::scatter_add_weighted(sum, rows_.get(), ones_.get(), out, n, hidden_);
  }
  Status wait(int64_t, int) override { return Status::ok(); }
  int dispatches = 0;

 private:
  static std::vector<int32_t> identity(int64_t n) {
    std::vector<int32_t> rows(static_cast<size_t>(n));
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
    return rows;
  }
  CudaModelRunner& experts_;
  int64_t hidden_;
  kernels::cuda::testing::DeviceBuffer<int32_t> rows_;
  kernels::cuda::testing::DeviceBuffer<float> ones_;
};

// The attention-side stages with the device-resident hand-off (no pinned
// staging: moe_in and the experts' sum stay on the GPU) give the CPU's
// logits for m = 1, 2, 3, as the cluster's cuda_ipc and nccl paths rely on.
TEST_P(CudaRunnerTest, DeviceExchangeStagesMatchTheCpuPipeline) {
  GeneratedModel gm(GetParam(), 8, "device_stages");
  ASSERT_TRUE(gm.ok);
  const auto& c = gm.ck.config;
  auto all = gm.weights();
  auto attention_side = gm.weights({.attention_side = true, .expert_begin = 0, .expert_end = 0});
  auto expert_side = gm.weights({.attention_side = false, .expert_begin = 0, .expert_end = c.moe.num_experts});
  ASSERT_TRUE(all && attention_side && expert_side);
  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60}, {12, 48, 3, 27}};
  auto gpu_experts = CudaModelRunner::create_expert_side(c, *expert_side);
  ASSERT_TRUE(gpu_experts.is_ok()) << gpu_experts.status().to_string();
  for (int m = 1; m <= 3; ++m) {
    auto cpu_cache = KvCache::create(shape, shape.bytes());
    ASSERT_TRUE(cpu_cache.is_ok());
    ModelRunner cpu(c, *all, cpu_cache->get());
    auto gpu = CudaModelRunner::create(c, *attention_side, shape);
    ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
    DeviceLocalExperts experts(**gpu_experts, c.hidden_size, 64);
    pipeline_matches_cpu(cpu, **gpu, experts, m, tables, shape.block_size, GetParam());
    EXPECT_GT(experts.dispatches, 0) << "m=" << m;
  }
}

void expert_side_matches_cpu(const std::string& preset, ExpertGemm gemm);

// An expert node on the GPU: a slice of the experts, host in and host out,
// equal to the CPU runner's experts over the same slice (tokens routed
// elsewhere contribute nothing; a token with no local expert gets zeros),
// with per-expert GEMMs and with the device-offset kernel (which the runner
// uses for the smaller n).
TEST_P(CudaRunnerTest, ExpertSideMatchesTheCpuExperts) {
  for (ExpertGemm gemm : {ExpertGemm::kPerExpert, ExpertGemm::kDevice}) {
    SCOPED_TRACE(expert_gemm_name(gemm));
    expert_side_matches_cpu(GetParam(), gemm);
  }
}

void expert_side_matches_cpu(const std::string& preset, ExpertGemm gemm) {
  GeneratedModel gm(preset, 3, "experts");
  ASSERT_TRUE(gm.ok);
  const auto& c = gm.ck.config;
  const int64_t E = c.moe.num_experts, K = c.moe.top_k, H = c.hidden_size;
  const int64_t first = 1, last = std::max<int64_t>(2, E / 2);
  auto slice = gm.weights({.attention_side = false, .expert_begin = first, .expert_end = last});
  ASSERT_TRUE(slice);
  ModelRunner cpu(c, *slice, nullptr);
  auto gpu = CudaModelRunner::create_expert_side(c, *slice, {.experts = gemm});
  ASSERT_TRUE(gpu.is_ok()) << gpu.status().to_string();
  std::mt19937 g(11);
  std::normal_distribution<float> nd;
  int64_t layer = 0;
  while (!c.layer_is_moe[static_cast<size_t>(layer)]) ++layer;
  for (int64_t n : {1, 7, 64}) {
    std::vector<float> x(static_cast<size_t>(n * H)), w(static_cast<size_t>(n * K));
    std::vector<int32_t> ids(static_cast<size_t>(n * K));
    for (auto& v : x) v = nd(g);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < K; ++j) {
        ids[static_cast<size_t>(t * K + j)] = static_cast<int32_t>((t * 5 + j * 3) % E);  // distinct within a token
        w[static_cast<size_t>(t * K + j)] = 0.1f + 0.2f * static_cast<float>(j);
      }
    std::vector<float> want(x.size(), 0.0f), got(x.size(), 99.0f);
    cpu.experts(layer, x.data(), n, ids.data(), w.data(), want.data());
    const uint64_t before = (*gpu)->device_expert_layers();
    TANDEM_ASSERT_OK((*gpu)->experts(layer, x.data(), n, ids.data(), w.data(), got.data()));
    EXPECT_LE(max_rel_diff(got, want), 1e-4) << preset << " n=" << n;
    // The device-offset kernel runs while experts average few rows.
    const bool few_rows = n * K <= kDeviceExpertRowsPerExpert * E;
    EXPECT_EQ((*gpu)->device_expert_layers() - before, gemm == ExpertGemm::kDevice && few_rows ? 1u : 0u)
        << preset << " n=" << n;
  }
  // The attention side is not there: the colocated forward says so.
  std::vector<float> logits;
  const Status st = (*gpu)->forward(ForwardBatch{}, logits);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
}

// Split logits (greedy rows as device-side argmax tokens, the others copied
// back packed): the colocated forward and the attention-side stages (m = 2)
// give the argmax and the rows of their full logits, for a mix of flags.
TEST_P(CudaRunnerTest, SplitLogitsMatchTheFullLogits) {
  GeneratedModel gm(GetParam(), 12, "split");
  ASSERT_TRUE(gm.ok);
  const auto& c = gm.ck.config;
  auto all = gm.weights();
  auto attention_side = gm.weights({.attention_side = true, .expert_begin = 0, .expert_end = 0});
  ASSERT_TRUE(all && attention_side);
  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60}, {12, 48, 3, 27}};
  auto full_runner = CudaModelRunner::create(c, *all, shape);
  auto split_runner = CudaModelRunner::create(c, *all, shape);
  auto stages_runner = CudaModelRunner::create(c, *attention_side, shape);
  ASSERT_TRUE(full_runner.is_ok() && split_runner.is_ok() && stages_runner.is_ok());
  ModelRunner cpu_experts(c, *all, nullptr);
  LocalExpertExecutor experts(cpu_experts);
  const auto V = static_cast<size_t>(c.vocab_size);
  std::vector<int> done = {0, 0, 0};
  std::vector<int> lens = {6, 1, 9};
  const std::vector<std::vector<uint8_t>> flags = {{1, 0, 1}, {0, 0, 0}, {1, 1, 1}};
  for (int step = 0; step < 3; ++step) {
    const ForwardBatch b = make_batch(tables, done, lens, shape.block_size, 5, step);
    const std::vector<uint8_t>& greedy = flags[static_cast<size_t>(step)];
    std::vector<float> full, packed, staged_packed;
    std::vector<int32_t> tokens, staged_tokens;
    TANDEM_ASSERT_OK((*full_runner)->forward(b, full));
    TANDEM_ASSERT_OK((*split_runner)->forward_split(b, greedy, packed, tokens));
    TANDEM_ASSERT_OK(forward_pipelined_split((*stages_runner)->stages(), b, 2, experts, greedy, staged_packed,
                                             staged_tokens));
    ASSERT_EQ(tokens.size(), greedy.size());
    ASSERT_EQ(staged_tokens.size(), greedy.size());
    std::vector<float> want_packed;
    size_t k = 0;
    for (size_t r = 0; r < greedy.size(); ++r) {
      const float* row = full.data() + r * V;
      if (greedy[r]) {
        // An argmax of the full row (the runs may differ in the last bits:
        // the experts' scatter adds atomically, so a near-tie may go either way).
        const float top = row[kernels::cpu::argmax(row, c.vocab_size)];
        const float slack = 1e-4f * std::max(1.0f, std::fabs(top));
        for (const int32_t t : {tokens[r], staged_tokens[r]}) {
          ASSERT_GE(t, 0) << GetParam() << " step " << step << " row " << r;
          ASSERT_LT(t, c.vocab_size);
          EXPECT_GE(row[t], top - slack) << GetParam() << " step " << step << " row " << r << " token " << t;
        }
      } else {
        EXPECT_EQ(tokens[r], -1);
        EXPECT_EQ(staged_tokens[r], -1);
        want_packed.insert(want_packed.end(), row, row + V);
        ++k;
      }
    }
    ASSERT_EQ(packed.size(), k * V);
    EXPECT_LE(max_rel_diff(packed, want_packed), 1e-5) << GetParam() << " step " << step;
    ASSERT_EQ(staged_packed.size(), k * V);
    EXPECT_LE(max_rel_diff(staged_packed, want_packed), 1e-4) << GetParam() << " stages step " << step;
    for (size_t s2 = 0; s2 < done.size(); ++s2) done[s2] += lens[s2];
    lens = {1, 1, 1};
  }
  // Flags that do not match the rows: an argument error naming them.
  std::vector<float> packed;
  std::vector<int32_t> tokens;
  const Status st = (*split_runner)->forward_split(make_batch(tables, {0, 0, 0}, {1, 1, 1}, 4, 5, 9), {1}, packed,
                                                   tokens);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
}

// The BF16 runner on a BF16 checkpoint (so both sides hold the very same
// weights) tracks the FP32 CPU runner within BF16 activation rounding: the
// colocated forward, the attention-side stages (m = 2) and the expert side.
TEST_P(CudaRunnerTest, Bf16TracksTheCpuRunner) {
  GeneratedModel gm(GetParam(), 9, "bf16", DType::kBF16);
  ASSERT_TRUE(gm.ok);
  const auto& c = gm.ck.config;
  auto all = gm.weights();
  auto attention_side = gm.weights({.attention_side = true, .expert_begin = 0, .expert_end = 0});
  ASSERT_TRUE(all && attention_side);
  const CudaRunnerOptions bf16{.dtype = DType::kBF16};
  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60}, {12, 48, 3, 27}};
  const double bound = 5e-2;  // of the largest |logit|: BF16 keeps 8 bits of mantissa

  auto cpu_cache = KvCache::create(shape, shape.bytes());
  ASSERT_TRUE(cpu_cache.is_ok());
  ModelRunner cpu(c, *all, cpu_cache->get());
  LocalExpertExecutor experts(cpu);
  auto colocated = CudaModelRunner::create(c, *all, shape, bf16);
  ASSERT_TRUE(colocated.is_ok()) << colocated.status().to_string();
  auto attention = CudaModelRunner::create(c, *attention_side, shape, bf16);
  ASSERT_TRUE(attention.is_ok()) << attention.status().to_string();
  std::vector<int> done = {0, 0, 0};
  std::vector<int> lens = {13, 1, 9};
  for (int step = 0; step < 3; ++step) {
    const ForwardBatch b = make_batch(tables, done, lens, shape.block_size, 5, step);
    std::vector<float> want, got, staged;
    cpu.forward(b, want);
    TANDEM_ASSERT_OK((*colocated)->forward(b, got));
    EXPECT_LE(max_rel_diff(got, want), bound) << GetParam() << " colocated step " << step;
    TANDEM_ASSERT_OK(forward_pipelined((*attention)->stages(), b, 2, experts, staged));
    EXPECT_LE(max_rel_diff(staged, want), bound) << GetParam() << " stages step " << step;
    for (size_t s2 = 0; s2 < done.size(); ++s2) done[s2] += lens[s2];
    lens = {1, 1, 1};
  }

  const int64_t H = c.hidden_size, K = c.moe.top_k, E = c.moe.num_experts;
  auto slice = gm.weights({.attention_side = false, .expert_begin = 0, .expert_end = E});
  ASSERT_TRUE(slice);
  auto expert_side = CudaModelRunner::create_expert_side(c, *slice, bf16);
  ASSERT_TRUE(expert_side.is_ok()) << expert_side.status().to_string();
  int64_t layer = 0;
  while (!c.layer_is_moe[static_cast<size_t>(layer)]) ++layer;
  const int64_t n = 16;
  std::vector<float> x(static_cast<size_t>(n * H)), w(static_cast<size_t>(n * K), 0.5f);
  std::vector<int32_t> ids(static_cast<size_t>(n * K));
  std::mt19937 g(5);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(g);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < K; ++j) ids[static_cast<size_t>(t * K + j)] = static_cast<int32_t>((t + j) % E);
  std::vector<float> want(x.size(), 0.0f), got(x.size());
  cpu.experts(layer, x.data(), n, ids.data(), w.data(), want.data());
  TANDEM_ASSERT_OK((*expert_side)->experts(layer, x.data(), n, ids.data(), w.data(), got.data()));
  EXPECT_LE(max_rel_diff(got, want), bound) << GetParam() << " expert side";
}

// Runs the same steps (make_batch of `tables`, `first_lens` new tokens, then
// one per step; `max_blocks(step)` wide) on an eager runner and on one with
// CUDA graphs (both with the same expert GEMMs and dtype), expecting the same
// logits (same kernels; only the scatter's
// atomic order may differ). Returns the graphed runner's graph launches
// before each step and after the last, and the model's layer count.
struct GraphRun {
  std::vector<uint64_t> launches;
  uint64_t whole_layers = 0;  // of the launches, graphs holding a whole layer
  uint64_t layers = 0;
  uint64_t dense_layers = 0;  // layers with a dense MLP, always captured whole
};
GraphRun eager_vs_graphed(const std::string& preset, uint64_t seed, const KvCacheShape& kv,
                          const std::vector<std::vector<int32_t>>& tables, std::vector<int> lens,
                          const std::function<int64_t(int)>& max_blocks, int steps,
                          ExpertGemm experts = ExpertGemm::kPerExpert, DType dtype = DType::kF32) {
  GraphRun run;
  std::vector<uint64_t>& launches = run.launches;
  GeneratedModel gm(preset, seed, "graphs" + std::to_string(seed));
  if (!gm.ok) return run;
  const auto& c = gm.ck.config;
  run.layers = static_cast<uint64_t>(c.num_layers);
  run.dense_layers = static_cast<uint64_t>(std::count(c.layer_is_moe.begin(), c.layer_is_moe.end(), false));
  auto w = gm.weights();
  EXPECT_TRUE(w);
  if (!w) return run;
  const KvCacheShape shape{c.num_layers, kv.num_blocks, kv.block_size, c.num_kv_heads, c.head_dim};
  auto eager = CudaModelRunner::create(c, *w, shape, {.dtype = dtype, .experts = experts});
  auto graphed = CudaModelRunner::create(c, *w, shape, {.dtype = dtype, .cuda_graphs = true, .experts = experts});
  EXPECT_TRUE(eager.is_ok() && graphed.is_ok());
  if (!eager.is_ok() || !graphed.is_ok()) return run;
  std::vector<int> done(tables.size(), 0);
  for (int step = 0; step < steps; ++step) {
    launches.push_back((*graphed)->graph_launches());
    const ForwardBatch b = make_batch(tables, done, lens, shape.block_size, max_blocks(step), step);
    std::vector<float> want, got;
    const Status e = (*eager)->forward(b, want);
    const Status g = (*graphed)->forward(b, got);
    EXPECT_TRUE(e.is_ok() && g.is_ok()) << e.to_string() << " / " << g.to_string();
    // BF16: the atomic order can move a rounding, which later layers amplify.
    EXPECT_LE(max_rel_diff(got, want), dtype == DType::kF32 ? 1e-5 : 2e-2) << preset << " step " << step;
    for (size_t s = 0; s < done.size(); ++s) done[s] += lens[s];
    lens.assign(lens.size(), 1);  // decode from step 1
  }
  launches.push_back((*graphed)->graph_launches());
  run.whole_layers = (*graphed)->whole_layer_graph_launches();
  EXPECT_EQ((*eager)->graph_launches(), 0u);
  return run;
}

// Decode steps replayed from CUDA graphs, including a change of the
// block-table width at step 5, which captures anew.
TEST_P(CudaRunnerTest, CudaGraphsReplayTheEagerDecode) {
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60, 7}, {12, 48, 3, 27}};
  const GraphRun run = eager_vs_graphed(GetParam(), 13, {0, 64, 4, 0, 0}, tables, {5, 3, 4},
                                        [](int step) { return step < 5 ? 4 : 5; }, 8);
  const auto& launches = run.launches;
  ASSERT_EQ(launches.size(), 9u);
  const uint64_t layers = run.layers;
  // Graphs really ran (a failed capture would fall back to eager and still
  // match): step 1 warms a shape, step 2 captures, 3-4 replay; after the
  // reshape, 5 warms, 6 captures, 7 replays.
  EXPECT_EQ(launches[5] - launches[2], 3 * layers) << GetParam();
  EXPECT_EQ(launches[8] - launches[6], 2 * layers) << GetParam();
  // Per-expert GEMMs need the routing on the host: only dense layers replay whole.
  EXPECT_EQ(run.whole_layers, launches[8] / layers * run.dense_layers) << GetParam();
}

// With the experts' routing left on the device, decode layers are captured
// whole (attention, router, experts) and give the eager per-expert logits.
TEST_P(CudaRunnerTest, CudaGraphsReplayWholeLayersWithDeviceExperts) {
  const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60, 7}, {12, 48, 3, 27}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype == DType::kF32 ? "f32" : "bf16");
    const GraphRun run = eager_vs_graphed(GetParam(), 23, {0, 64, 4, 0, 0}, tables, {5, 3, 4},
                                          [](int step) { return step < 5 ? 4 : 5; }, 8, ExpertGemm::kDevice, dtype);
    ASSERT_EQ(run.launches.size(), 9u);
    // Same schedule as above, every replay a whole layer.
    EXPECT_EQ(run.launches[5] - run.launches[2], 3 * run.layers) << GetParam();
    EXPECT_EQ(run.launches[8] - run.launches[6], 2 * run.layers) << GetParam();
    EXPECT_EQ(run.whole_layers, run.launches[8]) << GetParam();
  }
}

// Long contexts (decode attention split over the context, with scratch
// allocated inside the captured graph) on 48 scattered blocks per sequence.
TEST_P(CudaRunnerTest, CudaGraphsReplayLongContextDecode) {
  std::vector<std::vector<int32_t>> tables(2);
  for (int32_t j = 0; j < 96; ++j) tables[static_cast<size_t>(j % 2)].push_back((j * 37 + 11) % 128);
  const GraphRun run = eager_vs_graphed(GetParam(), 17, {0, 128, 16, 0, 0}, tables, {700, 650},
                                        [](int) { return 48; }, 5);
  ASSERT_EQ(run.launches.size(), 6u);
  EXPECT_GE(run.launches[5] - run.launches[2], 2 * run.layers) << GetParam();
}

// Experts as grouped-batched cuBLAS GEMMs, and as our device-offset kernel,
// give the logits of the per-expert GEMMs, FP32 and BF16, over a ragged
// prefill and decode steps (where most experts get no row).
TEST_P(CudaRunnerTest, ExpertGemmsMatchPerExpertGemms) {
  GeneratedModel gm(GetParam(), 19, "batched");
  ASSERT_TRUE(gm.ok);
  const auto& c = gm.ck.config;
  auto w = gm.weights();
  ASSERT_TRUE(w);
  const KvCacheShape shape{c.num_layers, 64, 4, c.num_kv_heads, c.head_dim};
  for (auto [dtype, gemm] : {std::pair{DType::kF32, ExpertGemm::kBatched}, std::pair{DType::kBF16, ExpertGemm::kBatched},
                             std::pair{DType::kF32, ExpertGemm::kDevice}, std::pair{DType::kBF16, ExpertGemm::kDevice}}) {
    SCOPED_TRACE(std::string(expert_gemm_name(gemm)) + (dtype == DType::kF32 ? " f32" : " bf16"));
    auto loop = CudaModelRunner::create(c, *w, shape, {.dtype = dtype});
    auto batched = CudaModelRunner::create(c, *w, shape, {.dtype = dtype, .experts = gemm});
    ASSERT_TRUE(loop.is_ok() && batched.is_ok());
    const std::vector<std::vector<int32_t>> tables = {{9, 2, 40, 17, 5}, {33, 1, 60, 7}, {12, 48, 3, 27}};
    std::vector<int> done = {0, 0, 0};
    std::vector<int> lens = {7, 1, 12};
    for (int step = 0; step < 4; ++step) {
      const ForwardBatch b = make_batch(tables, done, lens, shape.block_size, 5, step);
      std::vector<float> want, got;
      TANDEM_ASSERT_OK((*loop)->forward(b, want));
      TANDEM_ASSERT_OK((*batched)->forward(b, got));
      // The same GEMMs, differently scheduled: FP32 to accumulation order,
      // BF16 additionally to where its roundings fall.
      EXPECT_LE(max_rel_diff(got, want), dtype == DType::kF32 ? 1e-5 : 2e-2) << GetParam() << " step " << step;
      for (size_t s2 = 0; s2 < done.size(); ++s2) done[s2] += lens[s2];
      lens = {1, 1, 1};
    }
  }
}

// A KV cache larger than the GPU is refused at start, saying what was asked
// and what is free, and nothing is left allocated.
TEST_F(CudaTest, CudaRunnerRefusesAKvCacheTheGpuCannotHold) {
  GeneratedModel gm("tiny-mixtral", 1, "oom");
  ASSERT_TRUE(gm.ok);
  auto w = gm.weights();
  ASSERT_TRUE(w);
  const auto& c = gm.ck.config;
  auto info = kernels::cuda::device_info();
  ASSERT_TRUE(info.is_ok());
  const size_t per_block = static_cast<size_t>(c.num_layers * 4 * c.num_kv_heads * c.head_dim) * sizeof(float);
  const int64_t blocks = static_cast<int64_t>(info->memory.total_bytes / per_block) + 1;
  auto gpu = CudaModelRunner::create(c, *w, {c.num_layers, blocks, 4, c.num_kv_heads, c.head_dim});
  ASSERT_EQ(gpu.status().code(), StatusCode::kResourceExhausted) << gpu.status().to_string();
  EXPECT_NE(gpu.status().message().find("KV cache"), std::string::npos) << gpu.status().to_string();
  EXPECT_NE(gpu.status().message().find(" free of "), std::string::npos) << gpu.status().to_string();
  auto after = kernels::cuda::memory_info();
  ASSERT_TRUE(after.is_ok());
  EXPECT_GE(after->free_bytes + (size_t{64} << 20), info->memory.free_bytes) << "the failed runner leaked memory";
}

TEST_F(CudaTest, CudaRunnerRefusesADtypeItDoesNotRun) {
  GeneratedModel gm("tiny-mixtral", 1, "dtype");
  ASSERT_TRUE(gm.ok);
  auto w = gm.weights();
  ASSERT_TRUE(w);
  const auto& c = gm.ck.config;
  auto gpu = CudaModelRunner::create(c, *w, {c.num_layers, 8, 4, c.num_kv_heads, c.head_dim}, {.dtype = DType::kF16});
  EXPECT_EQ(gpu.status().code(), StatusCode::kInvalidArgument) << gpu.status().to_string();
}

TEST_F(CudaTest, CudaRunnerRefusesAKvCacheOfAnotherShape) {
  GeneratedModel gm("tiny-mixtral", 1, "shape");
  ASSERT_TRUE(gm.ok);
  auto w = gm.weights();
  ASSERT_TRUE(w);
  const KvCacheShape wrong{gm.ck.config.num_layers + 1, 8, 4, gm.ck.config.num_kv_heads, gm.ck.config.head_dim};
  auto gpu = CudaModelRunner::create(gm.ck.config, *w, wrong);
  EXPECT_EQ(gpu.status().code(), StatusCode::kInvalidArgument) << gpu.status().to_string();
}

}  // namespace
}  // namespace tandem::engine
