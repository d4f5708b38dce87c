// `tandem bench`: a closed-loop load generator against a router, over gRPC or
// the OpenAI-compatible HTTP API (or both, for the gateway's cost). Fixed
// seed, random prompts of a given length (token ids), exact output lengths
// (ignore_eos); optionally the first --shared-prefix tokens common to every
// prompt (a system prompt), or to every --prefix-groups'th prompt (as many
// conversations, each with its own history): what prefix caching and the
// router's prefix affinity serve from cache. Reports the serving metrics users know from vLLM's and
// SGLang's benchmarks: TTFT, TPOT = (E2E - TTFT) / (output - 1), ITL (gap
// between streamed chunks), E2E latency (p50/p90/p99), output tokens/s and
// requests/s.
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include "commands.h"
#include "tandem/api/channel.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::cli {

namespace {
using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string server = "127.0.0.1:50051";
  std::string http = "127.0.0.1:8000";
  std::string api = "grpc";  // grpc | http | both
  std::string api_key;
  std::string tls_ca, tls_server_name;
  int concurrency = 8;
  int requests = 64;
  int prompt_tokens = 128;
  int output_tokens = 64;
  int shared_prefix = 0;  // leading prompt tokens every request of a group has in common
  int prefix_groups = 1;  // request i is in group i % prefix_groups
  int urgent_every = 0;   // every k-th request has priority -1 (0: none)
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

// One request's timing; false with `error` set when it failed.
using RunOne = std::function<bool(const tandem::v1::GenerateRequest&, Sample&, std::string& error)>;

// Over the router's gRPC API: each streamed message's new tokens.
RunOne grpc_runner(tandem::v1::Generation::Stub& stub, const std::string& authorization) {
  return [&stub, authorization](const tandem::v1::GenerateRequest& req, Sample& s, std::string& error) {
    grpc::ClientContext ctx;
    if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
    const auto start = Clock::now();
    auto last = start;
    auto reader = stub.Generate(&ctx, req);
    tandem::v1::GenerateResponse m;
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
    if (!st.ok()) error = st.error_message();
    return st.ok();
  };
}

// Over the OpenAI-compatible HTTP API (/v1/completions, streamed): each
// event with text is a chunk; the token count comes from the usage event.
// `ca_file`: HTTPS, trusting that certificate, for `server_name` (default:
// the host dialled). Each request opens its own connection (a handshake each).
RunOne http_runner(const std::string& server, const std::string& authorization, const std::string& ca_file,
                   const std::string& server_name) {
  const auto colon = server.rfind(':');
  const std::string host = server.substr(0, colon), port = colon == std::string::npos ? "80" : server.substr(colon + 1);
  const bool renamed = !ca_file.empty() && !server_name.empty();
  const std::string url = (ca_file.empty() ? "http://" : "https://") + (renamed ? server_name + ":" + port : server);
  return [url, authorization, ca_file, renamed, server_name, host](const tandem::v1::GenerateRequest& req, Sample& s,
                                                                   std::string& error) {
    nlohmann::json body = {{"prompt", nlohmann::json::array()},
                           {"max_tokens", req.sampling().max_tokens()},
                           {"temperature", req.sampling().temperature()},
                           {"seed", req.sampling().seed()},
                           {"ignore_eos", req.sampling().ignore_eos()},
                           {"stream", true},
                           {"stream_options", {{"include_usage", true}}}};
    if (req.priority() != 0) body["priority"] = req.priority();
    for (uint32_t id : req.token_ids().ids()) body["prompt"].push_back(id);
    httplib::Client client(url);
    if (!ca_file.empty()) {
      client.set_ca_cert_path(ca_file.c_str());
      client.enable_server_certificate_verification(true);
    }
    if (renamed) client.set_hostname_addr_map({{server_name, host}});  // the name checked, the address dialled
    client.set_read_timeout(600, 0);
    httplib::Request hr;
    hr.method = "POST";
    hr.path = "/v1/completions";
    hr.set_header("Content-Type", "application/json");
    if (!authorization.empty()) hr.set_header("Authorization", authorization);
    hr.body = body.dump();
    const auto start = Clock::now();
    auto last = start;
    bool first = true, done = false;
    std::string pending;
    hr.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      pending.append(data, n);
      for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
        const std::string event = pending.substr(0, end);
        if (event.rfind("data: ", 0) != 0) continue;
        if (event == "data: [DONE]") {
          done = true;
          continue;
        }
        const auto j = nlohmann::json::parse(event.substr(6), nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("error")) {
          error = j["error"].value("message", "error event");
          continue;
        }
        if (j.contains("usage") && j["usage"].is_object()) s.tokens = j["usage"].value("completion_tokens", 0);
        if (!j.contains("choices") || j["choices"].empty() || j["choices"][0].value("text", "").empty()) continue;
        const auto now = Clock::now();
        if (first) s.ttft = std::chrono::duration<double>(now - start).count();
        else s.itl.push_back(std::chrono::duration<double>(now - last).count());
        first = false;
        last = now;
      }
      return true;
    };
    auto res = client.send(hr);
    s.e2e = std::chrono::duration<double>(Clock::now() - start).count();
    if (!res) error = "HTTP: " + httplib::to_string(res.error());
    else if (res->status != 200) error = "HTTP " + std::to_string(res->status) + ": " + res->body;
    else if (!done && error.empty()) error = "the stream ended without [DONE]";
    return error.empty();
  };
}

struct Report {
  int ok = 0, failures = 0;
  double duration = 0, out_tokens = 0;
  std::vector<double> ttft, tpot, itl, e2e;  // ms
  std::vector<double> urgent_ttft, urgent_e2e, other_ttft, other_e2e;  // ms, with --urgent-every
  std::string first_error;
  double throughput() const { return duration > 0 ? out_tokens / duration : 0; }
};

Report measure(const std::vector<tandem::v1::GenerateRequest>& reqs, int concurrency, const RunOne& run_one) {
  std::vector<Sample> samples(reqs.size());
  std::atomic<size_t> next{0};
  std::mutex err_mu;
  Report rep;
  const auto t0 = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < concurrency; ++w)
    workers.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < reqs.size();) {
        std::string error;
        samples[i].ok = run_one(reqs[i], samples[i], error);
        if (!samples[i].ok) {
          std::lock_guard<std::mutex> l(err_mu);
          ++rep.failures;
          if (rep.first_error.empty()) rep.first_error = error;
        }
      }
    });
  for (auto& t : workers) t.join();
  rep.duration = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const auto& s : samples) {
    if (!s.ok) continue;
    ++rep.ok;
    rep.out_tokens += s.tokens;
    rep.ttft.push_back(s.ttft * 1e3);
    rep.e2e.push_back(s.e2e * 1e3);
    const bool urgent = reqs[static_cast<size_t>(&s - samples.data())].priority() < 0;
    (urgent ? rep.urgent_ttft : rep.other_ttft).push_back(s.ttft * 1e3);
    (urgent ? rep.urgent_e2e : rep.other_e2e).push_back(s.e2e * 1e3);
    if (s.tokens > 1) rep.tpot.push_back((s.e2e - s.ttft) / (s.tokens - 1) * 1e3);
    for (double x : s.itl) rep.itl.push_back(x * 1e3);
  }
  return rep;
}

void print_report(const char* api, const std::string& server, const BenchArgs& a, const Report& r) {
  std::printf("tandem bench (%s): %s, %d requests (%d ok, %d failed), concurrency %d, prompt %d tokens (%d shared "
              "in %d group%s), output %d tokens, seed %llu\n",
              api, server.c_str(), a.requests, r.ok, r.failures, a.concurrency, a.prompt_tokens, a.shared_prefix,
              a.prefix_groups, a.prefix_groups == 1 ? "" : "s", a.output_tokens, static_cast<unsigned long long>(a.seed));
  if (r.failures > 0) std::printf("first error: %s\n", r.first_error.c_str());
  std::printf("duration %.2f s | request throughput %.2f req/s | output throughput %.1f tok/s\n", r.duration,
              r.ok / r.duration, r.throughput());
  std::printf("%-10s %10s %10s %10s %10s\n", "metric(ms)", "mean", "p50", "p90", "p99");
  auto row = [](const char* name, const std::vector<double>& v) {
    double mean = 0;
    for (double x : v) mean += x;
    mean = v.empty() ? 0 : mean / static_cast<double>(v.size());
    std::printf("%-10s %10.2f %10.2f %10.2f %10.2f\n", name, mean, pct(v, 50), pct(v, 90), pct(v, 99));
  };
  row("TTFT", r.ttft);
  row("TPOT", r.tpot);
  row("ITL", r.itl);
  row("E2E", r.e2e);
  if (!r.urgent_ttft.empty() && !r.other_ttft.empty()) {
    // Priority's effect: the urgent requests against the others of the same run.
    row("TTFT urg", r.urgent_ttft);
    row("TTFT rest", r.other_ttft);
    row("E2E urg", r.urgent_e2e);
    row("E2E rest", r.other_e2e);
    std::printf("urgent / rest (every %d-th request at priority -1): TTFT p50 %.3f, E2E p50 %.3f\n", a.urgent_every,
                pct(r.urgent_ttft, 50) / pct(r.other_ttft, 50), pct(r.urgent_e2e, 50) / pct(r.other_e2e, 50));
  }
}

int run_bench(const BenchArgs& a) {
  if (a.shared_prefix > a.prompt_tokens) {
    std::fprintf(stderr, "tandem bench: --shared-prefix (%d) is longer than --prompt-tokens (%d)\n", a.shared_prefix,
                 a.prompt_tokens);
    return 2;
  }
  auto tls = api::client_tls(a.tls_ca, a.tls_server_name);  // plaintext without --tls-ca
  if (!tls.is_ok()) return std::fprintf(stderr, "tandem bench: %s\n", tls.status().message().c_str()), 2;
  auto channel = api::open_channel(a.server, *tls);
  auto stub = tandem::v1::Generation::NewStub(channel);
  uint32_t vocab = 0;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!a.api_key.empty()) ctx.AddMetadata("authorization", bearer(a.api_key));
    tandem::v1::ListModelsRequest rq;
    tandem::v1::ListModelsResponse rp;
    grpc::Status st = stub->ListModels(&ctx, rq, &rp);
    if (!st.ok() || rp.models_size() == 0) {
      std::fprintf(stderr, "tandem bench: cannot reach %s: %s\n", a.server.c_str(), st.error_message().c_str());
      return 1;
    }
    vocab = rp.models(0).vocab_size();
  }
  // Prompts drawn up front from the seed, so every run sends the same requests
  // (a rerun against the same cluster finds them in its prefix cache: change
  // --seed to measure cold prefills).
  auto make_requests = [&](uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::vector<uint32_t>> shared(static_cast<size_t>(a.prefix_groups));
    for (auto& g : shared)
      for (int t = 0; t < a.shared_prefix; ++t) g.push_back(static_cast<uint32_t>(3 + rng() % (vocab - 3)));
    std::vector<tandem::v1::GenerateRequest> reqs(static_cast<size_t>(a.requests));
    for (size_t i = 0; i < reqs.size(); ++i) {
      auto& r = reqs[i];
      for (uint32_t id : shared[i % shared.size()]) r.mutable_token_ids()->add_ids(id);
      for (int t = a.shared_prefix; t < a.prompt_tokens; ++t)
        r.mutable_token_ids()->add_ids(static_cast<uint32_t>(3 + rng() % (vocab - 3)));
      auto* s = r.mutable_sampling();
      s->set_max_tokens(static_cast<uint32_t>(a.output_tokens));
      s->set_temperature(0.8f);
      s->set_seed(rng());
      s->set_ignore_eos(true);
      if (a.urgent_every > 0 && i % static_cast<size_t>(a.urgent_every) == static_cast<size_t>(a.urgent_every) - 1)
        r.set_priority(-1);
    }
    return reqs;
  };
  int failures = 0;
  Report grpc_rep, http_rep;
  if (a.api != "http") {
    grpc_rep = measure(make_requests(a.seed), a.concurrency, grpc_runner(*stub, bearer(a.api_key)));
    print_report("grpc", a.server, a, grpc_rep);
    failures += grpc_rep.failures;
  }
  if (a.api != "grpc") {
    // After a gRPC pass, other prompts of the same shape: the same ones would
    // be found in the prefix cache and flatter HTTP.
    BenchArgs pass = a;
    if (a.api == "both") pass.seed = a.seed + 1;
    http_rep = measure(make_requests(pass.seed), a.concurrency, http_runner(a.http, bearer(a.api_key), a.tls_ca, a.tls_server_name));
    print_report("http", a.http, pass, http_rep);
    failures += http_rep.failures;
  }
  if (a.api == "both" && grpc_rep.ok > 0 && http_rep.ok > 0)
    std::printf("http / grpc: output throughput %.3f, TTFT p50 %.3f, TPOT p50 %.3f (requests of the same shape, "
                "gRPC the baseline)\n",
                http_rep.throughput() / grpc_rep.throughput(), pct(http_rep.ttft, 50) / pct(grpc_rep.ttft, 50),
                pct(http_rep.tpot, 50) / pct(grpc_rep.tpot, 50));
  return failures > 0 ? 1 : 0;
}
}  // namespace

void register_bench(CLI::App& app) {
  static BenchArgs a;
  auto* b = add_command(app, "bench", "Load-test a running cluster over gRPC or HTTP (TTFT, TPOT, ITL, throughput)",
                        [] { return run_bench(a); });
  b->add_option("--server", a.server, "Router address (gRPC)")->capture_default_str();
  add_api_key_option(b, a.api_key);
  add_tls_options(b, a.tls_ca, a.tls_server_name);
  b->add_option("--http", a.http, "Router's OpenAI-compatible HTTP address (router.http_listen)")->capture_default_str();
  b->add_option("--api", a.api,
                "grpc, http (streamed /v1/completions), or both: requests of the same shape over each (other prompts for "
                "http, so that the prefix cache does not flatter it), and their ratio")
      ->capture_default_str()
      ->check(CLI::IsMember({"grpc", "http", "both"}));
  b->add_option("--concurrency", a.concurrency, "Requests in flight")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--requests", a.requests, "Requests to send")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--prompt-tokens", a.prompt_tokens, "Prompt length")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--output-tokens", a.output_tokens, "Output length")->capture_default_str()->check(CLI::PositiveNumber);
  b->add_option("--shared-prefix", a.shared_prefix,
                "Leading prompt tokens common to every request (a system prompt), at most --prompt-tokens")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  b->add_option("--prefix-groups", a.prefix_groups,
                "Distinct shared prefixes (conversations); request i starts with prefix i mod this")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  b->add_option("--seed", a.seed, "Seed for prompts and sampling")->capture_default_str();
  b->add_option("--urgent-every", a.urgent_every,
                "Send every k-th request at priority -1 (more urgent) and compare its latency with the rest")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

}  // namespace tandem::cli
