// Decode throughput of the single-process engine (colocated: attention and
// experts in one process) on small-mixtral, as a fraction of the memory-
// bandwidth limit: each decode step must read the attention weights, the
// experts the batch touches, the LM head and the KV cache at least once, so
// bytes/step ÷ measured bandwidth bounds the step time from below. The
// bandwidth is a streaming read on the CPU, and a device-to-device copy
// (the bytes it reads per second) with --device cuda.
//
//   build/benchmarks/generate_bench [--model DIR] [--prompt-tokens 128] [--decode-tokens 32]
//                                   [--batches 1,4,16] [--device cpu|cuda] [--dtype f32|bf16]
//                                   [--graphs on|off]  (cuda: decode layers as CUDA graphs)
//                                   [--experts per-expert|batched|device]  (cuda: cuBLAS GEMMs per expert,
//                                   grouped-batched cuBLAS, or our kernel with the routing left on the GPU)
//                                   [--logprobs N]  (then the same requests again asking for each token's
//                                   log-probability and N alternatives: decode tok/s against the plain run)
//                                   [--penalties on]  (then the same requests again with presence, frequency and
//                                   repetition penalties and a logit bias: decode tok/s against the plain run)
//                                   [--prompt-logprobs N]  (then the same prompts scored, as a loglikelihood
//                                   evaluation asks: every prompt token's log-probability, max_tokens 0;
//                                   prefill tok/s against the plain run's)
//                                   [--guided json|regex]  (then the same requests sampled under a grammar: any
//                                   JSON object, or the regex [a-z ,.]+; token masks computed as states are
//                                   met, then cached: decode tok/s against the plain run)
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench_model.h"
#include "bench_util.h"
#include "tandem/engine/engine.h"
#if TANDEM_HAVE_CUDA
#include "cuda_bench_util.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kernels/cuda.h"
#endif

using namespace tandem;

#if TANDEM_HAVE_CUDA
// Bytes read per second by a 256 MiB device-to-device copy (median of 10):
// a decode step is bound by what it reads. 0, with a message, if it fails.
double device_read_gbps() {
  try {
    const size_t bytes = size_t{256} << 20;
    bench::Dev a(bytes), b(bytes);
    bench::Stream s;
    const double us = bench::median_step_us(
        s.s, 10, [&](int) { CK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, s.s)); });
    return static_cast<double>(bytes) / (us * 1e-6) / 1e9;
  } catch (const bench::Failure& f) {
    std::fprintf(stderr, "device copy baseline: %s\n", f.what());
    return 0;
  }
}
#endif

int main(int argc, char** argv) {
  std::string dir = "models/small-mixtral";
  int prompt_tokens = 128, decode_tokens = 32;
  std::string device = "cpu", dtype = "f32";
  bool graphs = false;
  std::string experts = "per-expert";
  int logprobs = -1, prompt_logprobs = -1;
  bool penalties = false;
  std::string guided;
  std::vector<int> batches{1, 4, 16};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--batches") {
      batches.clear();
      std::stringstream in(argv[i + 1]);
      for (std::string x; std::getline(in, x, ',');) batches.push_back(std::atoi(x.c_str()));
    }
    if (a == "--model") dir = argv[i + 1];
    else if (a == "--prompt-tokens") prompt_tokens = std::atoi(argv[i + 1]);
    else if (a == "--decode-tokens") decode_tokens = std::atoi(argv[i + 1]);
    else if (a == "--device") device = argv[i + 1];
    else if (a == "--dtype") dtype = argv[i + 1];
    else if (a == "--graphs") graphs = std::string(argv[i + 1]) == "on";
    else if (a == "--experts") experts = argv[i + 1];
    else if (a == "--logprobs") logprobs = std::atoi(argv[i + 1]);
    else if (a == "--prompt-logprobs") prompt_logprobs = std::atoi(argv[i + 1]);
    else if (a == "--penalties") penalties = std::string(argv[i + 1]) == "on";
    else if (a == "--guided") guided = argv[i + 1];
  }
  if (!guided.empty() && guided != "json" && guided != "regex")
    return std::fprintf(stderr, "--guided must be json or regex\n"), 2;
  if (device != "cpu" && device != "cuda") return std::fprintf(stderr, "--device must be cpu or cuda\n"), 2;
  if (dtype != "f32" && (dtype != "bf16" || device != "cuda"))
    return std::fprintf(stderr, "--dtype must be f32, or bf16 with --device cuda\n"), 2;
#if !TANDEM_HAVE_CUDA
  if (device == "cuda") return std::fprintf(stderr, "--device cuda: this build has no CUDA\n"), 2;
#endif
  auto loaded = bench::open_small_mixtral(dir);
  if (!loaded.is_ok()) return std::fprintf(stderr, "%s\n", loaded.status().to_string().c_str()), 1;
  const auto& c = loaded->ck.config;
  const model::ModelWeights& weights = *loaded->weights;

  std::printf("model %s: %lld layers, hidden %lld, %lld experts top-%lld, vocab %lld, device %s, dtype %s%s%s\n",
              dir.c_str(), (long long)c.num_layers, (long long)c.hidden_size, (long long)c.moe.num_experts,
              (long long)c.moe.top_k, (long long)c.vocab_size, device.c_str(), dtype.c_str(), graphs ? ", CUDA graphs" : "",
              (", experts " + experts).c_str());
  double bw = 0;
  if (device == "cpu") {
    bw = bench::read_gbps();
    std::printf("baselines: streaming read %.1f GB/s, memcpy %.1f GB/s (read+write bytes)\n", bw, bench::memcpy_gbps());
  } else {
#if TANDEM_HAVE_CUDA
    if (auto n = kernels::cuda::device_count(); !n.is_ok())
      return std::printf("skipped: %s\n", n.status().message().c_str()), 0;
    bw = device_read_gbps();
    std::printf("baseline: device-to-device copy %.1f GB/s read\n", bw);
#endif
  }
  std::printf("%6s %14s %14s %10s %16s %12s\n", "batch", "prefill tok/s", "decode tok/s", "step ms",
              "min bytes GB/s", "of read bw");
  const double H = c.hidden_size, I = c.moe.expert_intermediate;
  const double elem = dtype == "bf16" ? 2.0 : 4.0;  // bytes per weight and KV element
  const double attn_bytes = elem * c.num_layers * (H * c.q_dim() * 2 + H * c.kv_dim() * 2 + 2 * H + H * c.moe.num_experts);
  const double expert_bytes = elem * 3 * H * I;
  const double head_bytes = elem * c.vocab_size * H;
  model::GuideCache guides(loaded->ck.tokenizer.get(), c.vocab_size);  // one per run: masks cached across batches
  for (int batch : batches) {
    engine::EngineOptions eo;
    eo.num_blocks = batch * ((prompt_tokens + decode_tokens) / 16 + 2);
#if TANDEM_HAVE_CUDA
    std::unique_ptr<engine::CudaModelRunner> gpu;
    if (device == "cuda") {
      const engine::KvCacheShape kv{c.num_layers, eo.num_blocks, eo.block_size, c.num_kv_heads, c.head_dim};
      auto gemm = engine::parse_expert_gemm(experts);
      if (!gemm.is_ok()) return std::fprintf(stderr, "--experts: %s\n", gemm.status().message().c_str()), 2;
      auto r = engine::CudaModelRunner::create(
          c, weights, kv, {.dtype = dtype == "bf16" ? DType::kBF16 : DType::kF32, .cuda_graphs = graphs, .experts = *gemm});
      if (!r.is_ok()) return std::fprintf(stderr, "%s\n", r.status().to_string().c_str()), 1;
      gpu = std::move(r).value();
      eo.forward_split = [&gpu](const engine::ForwardBatch& b, const std::vector<uint8_t>& greedy,
                                std::vector<float>& logits, std::vector<int32_t>& tokens) {
        return gpu->forward_split(b, greedy, logits, tokens);
      };
    }
#endif
    auto eng = engine::Engine::create(c, weights, eo);
    std::vector<engine::GenerationRequest> reqs(static_cast<size_t>(batch));
    for (int b = 0; b < batch; ++b) {
      for (int t = 0; t < prompt_tokens; ++t) reqs[b].prompt.push_back((t * 7 + b * 13) % 1000 + 3);
      reqs[b].max_tokens = decode_tokens;
      reqs[b].sampling.temperature = 0;
    }
    auto res = (*eng)->generate(reqs);
    if (!res.is_ok()) return std::fprintf(stderr, "%s\n", res.status().to_string().c_str()), 1;
    const engine::EngineStats s = (*eng)->stats();  // a copy: --logprobs runs again
    const double steps = static_cast<double>(s.decode_tokens) / batch;
    const double step_s = s.decode_seconds / steps;
    // Distinct experts a batch touches per layer: at most all of them.
    const double touched = std::min<double>(c.moe.num_experts, batch * c.moe.top_k);
    const double kv_bytes = elem * 2 * c.num_layers * c.kv_dim() * (prompt_tokens + decode_tokens / 2.0) * batch;
    const double bytes = attn_bytes + c.num_layers * touched * expert_bytes + head_bytes + kv_bytes;
    const double gbps = bytes / step_s / 1e9;
    std::printf("%6d %14.1f %14.1f %10.2f %16.1f %11.0f%%\n", batch, s.prompt_tokens / s.prompt_seconds,
                s.decode_tokens / s.decode_seconds, step_s * 1e3, gbps, 100.0 * gbps / bw);
    // The same requests again, changed by `change`, on the same engine (their
    // prompts now cached, unless scored): decode or prefill tok/s against the
    // plain run above.
    auto rerun = [&](const std::string& label, bool prefill, const auto& change) {
      auto changed = reqs;
      for (auto& r : changed) change(r);
      const engine::EngineStats before = (*eng)->stats();
      auto out = (*eng)->generate(changed);
      if (!out.is_ok()) return std::fprintf(stderr, "%s\n", out.status().to_string().c_str()), 0.0;
      const auto& after = (*eng)->stats();
      const double tps =
          prefill ? static_cast<double>(after.prompt_tokens - before.prompt_tokens) /
                        (after.prompt_seconds - before.prompt_seconds)
                  : static_cast<double>(after.decode_tokens - before.decode_tokens) /
                        (after.decode_seconds - before.decode_seconds);
      const double plain = prefill ? s.prompt_tokens / s.prompt_seconds : s.decode_tokens / s.decode_seconds;
      std::printf("       %s: %s %.1f tok/s, %.3f of the plain run\n", label.c_str(), prefill ? "prefill" : "decode",
                  tps, tps / plain);
      return tps;
    };
    // Greedy rows then bring their logits to the host, and each token takes a
    // log-softmax and a top-N.
    if (logprobs >= 0 && !rerun("with logprobs=" + std::to_string(logprobs), false,
                                [&](engine::GenerationRequest& r) { r.logprobs = logprobs; }))
      return 1;
    // Each sampled row is copied, biased and penalised over the tokens seen
    // so far; greedy rows then need their logits (on a GPU, at the host).
    if (penalties && !rerun("with penalties and bias", false, [](engine::GenerationRequest& r) {
          r.adjust = {.logit_bias = {{7, 0.5f}, {11, -0.5f}},
                      .presence_penalty = 0.2f,
                      .frequency_penalty = 0.1f,
                      .repetition_penalty = 1.1f};
        }))
      return 1;
    // Scored prompts are computed (the cache holds K/V, not logits), and
    // every prompt row goes through the LM head and a log-softmax.
    if (prompt_logprobs >= 0 && !rerun("scoring prompts (prompt_logprobs=" + std::to_string(prompt_logprobs) + ")",
                                       true, [&](engine::GenerationRequest& r) {
                                         r.prompt_logprobs = prompt_logprobs;
                                         r.max_tokens = 0;
                                       }))
      return 1;
    // Every sampled row is masked to the grammar (a copy of the row and a
    // pass over the vocabulary), greedy rows then need their logits, and
    // each new automaton state walks the vocabulary's trie once.
    if (!guided.empty()) {
      model::GuideSpec spec;
      spec.kind = guided == "json" ? model::GuideSpec::Kind::kJsonObject : model::GuideSpec::Kind::kRegex;
      spec.regex = guided == "json" ? "" : "[a-z ,.]+";
      auto guide = guides.get(spec);
      if (!guide.is_ok()) return std::fprintf(stderr, "%s\n", guide.status().to_string().c_str()), 1;
      auto sampled = [](engine::GenerationRequest& r) {
        r.sampling = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
        r.seed = 1;
      };
      const double free_tps = rerun("sampled (T = 1)", false, sampled);
      const double guided_tps = rerun("sampled under " + spec.key(), false, [&](engine::GenerationRequest& r) {
        sampled(r);
        r.guide = *guide;
      });
      if (free_tps <= 0 || guided_tps <= 0) return 1;
      std::printf("       guided decode: %.3f of the same requests sampled freely\n", guided_tps / free_tps);
    }
#if TANDEM_HAVE_CUDA
    if (gpu && graphs)
      std::printf("       CUDA graphs replayed: %llu layer steps, %llu of them whole layers\n",
                  (unsigned long long)gpu->graph_launches(), (unsigned long long)gpu->whole_layer_graph_launches());
#endif
  }
  return 0;
}
