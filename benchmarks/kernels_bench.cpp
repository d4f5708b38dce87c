// CPU kernel throughput against this machine's own limits, measured in the same
// run: GEMM-like ops as a fraction of cblas_sgemm on the same total shape
// (OpenBLAS with its own threading, same weight buffers: "of_sgemm"), memory-bound
// ops as a fraction of streaming-read bandwidth ("of_read_bw") and of memcpy
// bandwidth counted as bytes read + written ("of_memcpy").
//
// Shapes of a small Mixtral: hidden 1024, intermediate 2816, 8 experts, top-2;
// attention 8 query / 2 KV heads of 128.
//
//   build-k/benchmarks/kernels_bench [--benchmark_filter=...] [--benchmark_min_time=...]
// The default min_time is 0.05 s; the whole run takes well under a minute.
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "bench_util.h"
#include "tandem/kernels/cpu.h"

using namespace tandem;
namespace k = kernels::cpu;

namespace {

double g_read_gbps = 0, g_memcpy_gbps = 0;

constexpr int kHidden = 1024, kInter = 2816, kExperts = 8, kTopK = 2;

// Uniform values in [-scale, scale) from a fixed xorshift: cheap enough to fill
// hundreds of MiB, and the values do not matter for speed (no denormals).
void fill(float* p, size_t n, float scale = 1.0f, uint64_t seed = 7) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    p[i] = scale * (static_cast<float>(s >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f);
  }
}
std::vector<float> filled(size_t n, float scale = 1.0f, uint64_t seed = 7) {
  std::vector<float> v(n);
  fill(v.data(), n, scale, seed);
  return v;
}

// Large inputs built once per process: Google Benchmark calls a benchmark
// function several times while it settles on an iteration count.
template <typename T>
T& cached(const std::string& key, size_t n, float scale = 1.0f) {
  static std::map<std::string, std::unique_ptr<T>> store;
  auto& slot = store[key];
  if (!slot) slot = std::make_unique<T>(filled(n, scale));
  return *slot;
}

// Best-of-reps cblas_sgemm C[m,n] = A[m,k]·B[n,k]ᵀ with OpenBLAS's own threading,
// cycling over `copies` B matrices stored back to back (as the kernel under test
// does), in GFLOP/s. Cached per shape.
double sgemm_baseline(const float* a, const float* b, int m, int n, int kk, int copies, int reps = 3) {
  static std::map<std::tuple<int, int, int, int>, double> seen;
  const auto key = std::make_tuple(m, n, kk, copies);
  if (auto it = seen.find(key); it != seen.end()) return it->second;
  const int saved = openblas_get_num_threads();
  openblas_set_num_threads(omp_get_max_threads());  // OMP_NUM_THREADS limits both sides
  std::vector<float> c(static_cast<size_t>(m) * n);
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {
    const float* br = b + static_cast<size_t>(r % copies) * n * kk;
    auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kk, 1.0f, a, kk, br, kk, 0.0f, c.data(), n);
    if (r > 0) best = std::min(best, bench::seconds_since(t0));  // the first run warms OpenBLAS's threads
  }
  openblas_set_num_threads(saved);
  return seen[key] = 2.0 * m * n * kk / best / 1e9;
}

// Rates over wall-clock time (every benchmark uses UseRealTime): the main
// thread's CPU time undercounts work spread over an OpenMP team.
benchmark::Counter rate(double per_iteration) {
  return benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate,
                            benchmark::Counter::kIs1000);
}

// y[n, 2816] = x[n, 1024] · wᵀ (an expert's gate or up projection shape).
void BM_Linear(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0)), in = kHidden, out = kInter;
  // 16 weight copies of 11 MiB used in turn: 176 MiB, beyond the 32 MiB LLC, as
  // a model's layers are at decode time.
  constexpr int kCopies = 16;
  const size_t wsize = size_t(out) * in;
  auto& w = cached<std::vector<float>>("linear_w", kCopies * wsize, 0.03f);
  auto x = filled(size_t(n) * in);
  std::vector<float> y(size_t(n) * out);
  int i = 0;
  for (auto _ : st) k::linear(x.data(), w.data() + (i++ % kCopies) * wsize, y.data(), n, in, out);
  st.counters["GFLOP/s"] = rate(2.0 * n * in * out);
  st.counters["GB/s"] = rate(4.0 * (double(out) * in + double(n) * (in + out)));  // weights dominate at small n
  st.counters["sgemm_GFLOP/s"] = sgemm_baseline(x.data(), w.data(), n, out, in, kCopies);
}
BENCHMARK(BM_Linear)->Arg(1)->Arg(16)->Arg(64)->Arg(256)->UseRealTime()->Unit(benchmark::kMicrosecond);

// The routed-expert FFN of one MoE layer: n tokens × top-2 rows spread evenly
// over 8 experts (weights 8 × 33 MiB).
void BM_GroupedSwiglu(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0)), rows = n * kTopK;
  const size_t per_expert = size_t(3) * kInter * kHidden;  // gate, up [inter, hidden]; down [hidden, inter]
  auto& w = cached<std::vector<float>>("expert_w", kExperts * per_expert, 0.03f);
  std::vector<k::ExpertWeights> ew(kExperts);
  for (int e = 0; e < kExperts; ++e) {
    const float* base = w.data() + e * per_expert;
    ew[e] = {base, base + size_t(kInter) * kHidden, base + 2 * size_t(kInter) * kHidden};
  }
  std::vector<int32_t> offsets(kExperts + 1);
  for (int e = 0; e <= kExperts; ++e) offsets[e] = rows * e / kExperts;  // balanced routing
  auto x = filled(size_t(rows) * kHidden);
  std::vector<float> y(x.size()), scratch(size_t(3) * ((rows + kExperts - 1) / kExperts) * kInter);
  for (auto _ : st)
    k::grouped_swiglu(x.data(), y.data(), offsets.data(), kExperts, ew.data(), kHidden, kInter, scratch.data());
  const int touched = std::min(rows, kExperts);
  st.counters["GFLOP/s"] = rate(2.0 * rows * kHidden * kInter * 3);
  st.counters["GB/s"] = rate(4.0 * (double(touched) * per_expert + 2.0 * rows * kHidden));
  // One dense sgemm with the same total FLOPs: [rows, hidden] · [3·inter, hidden]ᵀ,
  // over one expert's weights viewed as a single matrix.
  st.counters["sgemm_GFLOP/s"] = sgemm_baseline(x.data(), w.data(), rows, 3 * kInter, kHidden, 1);
}
BENCHMARK(BM_GroupedSwiglu)->Arg(16)->Arg(64)->Arg(128)->Arg(512)->UseRealTime()->Unit(benchmark::kMicrosecond);

// One decode step of paged attention: every sequence has ctx tokens cached in
// blocks of 16 scattered over the cache.
void BM_AttentionDecode(benchmark::State& st) {
  const int batch = static_cast<int>(st.range(0)), ctx = static_cast<int>(st.range(1));
  const int hq = 8, hkv = 2, d = 128, bs = 16;
  const int blocks_per_seq = (ctx + bs - 1) / bs, num_blocks = batch * blocks_per_seq;
  const size_t cache_floats = size_t(num_blocks) * bs * hkv * d;
  auto& kc = cached<std::vector<float>>("kcache", size_t(32) * 2048 * hkv * d);
  auto& vc = cached<std::vector<float>>("vcache", size_t(32) * 2048 * hkv * d);
  if (cache_floats > kc.size()) {
    st.SkipWithError("cache too small");
    return;
  }
  k::PagedKv cache{kc.data(), vc.data(), num_blocks, bs, hkv, d};
  std::vector<int32_t> tables(size_t(batch) * blocks_per_seq), seq(batch), len(batch, ctx);
  for (int i = 0; i < batch * blocks_per_seq; ++i) tables[i] = int32_t((int64_t(i) * 7919) % num_blocks);
  for (int b = 0; b < batch; ++b) seq[b] = b;
  auto q = filled(size_t(batch) * hq * d);
  std::vector<float> out(q.size());
  for (auto _ : st)
    k::attention_paged(q.data(), out.data(), batch, hq, cache, tables.data(), blocks_per_seq, seq.data(), len.data(),
                       0.088f);
  st.counters["GFLOP/s"] = rate(4.0 * batch * ctx * hq * d);  // QK and PV
  st.counters["GB/s"] = rate(4.0 * (2.0 * batch * ctx * hkv * d + 2.0 * batch * hq * d));  // K, V once; q, out
}
BENCHMARK(BM_AttentionDecode)
    ->Args({1, 128})
    ->Args({1, 2048})
    ->Args({8, 512})
    ->Args({32, 128})
    ->Args({32, 2048})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_RmsNorm(benchmark::State& st) {
  const int n = static_cast<int>(st.range(0));
  auto x = filled(size_t(n) * kHidden), w = filled(kHidden);
  std::vector<float> y(x.size());
  for (auto _ : st) k::rmsnorm(x.data(), w.data(), y.data(), n, kHidden, 1e-5f);
  st.counters["GB/s"] = rate(8.0 * n * kHidden);  // x read, y written
}
BENCHMARK(BM_RmsNorm)->Arg(1)->Arg(64)->Arg(4096)->Arg(16384)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Adds the ratio columns once the rate counters are final.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> copy(runs);
    for (auto& r : copy) {
      auto gf = r.counters.find("GFLOP/s");
      auto base = r.counters.find("sgemm_GFLOP/s");
      if (gf != r.counters.end() && base != r.counters.end())
        r.counters["of_sgemm"] = gf->second.value / 1e9 / base->second.value;
      auto gb = r.counters.find("GB/s");
      if (gb != r.counters.end()) {
        r.counters["of_read_bw"] = gb->second.value / 1e9 / g_read_gbps;
        r.counters["of_memcpy"] = gb->second.value / 1e9 / g_memcpy_gbps;
      }
    }
    ConsoleReporter::ReportRuns(copy);
  }
};

}  // namespace

int main(int argc, char** argv) {
  // A short default min_time unless the command line sets one.
  std::vector<char*> args(argv, argv + argc);
  static char default_min_time[] = "--benchmark_min_time=0.05";
  bool has_min_time = false;
  for (int i = 1; i < argc; ++i) has_min_time |= std::strncmp(argv[i], "--benchmark_min_time", 20) == 0;
  if (!has_min_time) args.insert(args.begin() + 1, default_min_time);
  int n = static_cast<int>(args.size());

  g_read_gbps = bench::read_gbps();
  g_memcpy_gbps = bench::memcpy_gbps();
  std::printf("baselines: streaming read %.1f GB/s, memcpy %.1f GB/s (read+write bytes), %d threads\n", g_read_gbps,
              g_memcpy_gbps, omp_get_max_threads());
  benchmark::Initialize(&n, args.data());
  // Colour only on a terminal, as the default reporter does.
  RatioReporter rep(isatty(fileno(stdout)) ? benchmark::ConsoleReporter::OO_ColorTabular
                                           : benchmark::ConsoleReporter::OO_Tabular);
  benchmark::RunSpecifiedBenchmarks(&rep);
  benchmark::Shutdown();
  return 0;
}
