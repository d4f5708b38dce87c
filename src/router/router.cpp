#include "tandem/router/router.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <random>
#include <thread>

#include "access_log.h"
#include "api_keys.h"
#include "chat_tools.h"
#include "http_gateway.h"
#include "metrics.h"
#include "prefix_affinity.h"
#include "stop_strings.h"
#include "tandem/api/channel.h"
#include "tandem/api/health.h"
#include "tandem/common/grpc_status.h"
#include "tandem/common/logging.h"
#include "tandem/engine/engine.h"  // kMaxTopLogprobs
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/guided.h"
#include "tandem/model/jinja.h"
#include "tandem/model/reasoning.h"
#include "tandem/model/tool_calls.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::router {

namespace pb = tandem::v1;
namespace ipb = tandem::internal::v1;

namespace {

constexpr uint32_t kDefaultMaxTokens = 256;

grpc::Status invalid(const std::string& field, const std::string& what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, field + ": " + what);
}

struct NodeHandle {
  int index = 0;  // attention node rank
  std::string address;
  std::unique_ptr<ipb::AttentionNode::Stub> stub;
  std::atomic<bool> healthy{false};  // the monitor's last poll answered
  // A request's stream to the node failed since that poll: new requests go
  // elsewhere while there is elsewhere, and the monitor polls again at once.
  std::atomic<bool> suspect{false};
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> prompt_tokens_in_flight{0};  // of the requests in flight there
  int slow_polls = 0;  // consecutive polls that timed out (monitor thread only)
};

// A node whose poll times out this many times in a row is down; one that
// refuses the connection is down at once. A busy machine can hold a poll past
// its deadline without the node being gone.
constexpr int kSlowPollsBeforeDown = 3;

// Whether a polled node counts as up: it answered, or it was up and has only
// been slow (missed the deadline) fewer than kSlowPollsBeforeDown times in a row.
bool still_up(bool answered, bool missed_deadline, bool was_up, int& slow_polls) {
  if (answered) {
    slow_polls = 0;
    return true;
  }
  return missed_deadline && was_up && ++slow_polls < kSlowPollsBeforeDown;
}

// The access-log entry of the Generate/Chat call this thread runs (null
// outside one, or with no access log).
thread_local AccessEntry* current_access = nullptr;

// Prompt prefixes the router remembers for prefix affinity (about 100 bytes
// each with the map and age-list nodes: some 25 MiB when full).
constexpr size_t kAffinityPrefixes = size_t{1} << 18;

class RouterImpl final : public Router, public pb::Generation::Service {
 public:
  Status init(const api::DeploymentConfig& cfg) {
    cfg_ = cfg;
    if (!cfg.access_log.empty()) {
      TANDEM_ASSIGN_OR_RETURN(access_log_, AccessLog::open(cfg.access_log));
    }
    TANDEM_ASSIGN_OR_RETURN(auto keys, cfg.accepted_api_keys());
    api_keys_ = std::make_shared<ApiKeys>(std::move(keys));
    std::random_device entropy;
    char hex[33];
    std::snprintf(hex, sizeof hex, "%08x%08x%08x%08x", entropy(), entropy(), entropy(), entropy());
    gateway_token_ = hex;
    TANDEM_ASSIGN_OR_RETURN(ck_, model::Checkpoint::open(cfg.model_path));
    if (ck_.tokenizer_config.chat_template.empty()) {
      chat_template_error_ = "the model has no chat template (tokenizer_config.json / chat_template.jinja)";
    } else {
      auto t = model::JinjaTemplate::parse(ck_.tokenizer_config.chat_template);
      if (t.is_ok()) chat_template_ = std::make_unique<model::JinjaTemplate>(std::move(t).value());
      else chat_template_error_ = "the model's chat template does not parse: " + t.status().message();
    }
    // Tools render with a "tool_use" template where the model names one (as
    // transformers does); the call format is that template's.
    const std::string& tool_source = ck_.tokenizer_config.tool_use_template.empty()
                                         ? ck_.tokenizer_config.chat_template
                                         : ck_.tokenizer_config.tool_use_template;
    if (!ck_.tokenizer_config.tool_use_template.empty()) {
      // A broken tool_use template refuses requests with tools, not every chat.
      auto t = model::JinjaTemplate::parse(tool_source);
      if (t.is_ok()) tool_template_ = std::make_unique<model::JinjaTemplate>(std::move(t).value());
      else tool_template_error_ = "the model's tool_use chat template does not parse: " + t.status().message();
    }
    TANDEM_ASSIGN_OR_RETURN(tool_format_, model::tool_call_format(cfg.tool_call_parser, tool_source));
    TANDEM_ASSIGN_OR_RETURN(reasoning_format_, model::reasoning_format(cfg.reasoning_parser));
    // A tag the tokenizer holds as a special token is left out of decoded
    // text: the parser reading it gets it put back.
    auto special_tags = [&](const std::vector<std::string_view>& tags, std::vector<std::pair<int32_t, std::string>>& out) {
      for (std::string_view tag : tags)
        if (auto id = ck_.tokenizer->token_to_id(std::string(tag)); id && ck_.tokenizer->is_special(*id))
          out.push_back({*id, std::string(tag)});
    };
    special_tags(model::tool_call_tags(tool_format_), tool_tag_tokens_);
    if (reasoning_format_ != model::ReasoningFormat::kNone)
      special_tags({model::kThinkOpen, model::kThinkClose}, think_tag_tokens_);
    for (int i = 0; i < cfg.attention_nodes; ++i) {
      auto n = std::make_unique<NodeHandle>();
      n->index = i;
      n->address = cfg.attention_endpoint(i).to_string();
      n->stub = ipb::AttentionNode::NewStub(grpc::CreateChannel(n->address, grpc::InsecureChannelCredentials()));
      nodes_.push_back(std::move(n));
    }
    for (int j = 0; j < cfg.expert_nodes; ++j)
      experts_.push_back({std::make_unique<api::HealthProbe>(cfg.expert_endpoint(j).to_string())});
    capacity_ = static_cast<int64_t>(cfg.attention_nodes) * cfg.max_running_sequences + cfg.max_queue;
    if (cfg.prefix_affinity && cfg.prefix_caching && cfg.attention_nodes > 1) {
      affinity_ = std::make_unique<PrefixAffinity>(cfg.kv_block_size, kAffinityPrefixes);
    }
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    int bound = 0;
    std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
    if (cfg.tls()) {
      TANDEM_ASSIGN_OR_RETURN(auto tls, cfg.server_tls());
      TANDEM_RETURN_IF_ERROR(api::check_server_tls(tls.cert_pem, tls.key_pem));
      grpc::SslServerCredentialsOptions options;
      options.pem_key_cert_pairs.push_back({tls.key_pem, tls.cert_pem});
      credentials = grpc::SslServerCredentials(options);
    }
    b.AddListeningPort(cfg.router.to_string(), credentials, &bound);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
    if (!server_ || bound == 0) return unavailable("router: cannot listen on " + cfg.router.to_string());
    server_->GetHealthCheckService()->SetServingStatus(false);  // until every node answers
    monitor_ = std::thread([this] { monitor(); });
    TANDEM_LOG_INFO("router serving on {}", cfg.router.to_string());
    if (cfg.http.port != 0) {
      // The gateway calls this server in-process: no socket, and no TLS to its own listener.
      TANDEM_ASSIGN_OR_RETURN(http_, HttpGateway::start(cfg, [this] { return metrics_text(); },
                                                        server_->InProcessChannel(grpc::ChannelArguments()), api_keys_,
                                                        gateway_token_));
    }
    return Status::ok();
  }

  ~RouterImpl() override {
    shutdown();
    wait();
  }

  void shutdown() override {
    if (stopping_.exchange(true)) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      cv_.notify_all();
    }
    if (server_) {
      // Drain: NOT_SERVING, new requests refused with UNAVAILABLE (a client
      // retries elsewhere), those in flight given router.drain_timeout_s to
      // finish; then the server stops, cancelling what is left.
      server_->GetHealthCheckService()->SetServingStatus(false);
      draining_ = true;
      TANDEM_LOG_INFO("router draining: {} requests in flight, up to {} s", in_flight_.load(), cfg_.drain_timeout_s);
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(cfg_.drain_timeout_s);
      while (in_flight_.load() > 0 && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    }
    // After the gRPC server: its shutdown ends the streams HTTP requests are
    // waiting on, so the gateway's workers can finish.
    if (http_) http_->stop();
  }

  void wait() override {
    if (server_) server_->Wait();
    if (monitor_.joinable()) monitor_.join();
  }

  grpc::Status ListModels(grpc::ServerContext* ctx, const pb::ListModelsRequest*, pb::ListModelsResponse* r) override {
    if (grpc::Status st = authorized(*ctx); !st.ok()) return st;
    auto* m = r->add_models();
    const auto& c = ck_.config;
    m->set_name(cfg_.served_name);
    m->set_architecture(std::string(model::architecture_name(c.arch)));
    m->set_vocab_size(static_cast<uint32_t>(c.vocab_size));
    m->set_max_context(static_cast<uint32_t>(c.max_position_embeddings));
    m->set_num_experts(static_cast<uint32_t>(c.moe.num_experts));
    m->set_experts_per_token(static_cast<uint32_t>(c.moe.top_k));
    return grpc::Status::OK;
  }

  grpc::Status Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req, pb::TokenizeResponse* r) override {
    if (grpc::Status st = authorized(*ctx); !st.ok()) return st;
    if (auto st = check_model(req->model()); !st.ok()) return st;
    std::vector<int32_t> ids;
    if (req->messages_size() > 0) {
      if (!req->text().empty()) return invalid("text", "set text or messages, not both");
      auto tools = chat_tools(req->tools(), pb::TOOL_CHOICE_AUTO, "", std::nullopt, tool_format_);
      if (!tools.is_ok()) return to_grpc(tools.status());
      if (auto st = chat_prompt(req->messages(), tools->template_tools, req->chat_template_kwargs(),
                                !req->has_add_generation_prompt() || req->add_generation_prompt(),
                                req->has_add_special_tokens() && req->add_special_tokens(), ids);
          !st.ok())
        return st;
    } else {
      if (req->text().empty()) return invalid("text", "set text or messages");
      auto encoded = ck_.tokenizer->encode(req->text(), !req->has_add_special_tokens() || req->add_special_tokens());
      if (!encoded.is_ok()) return invalid("text", encoded.status().message());
      ids = std::move(encoded).value();
    }
    for (int32_t id : ids) {
      r->add_token_ids(static_cast<uint32_t>(id));
      r->add_tokens(ck_.tokenizer->token_bytes(id));
    }
    r->set_max_context(static_cast<uint32_t>(ck_.config.max_position_embeddings));
    return grpc::Status::OK;
  }

  grpc::Status Detokenize(grpc::ServerContext* ctx, const pb::DetokenizeRequest* req, pb::DetokenizeResponse* r) override {
    if (grpc::Status st = authorized(*ctx); !st.ok()) return st;
    if (auto st = check_model(req->model()); !st.ok()) return st;
    std::vector<int32_t> ids;
    for (uint32_t id : req->token_ids()) {
      if (auto st = in_vocabulary("token_ids", id); !st.ok()) return st;
      ids.push_back(static_cast<int32_t>(id));
    }
    r->set_text(ck_.tokenizer->decode(ids, !req->has_skip_special_tokens() || req->skip_special_tokens()));
    return grpc::Status::OK;
  }

  grpc::Status Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::GenerateResponse>* w) override {
    return counted("Generate", *ctx, req->request_id(), [&] {
      if (grpc::Status st = authorized(*ctx); !st.ok()) return st;
      if (draining_) return draining_refusal();
      return generate(ctx, req, w);
    });
  }

  grpc::Status Chat(grpc::ServerContext* ctx, const pb::ChatRequest* req,
                    grpc::ServerWriter<pb::GenerateResponse>* w) override {
    return counted("Chat", *ctx, req->request_id(), [&] {
      if (grpc::Status st = authorized(*ctx); !st.ok()) return st;
      if (draining_) return draining_refusal();
      return chat(ctx, req, w);
    });
  }
  // The request's `authorization` metadata against router.api_keys.
  grpc::Status authorized(const grpc::ServerContext& ctx) const {
    // The HTTP gateway checked its client's key before calling in-process.
    if (!api_keys_->required() || from_gateway(ctx)) return grpc::Status::OK;
    const auto& metadata = ctx.client_metadata();
    const auto it = metadata.find("authorization");
    const std::string_view value = it == metadata.end() ? std::string_view{}
                                                        : std::string_view(it->second.data(), it->second.size());
    if (api_keys_->allows(value)) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(ApiKeys::kRefusal));
  }
  // A call of this process's HTTP gateway: it carries the token only this
  // process knows (recognised by what it carries, not by its transport).
  bool from_gateway(const grpc::ServerContext& ctx) const {
    const auto it = ctx.client_metadata().find(std::string(kGatewayToken));
    return it != ctx.client_metadata().end() && std::string_view(it->second.data(), it->second.size()) == gateway_token_;
  }

  Status reload() override {
    // The log first: a call the new keys let in is logged in the new file.
    Status st = Status::ok();
    if (access_log_) {
      if (Status r = access_log_->reopen(); !r.is_ok()) {
        TANDEM_LOG_ERROR("router: {}", r.message());
        st = r;
      }
    }
    if (auto keys = cfg_.accepted_api_keys(); keys.is_ok()) {
      api_keys_->replace(std::move(keys).value());
      TANDEM_LOG_INFO("router: API keys read again");
    } else {
      TANDEM_LOG_ERROR("router: API keys not reloaded, the ones in force stay: {}", keys.status().message());
      if (st.is_ok()) st = keys.status();
    }
    return st;
  }

  static grpc::Status draining_refusal() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the router is shutting down (draining); retry elsewhere");
  }

  std::string metrics_text() const { return metrics_.text(in_flight_.load()); }

 private:
  // A Generate or Chat call: counted by its status, and a line in the access
  // log with what its stream recorded (run() fills `current_access` on this
  // thread: the synchronous server runs a call on one thread from end to end).
  template <typename Call>
  grpc::Status counted(std::string_view method, const grpc::ServerContext& ctx, const std::string& request_id,
                       const Call& call) {
    AccessEntry entry;
    const auto start = std::chrono::steady_clock::now();
    current_access = &entry;
    const grpc::Status st = call();
    current_access = nullptr;
    metrics_.record_status(grpc_code_name(st.error_code()));
    if (access_log_) {
      entry.method = method;
      entry.peer = ctx.peer();
      // The HTTP API's calls are in-process: the client is the one it names.
      if (const auto fw = ctx.client_metadata().find(std::string(kForwardedFor));
          fw != ctx.client_metadata().end() && from_gateway(ctx))
        entry.peer = "http:" + std::string(fw->second.data(), fw->second.size());
      entry.request_id = request_id;
      entry.code = grpc_code_name(st.error_code());
      entry.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      access_log_->write(entry);
    }
    return st;
  }

  grpc::Status generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::GenerateResponse>* w) {
    if (auto st = check_model(req->model()); !st.ok()) return st;
    std::vector<int32_t> prompt;
    switch (req->input_case()) {
      case pb::GenerateRequest::kText: {
        if (req->text().empty()) return invalid("text", "must not be empty");
        auto ids = ck_.tokenizer->encode(req->text(), /*add_special_tokens=*/true);
        if (!ids.is_ok()) return invalid("text", ids.status().message());
        prompt = *ids;
        break;
      }
      case pb::GenerateRequest::kTokenIds:
        for (uint32_t id : req->token_ids().ids()) {
          if (auto st = in_vocabulary("token_ids", id); !st.ok()) return st;
          prompt.push_back(static_cast<int32_t>(id));
        }
        if (prompt.empty()) return invalid("token_ids", "must not be empty");
        break;
      default:
        return invalid("input", "set text or token_ids");
    }
    return run(ctx, req->request_id(), prompt, req->sampling(), req->priority(), w,
               req->input_case() == pb::GenerateRequest::kText ? &req->text() : nullptr);
  }

  grpc::Status chat(grpc::ServerContext* ctx, const pb::ChatRequest* req,
                    grpc::ServerWriter<pb::GenerateResponse>* w) {
    if (auto st = check_model(req->model()); !st.ok()) return st;
    auto tools = chat_tools(req->tools(), req->tool_choice(), req->tool_choice_function(),
                            req->has_parallel_tool_calls() ? std::optional<bool>(req->parallel_tool_calls()) : std::nullopt,
                            tool_format_);
    if (!tools.is_ok()) return to_grpc(tools.status());
    std::vector<int32_t> ids;
    std::string rendered;
    if (auto st = chat_prompt(req->messages(), tools->template_tools, req->chat_template_kwargs(),
                              !req->has_add_generation_prompt() || req->add_generation_prompt(),
                              /*add_special_tokens=*/false, ids, &rendered);
        !st.ok())
      return st;
    ChatOutput out;
    if (tools->parse) {
      out.tools.emplace(tool_format_, tools->forced, tools->max_calls, /*stream_calls=*/true);
      out.tool_regex = tools->forced ? &tools->regex : nullptr;
      out.named = tools->named;
    }
    // A thought the prompt opened (DeepSeek-R1's "<think>\n") is the output's
    // first part, unless a grammar holds the output from its first token (a
    // forced call, structured output): that text is the answer.
    const bool grammar = tools->forced || !guide_request(req->sampling()).empty();
    if (reasoning_format_ != model::ReasoningFormat::kNone)
      out.reasoning.emplace(reasoning_format_, !grammar && model::prompt_opens_thought(rendered));
    return run(ctx, req->request_id(), ids, req->sampling(), req->priority(), w, nullptr, &out);
  }

  grpc::Status in_vocabulary(const std::string& field, uint32_t id) const {
    if (id < static_cast<uint32_t>(ck_.config.vocab_size)) return grpc::Status::OK;
    return invalid(field, "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(ck_.config.vocab_size) + ")");
  }

  grpc::Status check_model(const std::string& model) const {
    if (model.empty() || model == cfg_.served_name) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "model: '" + model + "' is not served here (serving '" + cfg_.served_name + "')");
  }

  // A conversation through the model's chat template, as token ids (and the
  // rendered text into `text` when given). `tools`: the template's tools
  // (null: none); `kwargs`: chat_template_kwargs' JSON text.
  grpc::Status chat_prompt(const google::protobuf::RepeatedPtrField<pb::ChatMessage>& messages,
                           const nlohmann::ordered_json& tools, const std::string& kwargs, bool add_generation_prompt,
                           bool add_special_tokens, std::vector<int32_t>& ids, std::string* text_out = nullptr) const {
    if (!chat_template_) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "Chat: " + chat_template_error_);
    if (!tools.is_null() && !tool_template_error_.empty())
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "tools: " + tool_template_error_);
    if (messages.empty()) return invalid("messages", "must hold at least one message");
    auto msgs = template_messages(messages);
    if (!msgs.is_ok()) return to_grpc(msgs.status());
    auto extra = template_kwargs(kwargs);
    if (!extra.is_ok()) return to_grpc(extra.status());
    nlohmann::ordered_json vars = std::move(extra).value();
    // The request's own variables over chat_template_kwargs (which may not name them).
    vars["messages"] = std::move(msgs).value();
    vars["add_generation_prompt"] = add_generation_prompt;
    vars["bos_token"] = ck_.tokenizer_config.bos_token;
    vars["eos_token"] = ck_.tokenizer_config.eos_token;
    if (!tools.is_null()) vars["tools"] = tools;
    auto text = (tools.is_null() || !tool_template_ ? chat_template_ : tool_template_)->render(vars);
    if (!text.is_ok()) return invalid("messages", text.status().message());
    // The template already holds any BOS: no post-processor specials on top
    // (as transformers does), unless asked for.
    auto encoded = ck_.tokenizer->encode(*text, add_special_tokens);
    if (!encoded.is_ok()) return invalid("messages", encoded.status().message());
    if (encoded->empty()) return invalid("messages", "the chat template rendered nothing");
    if (text_out) *text_out = std::move(text).value();
    ids = std::move(encoded).value();
    return grpc::Status::OK;
  }

  // Structured output: the grammar checked and compiled here, so a bad one is
  // INVALID_ARGUMENT naming the field before any node is involved; the node
  // gets it as one regular expression (or the JSON-object flag).
  // `tool_regex`: a forced tool call's grammar (tool_choice), which takes the
  // place of the sampling's. `kind`: what the metric counts ("" for none).
  static model::GuideRequest guide_request(const pb::SamplingParams& sp) {
    return {sp.guided_regex(), sp.guided_json(), {sp.guided_choice().begin(), sp.guided_choice().end()},
            sp.guided_json_object()};
  }
  static grpc::Status guide(const pb::SamplingParams& sp, const std::string* tool_regex, ipb::RunRequest& run,
                            std::string& kind) {
    const model::GuideRequest asked = guide_request(sp);
    auto spec = model::make_guide_spec(asked, "sampling.guided_");
    if (!spec.is_ok()) return to_grpc(spec.status());
    if (tool_regex) {
      if (!spec->empty()) return invalid("tool_choice", "a forced tool call is a grammar already: not with sampling.guided_*");
      spec = model::make_guide_spec(model::GuideRequest{*tool_regex, {}, {}, false},
                                    model::GuideFieldNames{"tool_choice", "", "", ""});
      if (!spec.is_ok()) return to_grpc(spec.status());
      kind = "tool_call";
    } else if (!asked.regex.empty()) {
      kind = "regex";
    } else if (!asked.json_schema.empty()) {
      kind = "json_schema";
    } else if (!asked.choice.empty()) {
      kind = "choice";
    } else if (asked.json_object) {
      kind = "json_object";
    }
    if (spec->empty()) return grpc::Status::OK;
    // The grammar decides where the text may end; an echoed prompt would
    // change how its first token reads (a SentencePiece leading space).
    if (sp.min_tokens() > 0) return invalid("sampling.min_tokens", "not with guided output");
    if (sp.echo()) return invalid("sampling.echo", "not with guided output");
    if (spec->kind == model::GuideSpec::Kind::kJsonObject) {
      run.set_guide_json_object(true);
    } else {
      run.set_guide_regex(spec->regex);
    }
    return grpc::Status::OK;
  }

  // How a chat's output is taken apart: the model's reasoning, then tool
  // calls in the answer (maybe forced by a grammar).
  struct ChatOutput {
    std::optional<model::ReasoningStream> reasoning;
    std::optional<model::ToolCallStream> tools;
    const std::string* tool_regex = nullptr;  // a forced call's grammar; null: not forced
    bool named = false;
  };

  // `prompt_text`: the prompt as the client wrote it (echoed as sent); null:
  // echo decodes the prompt's tokens.
  grpc::Status run(grpc::ServerContext* ctx, const std::string& request_id, const std::vector<int32_t>& prompt,
                   const pb::SamplingParams& sp, int32_t priority, grpc::ServerWriter<pb::GenerateResponse>* w,
                   const std::string* prompt_text = nullptr, ChatOutput* chat = nullptr) {
    model::ToolCallStream* tool_calls = chat && chat->tools ? &*chat->tools : nullptr;
    std::vector<std::string> call_ids;  // by call index: the id its first piece carried
    model::ReasoningStream* reasoning = chat && chat->reasoning ? &*chat->reasoning : nullptr;
    const std::string* tool_regex = chat ? chat->tool_regex : nullptr;
    const auto& c = ck_.config;
    ipb::RunRequest run;
    for (int32_t t : prompt) run.add_prompt(t);
    if (sp.has_temperature() && !(sp.temperature() >= 0 && sp.temperature() <= 100))
      return invalid("sampling.temperature", "must be in [0, 100]");
    if (sp.has_top_p() && !(sp.top_p() > 0 && sp.top_p() <= 1)) return invalid("sampling.top_p", "must be in (0, 1]");
    if (sp.has_top_k() && sp.top_k() < 0) return invalid("sampling.top_k", "must be >= 0");
    const bool score_only = sp.has_max_tokens() && sp.max_tokens() == 0;
    if (score_only && !sp.has_prompt_logprobs() && !sp.echo())
      return invalid("sampling.max_tokens", "must be positive (0 only with prompt_logprobs or echo)");
    if (sp.has_logprobs() && sp.logprobs() > static_cast<uint32_t>(engine::kMaxTopLogprobs))
      return invalid("sampling.logprobs", "must be at most " + std::to_string(engine::kMaxTopLogprobs));
    if (sp.has_prompt_logprobs() && sp.prompt_logprobs() > static_cast<uint32_t>(engine::kMaxTopLogprobs))
      return invalid("sampling.prompt_logprobs", "must be at most " + std::to_string(engine::kMaxTopLogprobs));
    if (sp.has_presence_penalty() && !(sp.presence_penalty() >= -2 && sp.presence_penalty() <= 2))
      return invalid("sampling.presence_penalty", "must be in [-2, 2]");
    if (sp.has_frequency_penalty() && !(sp.frequency_penalty() >= -2 && sp.frequency_penalty() <= 2))
      return invalid("sampling.frequency_penalty", "must be in [-2, 2]");
    if (sp.has_repetition_penalty() && !(sp.repetition_penalty() >= 0.01f && sp.repetition_penalty() <= 100))
      return invalid("sampling.repetition_penalty", "must be in [0.01, 100]");
    if (sp.has_min_p() && !(sp.min_p() >= 0 && sp.min_p() <= 1)) return invalid("sampling.min_p", "must be in [0, 1]");
    for (uint32_t id : sp.stop_token_ids())
      if (auto st = in_vocabulary("sampling.stop_token_ids", id); !st.ok()) return st;
    for (const auto& [token, bias] : sp.logit_bias()) {
      if (auto st = in_vocabulary("sampling.logit_bias", token); !st.ok()) return st;
      if (!(bias >= -100 && bias <= 100))
        return invalid("sampling.logit_bias", "the bias of token " + std::to_string(token) + " must be in [-100, 100]");
    }
    const int64_t room = c.max_position_embeddings - static_cast<int64_t>(prompt.size());
    if (room < 0 || (room == 0 && !score_only))
      return invalid("prompt", std::to_string(prompt.size()) + " tokens leave no room in the model's context of " +
                                   std::to_string(c.max_position_embeddings));
    const int64_t wanted = sp.has_max_tokens() ? sp.max_tokens() : kDefaultMaxTokens;
    if (sp.min_tokens() > wanted)
      return invalid("sampling.min_tokens",
                     std::to_string(sp.min_tokens()) + " is more than max_tokens (" + std::to_string(wanted) + ")");
    if (sp.min_tokens() > room)
      return invalid("sampling.min_tokens", std::to_string(sp.min_tokens()) + " tokens do not fit: the prompt (" +
                                                std::to_string(prompt.size()) + " tokens) leaves room for " +
                                                std::to_string(room) + " in the model's context");
    const bool skip_special = !sp.has_skip_special_tokens() || sp.skip_special_tokens();
    std::string echo;
    if (sp.echo()) echo = prompt_text ? *prompt_text : ck_.tokenizer->decode(prompt, skip_special);
    if (score_only && !sp.has_prompt_logprobs()) {
      // Echo alone, nothing to generate or score: the answer needs no node.
      pb::GenerateResponse out;
      out.set_request_id(request_id);
      out.set_text(echo);
      out.set_finish_reason(pb::FINISH_REASON_LENGTH);
      out.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(prompt.size()));
      w->Write(out);
      return grpc::Status::OK;
    }
    run.set_max_tokens(static_cast<uint32_t>(std::min<int64_t>(wanted, room)));
    run.set_temperature(sp.has_temperature() ? sp.temperature() : 1.0f);
    run.set_top_p(sp.has_top_p() ? sp.top_p() : 1.0f);
    run.set_top_k(sp.has_top_k() ? sp.top_k() : 0);
    run.set_seed(sp.has_seed() ? sp.seed() : std::random_device{}());
    for (uint32_t id : sp.stop_token_ids()) run.add_stop_token_ids(static_cast<int32_t>(id));
    if (sp.has_logprobs()) run.set_logprobs(static_cast<int32_t>(sp.logprobs()));
    if (sp.has_prompt_logprobs()) run.set_prompt_logprobs(static_cast<int32_t>(sp.prompt_logprobs()));
    if (sp.has_presence_penalty()) run.set_presence_penalty(sp.presence_penalty());
    if (sp.has_frequency_penalty()) run.set_frequency_penalty(sp.frequency_penalty());
    if (sp.has_repetition_penalty()) run.set_repetition_penalty(sp.repetition_penalty());
    for (const auto& [token, bias] : sp.logit_bias()) (*run.mutable_logit_bias())[static_cast<int32_t>(token)] = bias;
    if (sp.has_min_p()) run.set_min_p(sp.min_p());
    if (sp.min_tokens() > 0) run.set_min_tokens(static_cast<int32_t>(sp.min_tokens()));
    run.set_priority(priority);
    std::string guided_kind;
    if (auto st = guide(sp, tool_regex, run, guided_kind); !st.ok()) return st;
    if (!guided_kind.empty()) metrics_.record_guided(guided_kind);
    if (!sp.ignore_eos())
      for (int32_t id : ck_.stop_token_ids) run.add_stop_token_ids(id);

    // Admission: a bounded number of requests in the system.
    const auto admitted_at = std::chrono::steady_clock::now();
    if (in_flight_.fetch_add(1) >= capacity_) {
      in_flight_.fetch_sub(1);
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "queue full: " + std::to_string(capacity_) + " requests in flight");
    }
    struct Release {
      std::atomic<int64_t>& n;
      ~Release() { n.fetch_sub(1); }
    } release{in_flight_};

    if (!experts_up_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "an expert node is down; retry later");
    const auto prompt_tokens = static_cast<int64_t>(prompt.size());
    NodeHandle* node = pick_node(prompt);  // counted in flight there already
    if (!node) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no healthy attention node");
    struct NodeRelease {
      NodeHandle* n;
      int64_t tokens;
      ~NodeRelease() {
        n->in_flight.fetch_sub(1);
        n->prompt_tokens_in_flight.fetch_sub(tokens);
      }
    } node_release{node, prompt_tokens};

    // The downstream call inherits the client's deadline and cancellation.
    auto down = grpc::ClientContext::FromServerContext(*ctx);
    down->set_deadline(std::min(ctx->deadline(), std::chrono::system_clock::now() +
                                                     std::chrono::seconds(cfg_.request_timeout_s)));
    auto reader = node->stub->Run(down.get(), run);
    // The stream's metrics, recorded however it ends.
    struct StreamRecord {
      RouterMetrics& metrics;
      std::chrono::steady_clock::time_point start;
      RouterMetrics::Finished f;
      ~StreamRecord() {
        f.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        metrics.record_stream(f);
        if (AccessEntry* a = current_access) {
          a->prompt_tokens = f.prompt_tokens;
          a->completion_tokens = f.completion_tokens;
          a->finish_reason = f.finish_reason;
          a->first_token_s = f.first_token_s;
        }
      }
    } record{metrics_, admitted_at, {}};
    record.f.prompt_tokens = static_cast<uint32_t>(prompt.size());
    model::StreamingDetokenizer detok(*ck_.tokenizer, skip_special, /*continues_text=*/!echo.empty());
    StopStringFilter stops({sp.stop().begin(), sp.stop().end()}, sp.include_stop_str_in_output());
    uint32_t completion = 0;
    bool finished = false, stopped_by_token = false, stopped_by_string = false, first_message = true;
    size_t prompt_scored = 1;  // the prompt tokens whose log-probabilities came (the first has none)
    ipb::RunEvent ev;
    while (!stopped_by_string && reader->Read(&ev)) {
      pb::GenerateResponse out;
      out.set_request_id(request_id);
      std::string text;
      auto broken = [&](const std::string& what) {
        down->TryCancel();
        return grpc::Status(grpc::StatusCode::INTERNAL, "attention node " + node->address + " answered " + what);
      };
      if (sp.has_logprobs() && ev.logprobs_size() != ev.tokens_size())
        return broken(std::to_string(ev.logprobs_size()) + " log-probabilities for " +
                      std::to_string(ev.tokens_size()) + " tokens");
      if (sp.has_prompt_logprobs()) {
        if (first_message) {  // nothing precedes the first prompt token: no log-probability
          auto* first = out.add_prompt_logprobs();
          first->set_token_id(static_cast<uint32_t>(prompt[0]));
          first->set_token(ck_.tokenizer->token_bytes(prompt[0]));
        }
        if (ev.prompt_logprobs_size() > 0 &&
            (ev.first_prompt_index() != prompt_scored ||
             prompt_scored + static_cast<size_t>(ev.prompt_logprobs_size()) > prompt.size()))
          return broken("prompt log-probabilities from token " + std::to_string(ev.first_prompt_index()) + " (" +
                        std::to_string(ev.prompt_logprobs_size()) + " of them) where token " +
                        std::to_string(prompt_scored) + " of " + std::to_string(prompt.size()) + " was next");
        for (const auto& lp : ev.prompt_logprobs())
          add_logprobs(prompt[prompt_scored++], lp, out.add_prompt_logprobs());
        if (ev.tokens_size() > 0 || ev.finished()) {
          if (prompt_scored != prompt.size())
            return broken("a token before the log-probabilities of prompt tokens " + std::to_string(prompt_scored) +
                          " .. " + std::to_string(prompt.size() - 1));
        }
      }
      for (int j = 0; j < ev.tokens_size(); ++j) {
        const int32_t t = ev.tokens(j);
        if (sp.has_logprobs()) add_logprobs(t, ev.logprobs(j), out.add_logprobs());
        ++completion;
        record.f.completion_tokens = completion;
        if (completion == 1)
          record.f.first_token_s =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - admitted_at).count();
        out.add_token_ids(static_cast<uint32_t>(t));
        bool hit = false;
        std::string piece = detok.push(t);
        if (skip_special) {
          if (tool_calls)
            for (const auto& [id, tag] : tool_tag_tokens_)
              if (t == id) piece += tag;
          if (reasoning)
            for (const auto& [id, tag] : think_tag_tokens_)
              if (t == id) piece += tag;
        }
        // vLLM's min_tokens: a stop string ends the answer only in text after
        // the first min_tokens tokens, as a stop token does.
        text += completion <= sp.min_tokens() ? stops.pass(piece) : stops.push(piece, hit);
        if (hit) {
          stopped_by_string = true;
          break;
        }
      }
      if (ev.finished()) {
        finished = true;
        stopped_by_token = ev.stopped();
        if (!stopped_by_string) {
          bool hit = false;
          text += completion <= sp.min_tokens() ? stops.pass(detok.flush()) : stops.push(detok.flush(), hit);
          stopped_by_string = hit;
          if (!hit) text += stops.flush();
        }
      }
      if (reasoning) {
        // The thought goes apart; what follows it is the answer.
        model::ReasoningStream::Split split = reasoning->push(text);
        if (finished || stopped_by_string) {
          model::ReasoningStream::Split rest = reasoning->finish();
          split.reasoning += rest.reasoning;
          split.content += rest.content;
        }
        out.set_reasoning_text(std::move(split.reasoning));
        text = std::move(split.content);
      }
      bool called = false, cut_call = false;
      if (tool_calls) {
        // Content streams, and calls piece by piece as they are written; the
        // last message has every call whole.
        text = tool_calls->push(text);
        std::optional<model::ToolCallParse> parsed;
        if (finished || stopped_by_string) {
          parsed = tool_calls->finish();
          text += parsed->content;
        }
        for (model::ToolCallDelta& d : tool_calls->take_deltas()) {
          auto* piece = out.add_tool_call_deltas();
          piece->set_index(static_cast<uint32_t>(d.index));
          if (!d.name.empty()) {
            call_ids.push_back(new_tool_call_id(tool_format_));
            piece->set_id(call_ids.back());
            piece->set_name(std::move(d.name));
          }
          piece->set_arguments(std::move(d.arguments));
        }
        if (parsed) {
          for (size_t i = 0; i < parsed->calls.size(); ++i) {
            auto* call = out.add_tool_calls();
            call->set_id(i < call_ids.size() ? call_ids[i] : new_tool_call_id(tool_format_));
            call->set_name(std::move(parsed->calls[i].name));
            call->set_arguments(std::move(parsed->calls[i].arguments));
          }
          called = !parsed->calls.empty();
          cut_call = parsed->cut;
          if (called) metrics_.record_tool_calls(parsed->calls.size());
        }
      }
      out.set_text(first_message ? echo + text : text);
      first_message = false;
      if (finished || stopped_by_string) {
        // OpenAI: a call forced by name finishes as "stop".
        // A call cut by max_tokens or a stop string finishes as the cut says.
        const bool tool_finish = called && !chat->named && !cut_call;
        out.set_finish_reason(tool_finish                             ? pb::FINISH_REASON_TOOL_CALLS
                              : stopped_by_token || stopped_by_string ? pb::FINISH_REASON_STOP
                                                                      : pb::FINISH_REASON_LENGTH);
        record.f.finish_reason = tool_finish                                      ? "tool_calls"
                                 : out.finish_reason() == pb::FINISH_REASON_STOP ? "stop"
                                                                                : "length";
        out.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(prompt.size()));
        out.mutable_usage()->set_completion_tokens(completion);
      }
      if (!w->Write(out)) {
        down->TryCancel();
        return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
      }
      if (finished) break;
    }
    if (stopped_by_string) {
      down->TryCancel();  // the attention node frees the sequence now
      reader->Finish();
      return grpc::Status::OK;
    }
    grpc::Status st = reader->Finish();
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
    if (!st.ok()) {
      if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::CANCELLED ||
          st.error_code() == grpc::StatusCode::UNKNOWN || st.error_code() == grpc::StatusCode::INTERNAL) {
        if (st.error_code() != grpc::StatusCode::UNAVAILABLE || st.error_message().find("expert node") == std::string::npos) {
          node->suspect = true;  // the attention node itself failed, or one request on it did
          repoll_ = true;        // let the monitor find out which, now
          cv_.notify_all();
        }
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "attention node " + node->address + ": " + st.error_message());
      }
      return st;
    }
    if (!finished) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "attention node " + node->address + " ended the stream early");
    return grpc::Status::OK;
  }

  // A node the monitor saw answering, avoiding nodes a request just failed
  // on; one of those only when no other is left (a single failed request does
  // not turn every concurrent request away: if the node is really gone, the
  // request fails on it, naming it). Without prefix affinity: the node with
  // the fewest requests in flight. With it: the node where the request adds
  // the least work, counted in KV blocks as NVIDIA Dynamo's KV-aware router
  // does — the prompt blocks it would have to compute there (fewer where its
  // prefix went before) plus the prompt blocks of the requests in flight there.
  // A long cached prefix keeps a conversation on its node; a short one loses
  // to a less loaded node.
  // The choice and its counting in flight are one step, so that a burst of
  // requests sees each other's choices instead of all taking the same node.
  NodeHandle* pick_node(const std::vector<int32_t>& prompt) {
    std::vector<uint64_t> prefixes;
    std::vector<int64_t> matched;
    if (affinity_) {
      prefixes = affinity_->prefix_hashes(prompt);
      matched = affinity_->matched_tokens(prefixes, static_cast<int>(nodes_.size()));
    }
    std::lock_guard<std::mutex> lock(pick_mu_);
    for (bool allow_suspect : {false, true}) {
      NodeHandle* best = nullptr;
      int64_t best_cost = 0;
      for (auto& n : nodes_) {
        if (!usable(*n, allow_suspect)) continue;
        int64_t cost = n->in_flight;
        if (affinity_) {
          const int64_t bs = affinity_->block_size();
          const int64_t to_compute = static_cast<int64_t>(prompt.size()) - matched[static_cast<size_t>(n->index)];
          cost = (to_compute + bs - 1) / bs + n->prompt_tokens_in_flight / bs;
        }
        if (!best || cost < best_cost || (cost == best_cost && n->in_flight < best->in_flight)) {
          best = n.get();
          best_cost = cost;
        }
      }
      if (!best) continue;
      best->in_flight.fetch_add(1);
      best->prompt_tokens_in_flight.fetch_add(static_cast<int64_t>(prompt.size()));
      if (affinity_) affinity_->record(prefixes, best->index);
      return best;
    }
    return nullptr;
  }
  // A token's log-probabilities as the public API gives them, with token bytes.
  void add_logprobs(int32_t token, const ipb::TokenLogprob& in, pb::TokenLogprob* lp) const {
    lp->set_token_id(static_cast<uint32_t>(token));
    lp->set_logprob(in.logprob());
    lp->set_token(ck_.tokenizer->token_bytes(token));
    for (int k = 0; k < in.top_ids_size() && k < in.top_logprobs_size(); ++k) {
      auto* alt = lp->add_top();
      alt->set_token_id(static_cast<uint32_t>(in.top_ids(k)));
      alt->set_logprob(in.top_logprobs(k));
      alt->set_token(ck_.tokenizer->token_bytes(in.top_ids(k)));
    }
  }

  static bool usable(const NodeHandle& n, bool allow_suspect) { return n.healthy && (allow_suspect || !n.suspect); }

  // Polls every attention node; the router serves only while all of them answer.
  void monitor() {
    while (!stopping_) {
      bool all = true;
      for (auto& n : nodes_) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
        ipb::LoadRequest rq;
        ipb::LoadReply rp;
        const grpc::Status polled = n->stub->Load(&ctx, rq, &rp);
        const bool ok =
            still_up(polled.ok(), polled.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED, n->healthy, n->slow_polls);
        if (ok != n->healthy.load() && !stopping_) {
          if (ok && affinity_) affinity_->forget_node(n->index);  // restarted: its cache is empty
          if (ok) TANDEM_LOG_INFO("attention node {} is up", n->address);
          else TANDEM_LOG_WARN("attention node {} is down", n->address);
        }
        n->healthy = ok;
        if (polled.ok()) {
          n->suspect = false;
          metrics_.set_node(n->address, {.up = true,
                                         .running = rp.running(),
                                         .waiting = rp.waiting(),
                                         .free_blocks = rp.free_blocks(),
                                         .total_blocks = rp.total_blocks(),
                                         .cached_blocks = rp.cached_blocks(),
                                         .prefix_lookup_tokens = rp.prefix_lookup_tokens(),
                                         .prefix_hit_tokens = rp.prefix_hit_tokens(),
                                         .preemptions = rp.preemptions()});
        } else if (!ok) {
          metrics_.set_node_down(n->address);  // a merely slow poll keeps the last numbers
        }
        all = all && ok;
      }
      // Every expert node holds experts no other node has: all must be up.
      // A slow answer is tolerated as for attention nodes (a busy machine);
      // a refused one is a node down at once.
      bool experts_ok = true;
      for (ExpertHealth& e : experts_) {
        const Status h = e.probe->check(std::chrono::milliseconds(500));
        const bool ok = still_up(h.is_ok(), h.code() == StatusCode::kDeadlineExceeded, e.up, e.slow_polls);
        if (ok != e.up && !stopping_) {
          if (ok) TANDEM_LOG_INFO("expert node {} is up", e.probe->address());
          else TANDEM_LOG_WARN("expert node {} is down: {}", e.probe->address(), h.message());
        }
        e.up = ok;
        experts_ok = experts_ok && ok;
      }
      all = all && experts_ok;
      experts_up_ = experts_ok;
      if (!stopping_) server_->GetHealthCheckService()->SetServingStatus(all);
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait_for(l, std::chrono::milliseconds(200), [this] { return stopping_.load() || repoll_.exchange(false); });
    }
  }

  std::shared_ptr<ApiKeys> api_keys_;  // shared with the HTTP gateway
  std::string gateway_token_;          // see from_gateway()
  std::unique_ptr<AccessLog> access_log_;  // router.access_log; null: off
  api::DeploymentConfig cfg_;
  model::Checkpoint ck_;
  std::unique_ptr<model::JinjaTemplate> chat_template_;
  std::unique_ptr<model::JinjaTemplate> tool_template_;  // the model's "tool_use" template, if it has one
  std::string tool_template_error_;                      // why that template is unusable
  std::string chat_template_error_;
  model::ToolCallFormat tool_format_ = model::ToolCallFormat::kNone;
  model::ReasoningFormat reasoning_format_ = model::ReasoningFormat::kNone;
  std::vector<std::pair<int32_t, std::string>> tool_tag_tokens_;  // the format's tags held as special tokens
  std::vector<std::pair<int32_t, std::string>> think_tag_tokens_;  // <think>, </think> held as special tokens
  std::vector<std::unique_ptr<NodeHandle>> nodes_;
  struct ExpertHealth {
    std::unique_ptr<api::HealthProbe> probe;
    bool up = false;
    int slow_polls = 0;
  };
  std::vector<ExpertHealth> experts_;  // monitor thread only
  std::atomic<bool> experts_up_{true};
  int64_t capacity_ = 0;
  std::atomic<int64_t> in_flight_{0};
  RouterMetrics metrics_;
  std::unique_ptr<PrefixAffinity> affinity_;  // null: fewest requests in flight only
  std::mutex pick_mu_;                         // one pick_node at a time
  std::unique_ptr<grpc::Server> server_;
  std::thread monitor_;
  std::unique_ptr<HttpGateway> http_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};  // shutdown() began: refuse new requests
  std::atomic<bool> repoll_{false};  // a request failed on a node: poll before the period is up
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace

Result<std::unique_ptr<Router>> Router::start(const api::DeploymentConfig& config) {
  auto r = std::make_unique<RouterImpl>();
  TANDEM_RETURN_IF_ERROR(r->init(config).with_context("router"));
  return std::unique_ptr<Router>(std::move(r));
}

}  // namespace tandem::router
