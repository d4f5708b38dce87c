// `tandem bench`: a closed-loop gRPC load generator against a router. Fixed
// seed, random prompts of a given length (token ids), exact output lengths
// (ignore_eos). Reports the serving metrics users know from vLLM's and
// SGLang's benchmarks: TTFT, TPOT = (E2E - TTFT) / (output - 1), ITL (gap
// between streamed chunks), E2E latency (p50/p90/p99), output tokens/s and
// requests/s.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "commands.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::cli {

namespace {
using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string server = "127.0.0.1:50051";
  int concurrency = 8;
  int requests = 64;
  int prompt_tokens = 128;
  int output_tokens = 64;
  uint64_t seed = 0;
};

struct Sample {
  double ttft = 0, e2e = 0;
  int tokens = 0;
  std::vector<double> itl;
  bool ok = false;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(idx), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (idx - static_cast<double>(lo));
}

int run_bench(const BenchArgs& a) {
  auto channel = grpc::CreateChannel(a.server, grpc::InsecureChannelCredentials());
  auto stub = tandem::v1::Generation::NewStub(channel);
  uint32_t vocab = 0;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    tandem::v1::ListModelsRequest rq;
    tandem::v1::ListModelsResponse rp;
    grpc::Status st = stub->ListModels(&ctx, rq, &rp);
    if (!st.ok() || rp.models_size() == 0) {
      std::fprintf(stderr, "tandem bench: cannot reach %s: %s\n", a.server.c_str(), st.error_message().c_str());
      return 1;
    }
    vocab = rp.models(0).vocab_size();
  }
  // Prompts drawn up front from the seed, so every run sends the same requests.
  std::mt19937_64 rng(a.seed);
  std::vector<tandem::v1::GenerateRequest> reqs(static_cast<size_t>(a.requests));
  for (auto& r : reqs) {
    for (int t = 0; t < a.prompt_tokens; ++t) r.mutable_token_ids()->add_ids(static_cast<uint32_t>(3 + rng() % (vocab - 3)));
    auto* s = r.mutable_sampling();
    s->set_max_tokens(static_cast<uint32_t>(a.output_tokens));
    s->set_temperature(0.8f);
    s->set_seed(rng());
    s->set_ignore_eos(true);
  }
  std::vector<Sample> samples(reqs.size());
  std::atomic<size_t> next{0};
  std::atomic<int> failures{0};
  std::string first_error;
  std::mutex err_mu;
  const auto t0 = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < a.concurrency; ++w)
    workers.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < reqs.size();) {
        grpc::ClientContext ctx;
        const auto start = Clock::now();
        auto last = start;
        auto reader = stub->Generate(&ctx, reqs[i]);
        tandem::v1::GenerateResponse m;
        Sample& s = samples[i];
        while (reader->Read(&m)) {
          if (m.token_ids_size() == 0) continue;
          const auto now = Clock::now();
          if (s.tokens == 0) s.ttft = std::chrono::duration<double>(now - start).count();
          else s.itl.push_back(std::chrono::duration<double>(now - last).count());
          last = now;
          s.tokens += m.token_ids_size();
        }
        grpc::Status st = reader->Finish();
        s.e2e = std::chrono::duration<double>(Clock::now() - start).count();
        s.ok = st.ok();
        if (!st.ok()) {
          ++failures;
          std::lock_guard<std::mutex> l(err_mu);
          if (first_error.empty()) first_error = st.error_message();
        }
      }
    });
  for (auto& t : workers) t.join();
  const double dur = std::chrono::duration<double>(Clock::now() - t0).count();

  std::vector<double> ttft, tpot, itl, e2e;
  long long out_tokens = 0;
  int ok = 0;
  for (const auto& s : samples) {
    if (!s.ok) continue;
    ++ok;
    out_tokens += s.tokens;
    ttft.push_back(s.ttft * 1e3);
    e2e.push_back(s.e2e * 1e3);
    if (s.tokens > 1) tpot.push_back((s.e2e - s.ttft) / (s.tokens - 1) * 1e3);
    for (double x : s.itl) itl.push_back(x * 1e3);
  }
  std::printf("tandem bench: %s, %d requests (%d ok, %d failed), concurrency %d, prompt %d tokens, output %d tokens, seed %llu\n",
              a.server.c_str(), a.requests, ok, failures.load(), a.concurrency, a.prompt_tokens, a.output_tokens,
              static_cast<unsigned long long>(a.seed));
  if (failures > 0) std::printf("first error: %s\n", first_error.c_str());
  std::printf("duration %.2f s | request throughput %.2f req/s | output throughput %.1f tok/s\n", dur, ok / dur,
              out_tokens / dur);
  std::printf("%-10s %10s %10s %10s %10s\n", "metric(ms)", "mean", "p50", "p90", "p99");
  auto row = [](const char* name, const std::vector<double>& v) {
    double mean = 0;
    for (double x : v) mean += x;
    mean = v.empty() ? 0 : mean / static_cast<double>(v.size());
    std::printf("%-10s %10.2f %10.2f %10.2f %10.2f\n", name, mean, pct(v, 50), pct(v, 90), pct(v, 99));
  };
  row("TTFT", ttft);
  row("TPOT", tpot);
  row("ITL", itl);
  row("E2E", e2e);
  return failures > 0 ? 1 : 0;
}
}  // namespace

void register_bench(CLI::App& app) {
  static BenchArgs a;
  auto* b = add_command(app, "bench", "Load-test a running cluster over gRPC (TTFT, TPOT, ITL, throughput)",
                        [] { return run_bench(a); });
  b->add_option("--server", a.server, "Router address")->capture_default_str();
  b->add_option("--concurrency", a.concurrency, "Requests in flight")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--requests", a.requests, "Requests to send")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--prompt-tokens", a.prompt_tokens, "Prompt length")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--output-tokens", a.output_tokens, "Output length")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--seed", a.seed, "Seed for prompts and sampling")->capture_default_str();
}

}  // namespace tandem::cli
