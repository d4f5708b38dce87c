// Prefix caching on the single-process engine (small-mixtral, CPU): requests
// that share a long prefix — a system prompt, earlier turns of a chat — arrive
// one after another, as from separate clients, and each is served to its end
// (prefill, then a few decode steps) before the next. Baseline: the same
// requests with prefix caching off. Limit: the token-count bound, prompt tokens
// computed without the cache ÷ with it (what the prefill speed-up would be if
// a token's cost did not depend on how long its context is).
//
//   build/benchmarks/prefix_cache_bench [--model DIR] [--requests 8] [--shared-tokens 512]
//                                       [--unique-tokens 32] [--decode-tokens 4] [--block-size 16]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "bench_model.h"
#include "tandem/engine/engine.h"

using namespace tandem;

namespace {

struct Run {
  double prefill_s = 0;  // wall time of the steps that carried prompt tokens
  double total_s = 0;
  int64_t prompt_tokens_computed = 0;
  std::vector<std::vector<int32_t>> outputs;
};

Result<Run> serve_one_by_one(const model::ModelConfig& c, const model::ModelWeights& w,
                             const std::vector<engine::GenerationRequest>& reqs, int64_t block_size, bool cache) {
  engine::EngineOptions eo;
  eo.block_size = block_size;
  eo.num_blocks = 0;
  for (const auto& r : reqs)
    eo.num_blocks += (static_cast<int64_t>(r.prompt.size()) + r.max_tokens + block_size - 1) / block_size;
  eo.prefix_caching = cache;
  TANDEM_ASSIGN_OR_RETURN(auto eng, engine::Engine::create(c, w, eo));
  Run run;
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& r : reqs) {
    TANDEM_ASSIGN_OR_RETURN(auto res, eng->generate({r}));
    run.outputs.push_back(res[0].tokens);
  }
  run.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run.prefill_s = eng->stats().prompt_seconds;
  run.prompt_tokens_computed = eng->stats().prompt_tokens;
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "models/small-mixtral";
  int requests = 8, shared = 512, unique = 32, decode = 4, block_size = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--model") dir = argv[i + 1];
    else if (a == "--requests") requests = v;
    else if (a == "--shared-tokens") shared = v;
    else if (a == "--unique-tokens") unique = v;
    else if (a == "--decode-tokens") decode = v;
    else if (a == "--block-size") block_size = v;
    else return std::fprintf(stderr, "unknown option %s\n", a.c_str()), 2;
  }
  if (requests < 1 || shared < 0 || unique < 1 || decode < 1 || block_size < 1)
    return std::fprintf(stderr, "--requests, --unique-tokens, --decode-tokens, --block-size must be positive\n"), 2;
  auto loaded = bench::open_small_mixtral(dir);
  if (!loaded.is_ok()) return std::fprintf(stderr, "%s\n", loaded.status().to_string().c_str()), 1;
  const auto& c = loaded->ck.config;
  const model::ModelWeights& weights = *loaded->weights;

  std::vector<engine::GenerationRequest> reqs(static_cast<size_t>(requests));
  for (int r = 0; r < requests; ++r) {
    auto& q = reqs[static_cast<size_t>(r)];
    for (int t = 0; t < shared; ++t) q.prompt.push_back((t * 7) % 1000 + 3);
    for (int t = 0; t < unique; ++t) q.prompt.push_back((t * 11 + r * 131) % 1000 + 3);
    q.max_tokens = decode;
    q.sampling.temperature = 0;
  }
  std::printf("model %s on the CPU: %d requests one after another, each %d shared + %d own prompt tokens, "
              "%d generated, KV blocks of %d\n",
              dir.c_str(), requests, shared, unique, decode, block_size);
  auto off = serve_one_by_one(c, weights, reqs, block_size, false);
  auto on = off.is_ok() ? serve_one_by_one(c, weights, reqs, block_size, true) : off;
  if (!on.is_ok()) return std::fprintf(stderr, "%s\n", on.status().to_string().c_str()), 1;
  // Equal but for near-ties: K/V computed in a smaller batch may round differently in the last bits.
  int same = 0;
  for (size_t r = 0; r < reqs.size(); ++r) same += on->outputs[r] == off->outputs[r] ? 1 : 0;
  std::printf("%-22s %20s %12s %12s\n", "", "prompt tok computed", "prefill s", "total s");
  using Row = std::pair<const char*, const Run*>;
  for (const auto& [name, r] : {Row{"prefix caching off", &*off}, Row{"prefix caching on", &*on}})
    std::printf("%-22s %20lld %12.3f %12.3f\n", name, static_cast<long long>(r->prompt_tokens_computed), r->prefill_s,
                r->total_s);
  const double bound = static_cast<double>(off->prompt_tokens_computed) / static_cast<double>(on->prompt_tokens_computed);
  const double speedup = off->prefill_s / on->prefill_s;
  std::printf("prefill speed-up %.2fx of a %.2fx token-count bound (%.0f%%); end to end %.2fx; "
              "same tokens in %d of %d requests\n",
              speedup, bound, 100.0 * speedup / bound, off->total_s / on->total_s, same, requests);
  return 0;
}
