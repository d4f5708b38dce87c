#include "http_gateway.h"

#include "api_keys.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <deque>
#include <condition_variable>
#include <random>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "openai.h"
#include "tandem/common/logging.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::router {

namespace {

namespace pb = tandem::v1;
namespace hpb = grpc::health::v1;
using json = nlohmann::ordered_json;  // as openai::Json

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void send_error(httplib::Response& res, const openai::HttpError& e) {
  res.status = e.status;
  res.set_content(openai::error_body(e), "application/json");
}

// The router's own endpoint as a client reaches it (a wildcard bind is dialled on loopback).
std::string dial_address(const api::Endpoint& e) {
  const bool wildcard = e.host == "0.0.0.0" || e.host == "::" || e.host == "[::]" || e.host.empty();
  return (wildcard ? std::string("127.0.0.1") : e.host) + ":" + std::to_string(e.port);
}

// One gRPC call of the gateway. Member order matters: the reader is
// destroyed before the context it was made with.
struct Call {
  grpc::ClientContext ctx;
  pb::GenerateResponse first;
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader;
};

// What a generation stream came to: the text, how it ended, the usage.
struct Outcome {
  std::string text;
  pb::FinishReason finish = pb::FINISH_REASON_UNSPECIFIED;
  pb::Usage usage;
  // Whole answers only (a stream sends them as they come): an echoed
  // prompt's tokens (with prompt_logprobs), then the generated ones.
  std::vector<pb::TokenLogprob> logprobs;
  std::vector<pb::ToolCall> tool_calls;
  std::string reasoning;
  void add(const pb::GenerateResponse& r, bool keep_logprobs = true) {
    text += r.text();
    reasoning += r.reasoning_text();
    tool_calls.insert(tool_calls.end(), r.tool_calls().begin(), r.tool_calls().end());
    if (keep_logprobs) {
      logprobs.insert(logprobs.end(), r.prompt_logprobs().begin(), r.prompt_logprobs().end());
      logprobs.insert(logprobs.end(), r.logprobs().begin(), r.logprobs().end());
    }
    if (r.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
      finish = r.finish_reason();
      usage = r.usage();
    }
  }
};

class Gateway final : public HttpGateway {
 public:
  Gateway(const api::DeploymentConfig& cfg, std::function<std::string()> metrics, std::shared_ptr<ApiKeys> keys,
          std::shared_ptr<grpc::Channel> router, std::string token)
      : server_(cfg.tls() ? std::make_unique<httplib::SSLServer>(cfg.tls_cert_file.c_str(), cfg.tls_key_file.c_str())
                          : std::make_unique<httplib::Server>()),
        metrics_(std::move(metrics)),
        served_name_(cfg.served_name),
        started_(unix_now()),
        timeout_(std::chrono::seconds(cfg.request_timeout_s + 10)),
        id_salt_((uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()),
        api_keys_(std::move(keys)),
        token_(std::move(token)) {
    auto channel = router ? router : grpc::CreateChannel(dial_address(cfg.router), grpc::InsecureChannelCredentials());
    generation_ = pb::Generation::NewStub(channel);
    health_ = hpb::Health::NewStub(channel);
    // A worker per request the router can admit, and spare ones so that
    // /health, /v1/models and the 429s of requests past that never wait
    // behind long streams.
    capacity_ = std::clamp<int64_t>(
        static_cast<int64_t>(cfg.attention_nodes) * cfg.max_running_sequences + cfg.max_queue, 1, 1024);
    const auto workers = static_cast<size_t>(capacity_ + kSpareWorkers);
    server_->new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
    // Below gRPC's default 4 MiB message limit, so a body too large is 413
    // here rather than a RESOURCE_EXHAUSTED (429, "retry") from gRPC.
    server_->set_payload_max_length(size_t{3} << 20);
    // Idle keep-alive connections hold a worker: let them go soon.
    server_->set_keep_alive_timeout(1);
    // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, with which a
    // second router on a taken port would bind and silently share it.
    server_->set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    routes();
  }

  ~Gateway() override { stop(); }
  bool valid() const { return server_->is_valid(); }

  Status listen(const api::Endpoint& at) {
    std::string host = at.host;  // "[::1]" binds as "::1"
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (!server_->bind_to_port(host, at.port))
      return unavailable("router.http_listen: cannot listen on " + at.to_string());
    thread_ = std::thread([this] {
      server_->listen_after_bind();
      stopped_ = true;
    });
    // httplib's stop() does nothing until the accept loop runs: wait for it,
    // so a stop right after the start cannot leave the thread behind.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!server_->is_running() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!server_->is_running()) return unavailable("router.http_listen: the HTTP server on " + at.to_string() + " did not start");
    TANDEM_LOG_INFO("router: OpenAI-compatible HTTP API on {}", at.to_string());
    return Status::ok();
  }

  void stop() override {
    if (!thread_.joinable()) return;
    // A thread started but not yet accepting would ignore one stop().
    while (!server_->is_running() && !stopped_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    server_->stop();
    thread_.join();
  }

 private:
  void routes() {
    // Every route but the probes' (/health for load balancers, /metrics for
    // Prometheus) wants a key when router.api_keys sets some.
    server_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/health" || req.path == "/metrics" || api_keys_->allows(req.get_header_value("Authorization")))
        return httplib::Server::HandlerResponse::Unhandled;
      openai::HttpError e;
      e.status = 401;
      e.message = std::string(ApiKeys::kRefusal);
      e.code = "invalid_api_key";
      res.set_header("WWW-Authenticate", "Bearer");
      // Its body is not read: the connection cannot carry another request.
      res.set_header("Connection", "close");
      send_error(res, e);
      return httplib::Server::HandlerResponse::Handled;
    });
    server_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(openai::dump(openai::model_list(served_name_, started_)), "application/json");
    });
    server_->Get("/health", [this](const httplib::Request&, httplib::Response& res) { health(res); });
    if (metrics_)
      server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics_(), "text/plain; version=0.0.4");
      });
    server_->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      answer(res, with_request_id(openai::parse_completion(req.body), req, res), /*chat=*/false,
             [this, client = client_address(req)](grpc::ClientContext* ctx, const pb::GenerateRequest& r) {
               ctx->AddMetadata(std::string(kForwardedFor), client);
               return generation_->Generate(ctx, r);
             });
    });
    server_->Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      answer(res, with_request_id(openai::parse_chat(req.body), req, res), /*chat=*/true,
             [this, client = client_address(req)](grpc::ClientContext* ctx, const pb::ChatRequest& r) {
               ctx->AddMetadata(std::string(kForwardedFor), client);
               return generation_->Chat(ctx, r);
             });
    });
    // vLLM's tokenizer routes: unary, quick, not counted against generation capacity.
    server_->Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
      unary<pb::TokenizeResponse>(res, openai::parse_tokenize(req.body),
                                  [this](grpc::ClientContext* ctx, const pb::TokenizeRequest& r, pb::TokenizeResponse* out) {
                                    return generation_->Tokenize(ctx, r, out);
                                  },
                                  [](const pb::TokenizeResponse& r) { return openai::tokenize_response(r); });
    });
    server_->Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
      unary<pb::DetokenizeResponse>(
          res, openai::parse_detokenize(req.body),
          [this](grpc::ClientContext* ctx, const pb::DetokenizeRequest& r, pb::DetokenizeResponse* out) {
            return generation_->Detokenize(ctx, r, out);
          },
          [](const pb::DetokenizeResponse& r) { return openai::detokenize_response(r); });
    });
    // Unknown routes, and any other error without a body of its own, in OpenAI's error shape.
    server_->set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                       httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      openai::HttpError e;
      e.status = res.status;
      e.type = res.status == 404 ? "not_found_error" : "invalid_request_error";
      e.message = res.status == 404 ? "no route " + req.method + " " + req.path
                                    : "HTTP " + std::to_string(res.status) + " for " + req.method + " " + req.path;
      send_error(res, e);
      return httplib::Server::HandlerResponse::Handled;
    }));
    server_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      openai::HttpError e;
      e.status = 500;
      e.type = "server_error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& x) {
        e.message = x.what();
      } catch (...) {
        e.message = "unknown error";
      }
      send_error(res, e);
    });
  }

  // Generation requests in the gateway, bounded by the router's capacity:
  // past it, 429 at once instead of a worker queue without end.
  class Admission {
   public:
    explicit Admission(Gateway& g) : g_(g), ok_(g.in_flight_.fetch_add(1) < g.capacity_) {}
    ~Admission() { g_.in_flight_.fetch_sub(1); }
    explicit operator bool() const { return ok_; }

   private:
    Gateway& g_;
    bool ok_;
  };

  openai::HttpError busy() const {
    openai::HttpError e;
    e.status = 429;
    e.type = "rate_limit_error";
    e.message = "queue full: " + std::to_string(capacity_) + " requests in flight";
    return e;
  }

  void vouch(grpc::ClientContext& ctx) const {
    if (!token_.empty()) ctx.AddMetadata(std::string(kGatewayToken), token_);
  }

  // A proxy's X-Request-Id: the request id the router (and its access log)
  // sees for every request of the call, echoed in the response's header.
  template <typename Call>
  static std::variant<Call, openai::HttpError> with_request_id(std::variant<Call, openai::HttpError> parsed,
                                                               const httplib::Request& req, httplib::Response& res) {
    if (!req.has_header("X-Request-Id")) return parsed;
    const std::string id = req.get_header_value("X-Request-Id");
    const bool printable = std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; });
    if (id.empty() || id.size() > 256 || !printable) {
      openai::HttpError e;
      e.message = "X-Request-Id: 1 to 256 printable characters without blanks";
      e.param = "X-Request-Id";
      return e;
    }
    res.set_header("X-Request-Id", id);
    if (auto* call = std::get_if<Call>(&parsed)) {
      call->request.set_request_id(id);
      for (auto& more : call->more) more.set_request_id(id);
    }
    return parsed;
  }

  // The HTTP client's address for the router's access log.
  static std::string client_address(const httplib::Request& req) {
    return req.remote_addr + ":" + std::to_string(req.remote_port);
  }

  void health(httplib::Response& res) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    hpb::HealthCheckResponse out;
    const grpc::Status st = health_->Check(&ctx, hpb::HealthCheckRequest{}, &out);
    const bool serving = st.ok() && out.status() == hpb::HealthCheckResponse::SERVING;
    res.status = serving ? 200 : 503;
    res.set_content(json{{"status", serving ? "ok" : "unavailable"}}.dump(), "application/json");
  }

  std::string next_id(const char* prefix) {
    char hex[40];
    std::snprintf(hex, sizeof hex, "%016llx%08llx", static_cast<unsigned long long>(id_salt_),
                  static_cast<unsigned long long>(counter_.fetch_add(1)));
    return prefix + std::string(hex);
  }

  // A parsed request of either endpoint: `open(ctx, request)` starts one of
  // the router's streams on a context of ours.
  template <typename Call, typename Open>
  void answer(httplib::Response& res, const std::variant<Call, openai::HttpError>& parsed, bool chat,
              const Open& open) {
    if (const auto* e = std::get_if<openai::HttpError>(&parsed)) return send_error(res, *e);
    const Call& call = std::get<Call>(parsed);
    Admission admitted(*this);
    if (!admitted) return send_error(res, busy());
    if (call.stream) return serve_stream(res, call.request, call.more, call.n, call.include_usage, chat, open);
    serve_whole(res, call.request, call.more, call.n, chat, open);
  }

  // One unary call to the router: its answer as JSON, or its error.
  template <typename Response, typename Request, typename Call, typename Shape>
  void unary(httplib::Response& res, const std::variant<Request, openai::HttpError>& parsed, const Call& call,
             const Shape& shape) {
    if (const auto* e = std::get_if<openai::HttpError>(&parsed)) return send_error(res, *e);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    vouch(ctx);
    Response out;
    const grpc::Status st = call(&ctx, std::get<Request>(parsed), &out);
    if (!st.ok()) return send_error(res, openai::from_grpc(st));
    res.set_content(openai::dump(shape(out)), "application/json");
  }

  // The streams of a streamed answer, one per choice (n > 1, a batch of
  // prompts: several), their messages in arrival order: with several, a
  // reader thread per stream feeds one queue; with one, it is read in place.
  class Streams {
   public:
    struct Item {
      size_t index = 0;
      bool end = false;  // the stream ended: `status` says how
      pb::GenerateResponse message;
      grpc::Status status;
    };
    std::vector<std::unique_ptr<Call>> calls;

    ~Streams() {
      cancel();
      for (auto& t : readers_) t.join();
    }
    void cancel() {
      for (auto& c : calls) c->ctx.TryCancel();
    }
    // Each stream's first message (already read) first, in choice order.
    void start() {
      for (size_t i = 0; i < calls.size(); ++i) queue_.push_back({i, false, calls[i]->first, {}});
      if (calls.size() == 1) return;
      for (size_t i = 0; i < calls.size(); ++i)
        readers_.emplace_back([this, i] {
          Item it{i, false, {}, {}};
          while (calls[i]->reader->Read(&it.message)) push(it);
          push({i, true, {}, calls[i]->reader->Finish()});
        });
    }
    Item next() {
      std::unique_lock<std::mutex> lock(mu_);
      if (calls.size() == 1 && queue_.empty()) {
        lock.unlock();
        Item it{0, false, {}, {}};
        if (!calls[0]->reader->Read(&it.message)) it = {0, true, {}, calls[0]->reader->Finish()};
        return it;
      }
      ready_.wait(lock, [&] { return !queue_.empty(); });
      Item it = std::move(queue_.front());
      queue_.pop_front();
      return it;
    }

   private:
    void push(Item it) {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(it));
      ready_.notify_one();
    }
    std::mutex mu_;
    std::condition_variable ready_;
    std::deque<Item> queue_;
    std::vector<std::thread> readers_;
  };

  // A streamed answer: each stream's first message is awaited before
  // answering, so a request the router refuses gets its HTTP status; from
  // then on every message becomes an event of its choice (`index`).
  template <typename Request, typename Open>
  void serve_stream(httplib::Response& res, const Request& first, const std::vector<Request>& more, int n,
                    bool include_usage, bool chat, const Open& open) {
    std::vector<const Request*> requests = {&first};
    for (const auto& r : more) requests.push_back(&r);
    auto streams = std::make_shared<Streams>();
    for (size_t i = 0; i < requests.size(); ++i) {
      // One object per call: the reader goes before the context it uses.
      auto call = std::make_unique<Call>();
      call->ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
      vouch(call->ctx);
      call->reader = open(&call->ctx, *requests[i]);
      streams->calls.push_back(std::move(call));
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      Call& call = *streams->calls[i];
      if (call.reader->Read(&call.first)) continue;
      openai::HttpError e = openai::from_grpc(finish_or_ended(*call.reader));  // before the others are cancelled
      streams->cancel();
      if (requests.size() > 1) e.message = choice_name(chat, i, n) + ": " + e.message;
      return send_error(res, e);
    }
    streams->start();
    const std::string id = next_id(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = unix_now();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [this, streams, id, created, chat, n, include_usage](size_t, httplib::DataSink& sink) {
          // httplib calls this outside its handler's exception guard: nothing may escape.
          try {
            return stream_events(*streams, sink, id, created, chat, n, include_usage);
          } catch (const std::exception& x) {
            streams->cancel();
            TANDEM_LOG_WARN("router: HTTP stream {} failed: {}", id, x.what());
            return false;
          }
        });
  }

  static std::string choice_name(bool chat, size_t i, int n) {
    return chat ? "choice " + std::to_string(i) : "prompt " + std::to_string(i / static_cast<size_t>(n));
  }

  bool stream_events(Streams& streams, httplib::DataSink& sink, const std::string& id, int64_t created, bool chat,
                     int n, bool include_usage) {
    // Stops the router's streams when the client has gone: the attention
    // nodes then free the sequences at their next step.
    auto send = [&](const std::string& event) {
      if (sink.write(event.data(), event.size())) return true;
      streams.cancel();
      return false;
    };
    const size_t choices = streams.calls.size();
    const auto indexed = [](json chunk, size_t i) {
      chunk["choices"][0]["index"] = i;
      return chunk;
    };
    if (chat)
      for (size_t i = 0; i < choices; ++i)
        if (!send(openai::sse(indexed(openai::chat_chunk(id, created, served_name_,
                                                         {{"role", "assistant"}, {"content", ""}},
                                                         pb::FINISH_REASON_UNSPECIFIED),
                                      i))))
          return false;
    pb::Usage total;
    std::vector<size_t> token_bytes(choices, 0);  // text_offset of each choice's next token (completions' logprobs)
    for (size_t open_streams = choices; open_streams > 0;) {
      Streams::Item it = streams.next();
      if (it.end) {
        --open_streams;
        if (it.status.ok()) continue;
        // Headers are out: the error travels as an event, as OpenAI's server does.
        streams.cancel();
        openai::HttpError e = openai::from_grpc(it.status);
        if (choices > 1) e.message = choice_name(chat, it.index, n) + ": " + e.message;
        send(openai::error_event(e));
        sink.done();
        return true;
      }
      const pb::GenerateResponse& r = it.message;
      const bool last = r.finish_reason() != pb::FINISH_REASON_UNSPECIFIED;
      if (last) {
        total.set_prompt_tokens(total.prompt_tokens() + r.usage().prompt_tokens());
        total.set_completion_tokens(total.completion_tokens() + r.usage().completion_tokens());
      }
      // A message with tokens but no text yet (an incomplete UTF-8 character)
      // still streams when its tokens' log-probabilities were asked for.
      if (r.text().empty() && r.reasoning_text().empty() && r.tool_call_deltas_size() == 0 && !last &&
          r.logprobs_size() == 0 && r.prompt_logprobs_size() == 0)
        continue;
      json logprobs;
      if (r.logprobs_size() > 0 || r.prompt_logprobs_size() > 0) {
        std::vector<pb::TokenLogprob> mine(r.prompt_logprobs().begin(), r.prompt_logprobs().end());
        mine.insert(mine.end(), r.logprobs().begin(), r.logprobs().end());
        logprobs = chat ? openai::chat_logprobs(mine) : openai::completion_logprobs(mine, token_bytes[it.index]);
        for (const auto& lp : mine) token_bytes[it.index] += lp.token().size();
      }
      json delta = r.text().empty() ? json::object() : json{{"content", r.text()}};
      if (!r.reasoning_text().empty()) delta["reasoning_content"] = r.reasoning_text();
      if (r.tool_call_deltas_size() > 0)
        delta["tool_calls"] = openai::tool_call_deltas({r.tool_call_deltas().begin(), r.tool_call_deltas().end()});
      const json chunk = chat ? openai::chat_chunk(id, created, served_name_, delta, r.finish_reason(), logprobs)
                              : openai::completion_chunk(id, created, served_name_, r.text(), r.finish_reason(), logprobs);
      if (!send(openai::sse(indexed(chunk, it.index)))) return false;
    }
    if (include_usage &&
        !send(openai::sse(openai::usage_chunk(chat ? "chat.completion.chunk" : "text_completion", id, created,
                                              served_name_, total))))
      return false;
    if (!send(std::string(openai::kSseDone))) return false;
    sink.done();
    return true;
  }

  // An answer in one object, one choice per request (`first`, then `more`: a
  // batch of prompts, n > 1), all of them run at once; the first failure, by
  // choice order, if any, names its prompt or choice when there are several.
  // The socket is not watched meanwhile: a client that leaves does not end
  // the requests (httplib 0.11 cannot tell); max_tokens and
  // router.request_timeout_s bound them.
  template <typename Request, typename Open>
  void serve_whole(httplib::Response& res, const Request& first, const std::vector<Request>& more, int n, bool chat,
                   const Open& open) {
    std::vector<const Request*> requests = {&first};
    for (const auto& r : more) requests.push_back(&r);
    std::vector<Outcome> outcomes(requests.size());
    std::vector<grpc::Status> statuses(requests.size());
    auto run = [&](size_t i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
      vouch(ctx);
      auto reader = open(&ctx, *requests[i]);
      pb::GenerateResponse r;
      bool answered = false;
      while (reader->Read(&r)) {
        outcomes[i].add(r);
        answered = true;
      }
      statuses[i] = answered ? reader->Finish() : finish_or_ended(*reader);
    };
    if (requests.size() == 1) {
      run(0);
    } else {
      std::vector<std::thread> calls;
      for (size_t i = 0; i < requests.size(); ++i) calls.emplace_back(run, i);
      for (auto& t : calls) t.join();
    }
    std::vector<openai::Choice> choices;
    pb::Usage total;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (!statuses[i].ok()) {
        openai::HttpError e = openai::from_grpc(statuses[i]);
        if (requests.size() > 1) e.message = choice_name(chat, i, n) + ": " + e.message;
        return send_error(res, e);
      }
      openai::Choice c{outcomes[i].text, outcomes[i].finish, std::nullopt, std::move(outcomes[i].tool_calls),
                       std::move(outcomes[i].reasoning)};
      if (requests[i]->sampling().has_logprobs()) c.logprobs = std::move(outcomes[i].logprobs);
      choices.push_back(std::move(c));
      total.set_prompt_tokens(total.prompt_tokens() + outcomes[i].usage.prompt_tokens());
      total.set_completion_tokens(total.completion_tokens() + outcomes[i].usage.completion_tokens());
    }
    const json body = chat ? openai::chat_completion(next_id("chatcmpl-"), unix_now(), served_name_, choices, total)
                           : openai::completion(next_id("cmpl-"), unix_now(), served_name_, choices, total);
    res.set_content(openai::dump(body), "application/json");
  }

  // The status of a stream that ended before its first message.
  static grpc::Status finish_or_ended(grpc::ClientReader<pb::GenerateResponse>& reader) {
    grpc::Status st = reader.Finish();
    if (st.ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "the router ended the stream without an answer");
    return st;
  }

  static constexpr int64_t kSpareWorkers = 16;

  std::unique_ptr<httplib::Server> server_;  // an SSLServer with router.tls_*
  std::thread thread_;
  std::atomic<bool> stopped_{false};  // the accept loop has returned
  int64_t capacity_ = 1;
  std::atomic<int64_t> in_flight_{0};
  std::function<std::string()> metrics_;
  std::unique_ptr<pb::Generation::Stub> generation_;
  std::unique_ptr<hpb::Health::Stub> health_;
  std::string served_name_;
  int64_t started_;
  std::chrono::seconds timeout_;
  uint64_t id_salt_;
  std::shared_ptr<ApiKeys> api_keys_;
  std::string token_;  // kGatewayToken's value; empty: none
  std::atomic<uint64_t> counter_{0};
};

}  // namespace

Result<std::unique_ptr<HttpGateway>> HttpGateway::start(const api::DeploymentConfig& config,
                                                        std::function<std::string()> metrics,
                                                        std::shared_ptr<grpc::Channel> router,
                                                        std::shared_ptr<ApiKeys> keys, std::string token) {
  if (!keys) {
    TANDEM_ASSIGN_OR_RETURN(auto configured, config.accepted_api_keys());
    keys = std::make_shared<ApiKeys>(std::move(configured));
  }
  auto g = std::make_unique<Gateway>(config, std::move(metrics), std::move(keys), std::move(router), std::move(token));
  if (!g->valid())
    return invalid_argument(config.source + ": router.tls_cert_file / router.tls_key_file: '" + config.tls_cert_file +
                            "' and '" + config.tls_key_file + "' are not a PEM certificate and its private key");
  TANDEM_RETURN_IF_ERROR(g->listen(config.http));
  return std::unique_ptr<HttpGateway>(std::move(g));
}

}  // namespace tandem::router
