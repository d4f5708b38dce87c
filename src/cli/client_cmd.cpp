// `tandem client`: sends one Generate request to a router and streams the text.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <string>

#include "commands.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::cli {

namespace {
struct ClientArgs {
  std::string server = "127.0.0.1:50051";
  std::string prompt;
  uint32_t max_tokens = 64;
  float temperature = 0.8f;
  float top_p = 0.95f;
  uint64_t seed = 1;
  std::vector<std::string> stop;
};

int run_client(const ClientArgs& a) {
  auto stub = tandem::v1::Generation::NewStub(grpc::CreateChannel(a.server, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  tandem::v1::GenerateRequest req;
  req.set_text(a.prompt);
  auto* s = req.mutable_sampling();
  s->set_max_tokens(a.max_tokens);
  s->set_temperature(a.temperature);
  s->set_top_p(a.top_p);
  s->set_seed(a.seed);
  for (const auto& x : a.stop) s->add_stop(x);
  auto reader = stub->Generate(&ctx, req);
  tandem::v1::GenerateResponse r;
  std::fputs(a.prompt.c_str(), stdout);
  uint32_t prompt_tokens = 0, completion = 0;
  tandem::v1::FinishReason finish = tandem::v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&r)) {
    std::fwrite(r.text().data(), 1, r.text().size(), stdout);
    std::fflush(stdout);
    if (r.finish_reason() != tandem::v1::FINISH_REASON_UNSPECIFIED) {
      finish = r.finish_reason();
      prompt_tokens = r.usage().prompt_tokens();
      completion = r.usage().completion_tokens();
    }
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);  // before the summary on stderr, so the two do not interleave
  grpc::Status st = reader->Finish();
  if (!st.ok()) {
    std::fprintf(stderr, "tandem client: %s: %s\n", std::to_string(st.error_code()).c_str(), st.error_message().c_str());
    return 1;
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
  c->add_option("--prompt", a.prompt, "Prompt text")->required();
  c->add_option("--max-tokens", a.max_tokens, "Tokens to generate")->capture_default_str();
  c->add_option("--temperature", a.temperature, "Sampling temperature")->capture_default_str();
  c->add_option("--top-p", a.top_p, "Nucleus sampling mass")->capture_default_str();
  c->add_option("--seed", a.seed, "Sampling seed")->capture_default_str();
  c->add_option("--stop", a.stop, "Stop string (repeatable)");
}

}  // namespace tandem::cli
