// `tandem generate`: one process, prefill then decode, text streamed to stdout.
#include <cstdio>
#include <memory>
#include <string>

#include "commands.h"
#include "tandem/engine/engine.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/guided.h"
#include "tandem/model/weights.h"
#ifdef TANDEM_HAVE_CUDA
#include "tandem/engine/cuda_runner.h"
#endif

namespace tandem::cli {

namespace {
struct GenerateArgs {
  std::string model_dir;
  std::string prompt;
  int32_t max_tokens = 64;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  uint64_t seed = 0;
  int64_t kv_blocks = 512;
  int64_t block_size = 16;
  bool ignore_eos = false;
  std::string device = "cpu";
  std::string dtype = "f32";
  bool cuda_graphs = false;
  std::string experts = "per-expert";
  model::GuideRequest guided;  // --regex / --json-schema FILE / --choice / --json-object
  std::string json_schema_file;
};

int fail(const Status& st) {
  std::fprintf(stderr, "tandem generate: %s\n", st.to_string().c_str());
  return 1;
}

int run_generate(const GenerateArgs& a) {
  auto ck = model::Checkpoint::open(a.model_dir);
  if (!ck.is_ok()) return fail(ck.status());
  auto weights = model::ModelWeights::load(ck->config, *ck->weights);
  if (!weights.is_ok()) return fail(weights.status());
  if (a.dtype == "bf16" && a.device != "cuda")
    return fail(invalid_argument("--dtype bf16 needs --device cuda: the CPU backend computes in FP32"));
  engine::EngineOptions eo;
  eo.num_blocks = a.kv_blocks;
  eo.block_size = a.block_size;
#ifdef TANDEM_HAVE_CUDA
  std::unique_ptr<engine::CudaModelRunner> gpu;
  if (a.device == "cuda") {
    const auto& c = ck->config;
    auto made = engine::CudaModelRunner::create(
        c, **weights, {c.num_layers, a.kv_blocks, a.block_size, c.num_kv_heads, c.head_dim},
        {.dtype = a.dtype == "bf16" ? DType::kBF16 : DType::kF32,
         .cuda_graphs = a.cuda_graphs,
         .experts = *engine::parse_expert_gemm(a.experts)});  // CLI checked the name
    if (!made.is_ok()) return fail(made.status());
    gpu = std::move(made).value();
    // Greedy rows come back as tokens, not logits.
    eo.forward_split = [r = gpu.get()](const engine::ForwardBatch& b, const std::vector<uint8_t>& greedy,
                                       std::vector<float>& logits, std::vector<int32_t>& tokens) {
      return r->forward_split(b, greedy, logits, tokens);
    };
  }
#else
  if (a.device == "cuda")
    return fail(unimplemented("--device cuda: this build has no CUDA backend (nvcc was not found when it was "
                              "configured)"));
#endif
  auto eng = engine::Engine::create(ck->config, **weights, eo);
  if (!eng.is_ok()) return fail(eng.status());

  auto ids = ck->tokenizer->encode(a.prompt, /*add_special_tokens=*/true);
  if (!ids.is_ok()) return fail(ids.status().with_context("--prompt"));
  engine::GenerationRequest req;
  req.prompt = *ids;
  req.max_tokens = a.max_tokens;
  req.sampling.temperature = a.temperature;
  req.sampling.top_p = a.top_p;
  req.sampling.top_k = a.top_k;
  req.seed = a.seed;
  if (!a.ignore_eos) req.stop_token_ids = ck->stop_token_ids;
  model::GuideRequest guided = a.guided;
  if (!a.json_schema_file.empty()) {
    auto text = model::read_text_file(a.json_schema_file);
    if (!text.is_ok()) return fail(text.status().with_context("--json-schema"));
    guided.json_schema = std::move(text).value();
  }
  auto spec = model::make_guide_spec(guided, {"--regex", "--json-schema", "--choice", "--json-object"});
  if (!spec.is_ok()) return fail(spec.status());
  if (!spec->empty()) {
    auto automaton = model::compile_guide(*spec);
    if (!automaton.is_ok()) return fail(automaton.status());
    req.guide = std::make_shared<model::TokenGuide>(std::move(automaton).value(),
                                                    model::TokenVocabulary::build(*ck->tokenizer, ck->config.vocab_size));
  }

  model::StreamingDetokenizer detok(*ck->tokenizer);
  std::fputs(a.prompt.c_str(), stdout);
  auto res = (*eng)->generate({req}, [&](size_t, int32_t tok) {
    std::string piece = detok.push(tok);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  if (!res.is_ok()) return fail(res.status());
  std::string tail = detok.flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);  // before the summary on stderr, so the two do not interleave

  const auto& s = (*eng)->stats();
  std::fprintf(stderr, "prompt: %lld tokens, %.1f tokens/s | decode: %lld tokens, %.1f tokens/s | finish: %s\n",
               static_cast<long long>(s.prompt_tokens), s.prompt_seconds > 0 ? s.prompt_tokens / s.prompt_seconds : 0.0,
               static_cast<long long>(s.decode_tokens), s.decode_seconds > 0 ? s.decode_tokens / s.decode_seconds : 0.0,
               (*res)[0].finish == engine::FinishReason::kStop ? "stop" : "length");
  return 0;
}
}  // namespace

void register_generate(CLI::App& app) {
  static GenerateArgs a;
  auto* cmd = add_command(app, "generate", "Generate text from a model in this process", [] { return run_generate(a); });
  cmd->add_option("--model", a.model_dir, "HuggingFace model directory")->required();
  cmd->add_option("--prompt", a.prompt, "Prompt text")->required();
  cmd->add_option("--max-tokens", a.max_tokens, "Tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", a.temperature, "Sampling temperature (0: greedy)")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a.top_p, "Nucleus sampling mass")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--top-k", a.top_k, "Top-k sampling (0: off)")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", a.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--kv-blocks", a.kv_blocks, "KV cache blocks")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--block-size", a.block_size, "Tokens per KV block")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--device", a.device, "Where the forward runs: cpu, or cuda (the GPU forward)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", a.dtype, "Compute dtype of the GPU forward: f32, or bf16 (weights, activations, KV cache)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->add_flag("--cuda-graphs", a.cuda_graphs,
                "With --device cuda: replay decode layers from CUDA graphs (the attention; the whole layer with "
                "--experts device)");
  cmd->add_option("--experts", a.experts,
                  "With --device cuda: how MoE experts run: per-expert (cuBLAS GEMMs per expert), batched "
                  "(grouped-batched cuBLAS), device (own kernel, routing stays on the GPU, for decode)")
      ->capture_default_str()
      ->check(CLI::IsMember({"per-expert", "batched", "device"}));
  cmd->add_flag("--ignore-eos", a.ignore_eos, "Do not stop at end-of-sequence tokens");
  cmd->add_option("--json-schema", a.json_schema_file, "Answer as an instance of the JSON schema in this file");
  cmd->add_option("--regex", a.guided.regex, "Answer matching this regular expression");
  cmd->add_option("--choice", a.guided.choice, "Answer with exactly one of these (repeatable)");
  cmd->add_flag("--json-object", a.guided.json_object, "Answer with a JSON object");
}

}  // namespace tandem::cli
