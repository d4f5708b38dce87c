// `tandem client`: sends one Generate request to a router and streams the
// text; with --score, prints the log-likelihood of the prompt's tokens.
#include <grpcpp/grpcpp.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "commands.h"
#include "tandem/api/channel.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::cli {

namespace {
struct ClientArgs {
  std::string server = "127.0.0.1:50051";
  std::string api_key;
  std::string tls_ca, tls_server_name;
  std::string prompt;
  uint32_t max_tokens = 64;
  float temperature = 0.8f;
  float top_p = 0.95f;
  int32_t top_k = 0;
  float min_p = 0;
  float presence_penalty = 0, frequency_penalty = 0, repetition_penalty = 1;
  uint32_t min_tokens = 0;
  int32_t priority = 0;
  uint64_t seed = 1;
  std::vector<std::string> stop;
  bool score = false;
  // Structured output (at most one; the router refuses more).
  std::string json_schema_file, regex;
  std::vector<std::string> choice;
  bool json_object = false;
};

// A token's bytes for a terminal: control bytes and quotes escaped.
std::string printable(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

int run_client(const ClientArgs& a) {
  auto tls = api::client_tls(a.tls_ca, a.tls_server_name);  // plaintext without --tls-ca
  if (!tls.is_ok()) return std::fprintf(stderr, "tandem client: %s\n", tls.status().message().c_str()), 2;
  auto stub = tandem::v1::Generation::NewStub(api::open_channel(a.server, *tls));
  grpc::ClientContext ctx;
  if (!a.api_key.empty()) ctx.AddMetadata("authorization", bearer(a.api_key));
  tandem::v1::GenerateRequest req;
  req.set_text(a.prompt);
  req.set_priority(a.priority);
  auto* s = req.mutable_sampling();
  s->set_max_tokens(a.score ? 0 : a.max_tokens);
  s->set_temperature(a.temperature);
  s->set_top_p(a.top_p);
  s->set_top_k(a.top_k);
  s->set_seed(a.seed);
  if (a.min_p > 0) s->set_min_p(a.min_p);
  if (a.min_tokens > 0 && !a.score) s->set_min_tokens(a.min_tokens);  // nothing is generated when scoring
  if (a.presence_penalty != 0) s->set_presence_penalty(a.presence_penalty);
  if (a.frequency_penalty != 0) s->set_frequency_penalty(a.frequency_penalty);
  if (a.repetition_penalty != 1) s->set_repetition_penalty(a.repetition_penalty);
  if (a.score) s->set_prompt_logprobs(0);
  for (const auto& x : a.stop) s->add_stop(x);
  if (!a.json_schema_file.empty()) {
    std::ifstream in(a.json_schema_file);
    if (!in) return std::fprintf(stderr, "tandem client: --json-schema: cannot read %s\n", a.json_schema_file.c_str()), 2;
    std::stringstream schema;
    schema << in.rdbuf();
    s->set_guided_json(schema.str());
  }
  if (!a.regex.empty()) s->set_guided_regex(a.regex);
  for (const auto& x : a.choice) s->add_guided_choice(x);
  if (a.json_object) s->set_guided_json_object(true);
  auto reader = stub->Generate(&ctx, req);
  tandem::v1::GenerateResponse r;
  if (!a.score) std::fputs(a.prompt.c_str(), stdout);
  uint32_t prompt_tokens = 0, completion = 0;
  tandem::v1::FinishReason finish = tandem::v1::FINISH_REASON_UNSPECIFIED;
  double total = 0;
  size_t scored = 0;
  while (reader->Read(&r)) {
    if (a.score) {
      for (const auto& lp : r.prompt_logprobs()) {
        std::printf("%8s  \"%s\"\n", lp.has_logprob() ? std::to_string(lp.logprob()).c_str() : "-",
                    printable(lp.token()).c_str());
        if (lp.has_logprob()) {
          total += lp.logprob();
          ++scored;
        }
      }
    } else {
      std::fwrite(r.text().data(), 1, r.text().size(), stdout);
    }
    std::fflush(stdout);
    if (r.finish_reason() != tandem::v1::FINISH_REASON_UNSPECIFIED) {
      finish = r.finish_reason();
      prompt_tokens = r.usage().prompt_tokens();
      completion = r.usage().completion_tokens();
    }
  }
  if (!a.score) std::fputc('\n', stdout);
  std::fflush(stdout);  // before the summary on stderr, so the two do not interleave
  grpc::Status st = reader->Finish();
  if (!st.ok()) {
    std::fprintf(stderr, "tandem client: %s: %s\n", std::to_string(st.error_code()).c_str(), st.error_message().c_str());
    return 1;
  }
  if (a.score) {
    // Perplexity over the scored tokens: exp of the mean negative log-likelihood.
    std::printf("log-likelihood %.4f over %zu tokens, perplexity %.3f\n", total, scored,
                scored ? std::exp(-total / static_cast<double>(scored)) : 1.0);
    return 0;
  }
  std::fprintf(stderr, "finish: %s, prompt tokens %u, completion tokens %u\n",
               finish == tandem::v1::FINISH_REASON_STOP ? "stop" : "length", prompt_tokens, completion);
  return 0;
}
}  // namespace

void register_client(CLI::App& app) {
  static ClientArgs a;
  auto* c = add_command(app, "client", "Send one Generate request to a router and stream the reply",
                        [] { return run_client(a); });
  c->add_option("--server", a.server, "Router address")->capture_default_str();
  add_api_key_option(c, a.api_key);
  add_tls_options(c, a.tls_ca, a.tls_server_name);
  c->add_option("--prompt", a.prompt, "Prompt text")->required();
  c->add_option("--max-tokens", a.max_tokens, "Tokens to generate")->capture_default_str();
  c->add_option("--temperature", a.temperature, "Sampling temperature")->capture_default_str();
  c->add_option("--top-p", a.top_p, "Nucleus sampling mass")->capture_default_str();
  c->add_option("--top-k", a.top_k, "Most likely tokens kept (0: all)")->capture_default_str();
  c->add_option("--min-p", a.min_p, "Drop tokens below this fraction of the most likely one's probability");
  c->add_option("--min-tokens", a.min_tokens, "No stop token or stop string before this many tokens");
  c->add_option("--presence-penalty", a.presence_penalty, "Subtracted from tokens generated at all ([-2, 2])");
  c->add_option("--frequency-penalty", a.frequency_penalty, "Subtracted per time a token was generated ([-2, 2])");
  c->add_option("--repetition-penalty", a.repetition_penalty, "Divides repeated tokens' positive logits (1: off)");
  c->add_option("--priority", a.priority, "Lower is served first")->capture_default_str();
  c->add_option("--seed", a.seed, "Sampling seed")->capture_default_str();
  c->add_option("--stop", a.stop, "Stop string (repeatable)");
  c->add_option("--json-schema", a.json_schema_file, "Answer as an instance of the JSON schema in this file");
  c->add_option("--regex", a.regex, "Answer matching this regular expression");
  c->add_option("--choice", a.choice, "Answer with exactly one of these (repeatable)");
  c->add_flag("--json-object", a.json_object, "Answer with a JSON object");
  c->add_flag("--score", a.score,
              "Generate nothing: print each prompt token's log-probability, the total and the perplexity");
}

}  // namespace tandem::cli
