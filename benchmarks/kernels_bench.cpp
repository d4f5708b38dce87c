// CPU kernel throughput against this machine's own limits, measured in the same
// run: GEMM-like ops as a fraction of cblas_sgemm on the same total shape
// ("of_sgemm"), memory-bound ops as a fraction of streaming-read bandwidth ("of_read_bw").
//
//   build/benchmarks/kernels_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <random>

#include "bench_util.h"
#include "tandem/kernels/cpu.h"

using namespace tandem;
namespace k = kernels::cpu;

namespace {

double g_read_gbps = 0;

std::vector<float> rnd(size_t n, float scale = 1.0f) {
  std::mt19937 g(7);
  std::normal_distribution<float> d(0, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Small-Mixtral shapes: hidden 1024, expert intermediate 1024 (see make-model).
constexpr int kHidden = 1024, kInter = 1024, kExperts = 8, kTopK = 2;

void BM_Linear(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0)), in = kHidden, out = 4 * kHidden;
  // 16 weight matrices of 16 MiB used in turn: 256 MiB, beyond the last-level
  // cache, as a model's layers are at decode time.
  constexpr int kCopies = 16;
  auto x = rnd(size_t(n) * in), w = rnd(size_t(kCopies) * out * in);
  std::vector<float> y(size_t(n) * out);
  int i = 0;
  for (auto _ : st) k::linear(x.data(), w.data() + size_t(i++ % kCopies) * out * in, y.data(), n, in, out);
  const double flops = 2.0 * n * in * out;
  st.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  // Weights dominate the bytes at small n.
  st.counters["GB/s"] = benchmark::Counter(4.0 * (double(out) * in + double(n) * (in + out)),
                                           benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Linear)->Arg(1)->Arg(16)->Arg(256)->Unit(benchmark::kMicrosecond);

void BM_GroupedSwiglu(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0)), rows = n * kTopK;
  std::vector<std::vector<float>> w;
  std::vector<k::ExpertWeights> ew(kExperts);
  for (int e = 0; e < kExperts; ++e) {
    w.push_back(rnd(size_t(3) * kInter * kHidden, 0.03f));
    ew[e] = {w[e].data(), w[e].data() + kInter * kHidden, w[e].data() + 2 * kInter * kHidden};
  }
  std::vector<int32_t> offsets(kExperts + 1);
  for (int e = 0; e <= kExperts; ++e) offsets[e] = rows * e / kExperts;  // balanced routing
  auto x = rnd(size_t(rows) * kHidden);
  std::vector<float> y(x.size()), scratch(size_t(3) * rows * kInter);
  for (auto _ : st) k::grouped_swiglu(x.data(), y.data(), offsets.data(), kExperts, ew.data(), kHidden, kInter, scratch.data());
  const double flops = 2.0 * rows * kHidden * kInter * 3;
  st.counters["GFLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  // Baseline: one dense sgemm with the same total FLOPs (rows x hidden x 3*inter).
  const double base = bench::sgemm_gflops(rows, 3 * kInter, kHidden, 3);
  st.counters["sgemm_GFLOP/s"] = base;
  st.counters["of_sgemm"] = 0;  // filled by RatioReporter once rates are final
}
BENCHMARK(BM_GroupedSwiglu)->Arg(16)->Arg(128)->Arg(512)->Unit(benchmark::kMicrosecond);

void BM_AttentionDecode(benchmark::State& st) {
  const int batch = static_cast<int>(st.range(0)), ctx = static_cast<int>(st.range(1));
  const int hq = 8, hkv = 2, d = 128, bs = 16;
  const int blocks_per_seq = (ctx + bs - 1) / bs, num_blocks = batch * blocks_per_seq;
  auto kc = rnd(size_t(num_blocks) * bs * hkv * d), vc = rnd(kc.size());
  k::PagedKv cache{kc.data(), vc.data(), num_blocks, bs, hkv, d};
  std::vector<int32_t> tables(size_t(batch) * blocks_per_seq), seq(batch), len(batch, ctx);
  for (int i = 0; i < batch * blocks_per_seq; ++i) tables[i] = (i * 7919) % num_blocks;  // scattered blocks
  for (int b = 0; b < batch; ++b) seq[b] = b;
  auto q = rnd(size_t(batch) * hq * d);
  std::vector<float> out(q.size());
  for (auto _ : st)
    k::attention_paged(q.data(), out.data(), batch, hq, cache, tables.data(), blocks_per_seq, seq.data(), len.data(), 0.088f);
  // Bytes that must move: K and V once, plus Q and the output.
  const double bytes = 4.0 * (2.0 * batch * ctx * hkv * d + 2.0 * batch * hq * d);
  st.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_AttentionDecode)->Args({1, 512})->Args({8, 512})->Args({32, 2048})->Unit(benchmark::kMicrosecond);

void BM_RmsNorm(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0));
  auto x = rnd(size_t(n) * kHidden), w = rnd(kHidden);
  std::vector<float> y(x.size());
  for (auto _ : st) k::rmsnorm(x.data(), w.data(), y.data(), n, kHidden, 1e-5f);
  st.counters["GB/s"] = benchmark::Counter(8.0 * n * kHidden, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_RmsNorm)->Arg(64)->Arg(4096)->Unit(benchmark::kMicrosecond);

// Adds the ratio columns once the rate counters are final.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> copy(runs);
    for (auto& r : copy) {
      auto gf = r.counters.find("GFLOP/s");
      auto base = r.counters.find("sgemm_GFLOP/s");
      if (gf != r.counters.end() && base != r.counters.end()) r.counters["of_sgemm"] = gf->second.value / 1e9 / base->second.value;
      else r.counters.erase("of_sgemm");
      auto gb = r.counters.find("GB/s");
      if (gb != r.counters.end()) r.counters["of_read_bw"] = gb->second.value / 1e9 / g_read_gbps;
    }
    ConsoleReporter::ReportRuns(copy);
  }
};

}  // namespace

int main(int argc, char** argv) {
  g_read_gbps = bench::read_gbps();
  std::printf("baselines: streaming read %.1f GB/s, memcpy %.1f GB/s (read+write bytes), sgemm 256x4096x1024 %.1f GFLOP/s\n",
              g_read_gbps, bench::memcpy_gbps(), bench::sgemm_gflops(256, 4096, 1024));
  benchmark::Initialize(&argc, argv);
  RatioReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  benchmark::Shutdown();
  return 0;
}
