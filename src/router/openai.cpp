#include "openai.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <utility>

#include "tandem/model/guided.h"     // json_depth
#include "tandem/model/tokenizer.h"  // is_valid_utf8

namespace tandem::router::openai {

namespace pb = tandem::v1;
using json = nlohmann::ordered_json;

namespace {

// Thrown inside the parsers only and turned into an HttpError at their edge.
struct Refusal {
  std::string param, message;
};

[[noreturn]] void refuse(const std::string& param, const std::string& message) { throw Refusal{param, message}; }

const json* find(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& body, const char* key, double lo, double hi) {
  const json& v = body.at(key);
  if (!v.is_number()) refuse(key, std::string(key) + ": must be a number");
  const double d = v.get<double>();
  if (!(d >= lo && d <= hi))
    refuse(key, std::string(key) + ": " + v.dump() + " is outside [" + json(lo).dump() + ", " + json(hi).dump() + "]");
  return d;
}

int64_t integer(const json& body, const char* key, int64_t lo, int64_t hi) {
  const json& v = body.at(key);
  if (!v.is_number_integer()) refuse(key, std::string(key) + ": must be an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    refuse(key, std::string(key) + ": " + v.dump() + " is larger than " + std::to_string(hi));
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi)
    refuse(key, std::string(key) + ": " + v.dump() + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return i;
}

bool boolean(const json& body, const char* key) {
  const json& v = body.at(key);
  if (!v.is_boolean()) refuse(key, std::string(key) + ": must be true or false");
  return v.get<bool>();
}

json parse_object(std::string_view text) {
  json body = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) refuse("", "the request body is not valid JSON");
  if (!body.is_object()) refuse("", "the request body must be a JSON object");
  // Error messages and schemas dump() values, which recurses: deep bodies are refused first.
  if (model::json_depth(body) > model::kMaxJsonInputDepth)
    refuse("", "the request body nests deeper than " + std::to_string(model::kMaxJsonInputDepth));
  return body;
}

// One token id (a non-negative integer below 2^32); refused naming `param`.
uint32_t token_id(const json& v, const std::string& param) {
  if (!v.is_number_unsigned() || v.get<uint64_t>() > std::numeric_limits<uint32_t>::max())
    refuse(param, param + ": token ids must be non-negative integers, got " + v.dump());
  return static_cast<uint32_t>(v.get<uint64_t>());
}

// A JSON array of token ids into `out`; refused naming `param`.
void token_id_array(const json& v, const std::string& param, google::protobuf::RepeatedField<uint32_t>& out) {
  if (!v.is_array()) refuse(param, param + ": must be an array of token ids");
  for (const json& id : v) out.Add(token_id(id, param));
}

// "model": the served name asked for; "" when absent (the only one).
std::string model_field(const json& body) {
  const json* m = find(body, "model");
  if (!m) return {};
  if (!m->is_string()) refuse("model", "model: must be a string");
  return m->get<std::string>();
}

// Fields that would change the answer in ways this server does not implement:
// refused when set to anything but their neutral value.
void refuse_unsupported(const json& body) {
  if (const json* b = find(body, "best_of"); b && !(b->is_number_integer() && b->get<int64_t>() == 1))
    refuse("best_of", "best_of: only 1 is supported");
  if (const json* s = find(body, "suffix"); s && !(s->is_string() && s->get<std::string>().empty()))
    refuse("suffix", "suffix: not supported");
  // vLLM's per-choice prompt_logprobs shape is not served: echo with logprobs gives the same numbers.
  if (find(body, "prompt_logprobs")) refuse("prompt_logprobs", "prompt_logprobs: use echo: true with logprobs: N");
  // OpenAI's deprecated function-calling fields; `tools` replaced them.
  if (const json* t = find(body, "functions"); t && !(t->is_array() && t->empty()))
    refuse("functions", "functions: deprecated by OpenAI; use tools");
  if (find(body, "function_call")) refuse("function_call", "function_call: deprecated by OpenAI; use tool_choice");
  if (find(body, "guided_grammar")) refuse("guided_grammar", "guided_grammar: grammars are not supported; use guided_regex or guided_json");
}

// Structured output: OpenAI's response_format (json_object, json_schema) and
// vLLM's guided_json / guided_regex / guided_choice; at most one.
void structured_output(const json& body, pb::SamplingParams& sp) {
  int kinds = 0;
  if (const json* f = find(body, "response_format")) {
    const json* type = f->is_object() ? find(*f, "type") : nullptr;
    if (!type || !type->is_string())
      refuse("response_format", "response_format: must be an object with a type (text, json_object or json_schema)");
    const std::string t = type->get<std::string>();
    if (t == "json_object") {
      sp.set_guided_json_object(true);
      ++kinds;
    } else if (t == "json_schema") {
      const json* js = find(*f, "json_schema");
      const json* schema = js && js->is_object() ? find(*js, "schema") : nullptr;
      if (!schema || !(schema->is_object() || schema->is_boolean()))
        refuse("response_format", "response_format: json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}");
      sp.set_guided_json(schema->dump());
      ++kinds;
    } else if (t != "text") {
      refuse("response_format", "response_format: type must be text, json_object or json_schema, got '" + t + "'");
    }
  }
  if (const json* g = find(body, "guided_json")) {
    // vLLM takes the schema as an object or as its JSON text.
    if (g->is_string()) {
      if (g->get<std::string>().empty()) refuse("guided_json", "guided_json: must not be empty");
      sp.set_guided_json(g->get<std::string>());
    } else if (g->is_object() || g->is_boolean()) {
      sp.set_guided_json(g->dump());
    } else {
      refuse("guided_json", "guided_json: must be a JSON schema (an object, or its text)");
    }
    ++kinds;
  }
  if (const json* g = find(body, "guided_regex")) {
    if (!g->is_string() || g->get<std::string>().empty())
      refuse("guided_regex", "guided_regex: must be a non-empty string");
    sp.set_guided_regex(g->get<std::string>());
    ++kinds;
  }
  if (const json* g = find(body, "guided_choice")) {
    if (!g->is_array() || g->empty()) refuse("guided_choice", "guided_choice: must be a non-empty array of strings");
    for (const json& c : *g) {
      if (!c.is_string()) refuse("guided_choice", "guided_choice: must be a non-empty array of strings");
      sp.add_guided_choice(c.get<std::string>());
    }
    ++kinds;
  }
  if (kinds > 1)
    refuse("response_format", "response_format, guided_json, guided_regex and guided_choice: at most one may be given");
}

// model, sampling and streaming fields shared by both endpoints.
template <typename Call>
void common_fields(const json& body, Call& call, pb::SamplingParams& sp) {
  refuse_unsupported(body);
  structured_output(body, sp);
  call.request.set_model(model_field(body));
  if (find(body, "temperature")) sp.set_temperature(static_cast<float>(number(body, "temperature", 0.0, 100.0)));
  if (find(body, "top_p")) {
    const double p = number(body, "top_p", 0.0, 1.0);
    if (p == 0.0) refuse("top_p", "top_p: must be greater than 0");
    sp.set_top_p(static_cast<float>(p));
  }
  if (find(body, "top_k")) {
    // -1 is vLLM's spelling of "off".
    const int64_t k = integer(body, "top_k", -1, std::numeric_limits<int32_t>::max());
    sp.set_top_k(static_cast<int32_t>(k < 0 ? 0 : k));
  }
  if (find(body, "seed")) {
    const json& s = body.at("seed");
    if (!s.is_number_integer()) refuse("seed", "seed: must be an integer");
    sp.set_seed(s.is_number_unsigned() ? s.get<uint64_t>() : static_cast<uint64_t>(s.get<int64_t>()));
  }
  // Penalties and bias (engine/penalties.h): OpenAI's ranges; repetition_penalty is vLLM's.
  if (find(body, "presence_penalty")) sp.set_presence_penalty(static_cast<float>(number(body, "presence_penalty", -2.0, 2.0)));
  if (find(body, "frequency_penalty"))
    sp.set_frequency_penalty(static_cast<float>(number(body, "frequency_penalty", -2.0, 2.0)));
  if (find(body, "repetition_penalty"))
    sp.set_repetition_penalty(static_cast<float>(number(body, "repetition_penalty", 0.01, 100.0)));
  if (const json* b = find(body, "logit_bias")) {
    // {"token id": bias}: ids as decimal strings, as OpenAI's tokenizer-independent map has them.
    if (!b->is_object()) refuse("logit_bias", "logit_bias: must be an object of token id -> bias");
    for (const auto& [key, value] : b->items()) {
      uint32_t id = 0;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || key.empty())
        refuse("logit_bias", "logit_bias: key '" + key + "' is not a token id");
      if (!value.is_number() || !(value.template get<double>() >= -100 && value.template get<double>() <= 100))
        refuse("logit_bias", "logit_bias: the bias of token " + key + " must be a number in [-100, 100]");
      (*sp.mutable_logit_bias())[id] = value.template get<float>();
    }
  }
  // vLLM's sampling extensions.
  if (const json* ids = find(body, "stop_token_ids")) token_id_array(*ids, "stop_token_ids", *sp.mutable_stop_token_ids());
  if (find(body, "include_stop_str_in_output"))
    sp.set_include_stop_str_in_output(boolean(body, "include_stop_str_in_output"));
  if (find(body, "min_p")) sp.set_min_p(static_cast<float>(number(body, "min_p", 0.0, 1.0)));
  if (find(body, "min_tokens"))
    sp.set_min_tokens(static_cast<uint32_t>(integer(body, "min_tokens", 0, std::numeric_limits<int32_t>::max())));
  for (const char* key : {"max_completion_tokens", "max_tokens"})
    if (find(body, key)) {
      // 0 is checked by the endpoint: only a completion that echoes may ask for no tokens.
      sp.set_max_tokens(static_cast<uint32_t>(integer(body, key, 0, std::numeric_limits<int32_t>::max())));
      break;
    }
  if (const json* stop = find(body, "stop")) {
    if (stop->is_string()) {
      if (!stop->get<std::string>().empty()) sp.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) refuse("stop", "stop: must be a string or an array of strings");
        if (!s.get<std::string>().empty()) sp.add_stop(s.get<std::string>());
      }
    } else {
      refuse("stop", "stop: must be a string or an array of strings");
    }
  }
  if (find(body, "ignore_eos")) sp.set_ignore_eos(boolean(body, "ignore_eos"));
  if (find(body, "skip_special_tokens")) sp.set_skip_special_tokens(boolean(body, "skip_special_tokens"));
  if (find(body, "stream")) call.stream = boolean(body, "stream");
  if (const json* o = find(body, "stream_options")) {
    if (!o->is_object()) refuse("stream_options", "stream_options: must be an object");
    if (!call.stream) refuse("stream_options", "stream_options: only allowed with stream: true");
    if (find(*o, "include_usage")) {
      if (!o->at("include_usage").is_boolean())
        refuse("stream_options.include_usage", "stream_options.include_usage: must be true or false");
      call.include_usage = o->at("include_usage").get<bool>();
    }
  }
  if (const json* u = find(body, "user"); u && u->is_string()) call.request.set_request_id(u->get<std::string>());
  // vLLM's extension: lower is served first.
  if (find(body, "priority"))
    call.request.set_priority(static_cast<int32_t>(
        integer(body, "priority", std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max())));
  if (find(body, "n")) {
    call.n = static_cast<int>(integer(body, "n", 1, static_cast<int64_t>(kMaxBatch)));
  }
}

// Each request `n` times in a row (choices i*n .. i*n+n-1 answer request i),
// the j-th copy's seed, when one was given, moved by j so the samples differ.
template <typename Request>
void expand_choices(Request& first, std::vector<Request>& more, int n) {
  if (n <= 1) return;
  std::vector<Request> all;
  std::vector<Request> prompts = {first};
  prompts.insert(prompts.end(), more.begin(), more.end());
  if (prompts.size() * static_cast<size_t>(n) > kMaxBatch)
    refuse("n", "n: " + std::to_string(prompts.size()) + " prompts x " + std::to_string(n) + " choices is more than " +
                    std::to_string(kMaxBatch) + " per request");
  for (const Request& p : prompts)
    for (int j = 0; j < n; ++j) {
      Request copy = p;
      if (copy.sampling().has_seed()) copy.mutable_sampling()->set_seed(copy.sampling().seed() + static_cast<uint64_t>(j));
      all.push_back(std::move(copy));
    }
  first = all.front();
  more.assign(all.begin() + 1, all.end());
}

void chat_messages(const json& body, google::protobuf::RepeatedPtrField<pb::ChatMessage>& out);

// A token-id array of the prompt, or nothing when `v` is not one.
bool token_ids(const json& v, pb::TokenIds& out) {
  if (!v.is_array() || v.empty() || !v.front().is_number()) return false;
  token_id_array(v, "prompt", *out.mutable_ids());
  return true;
}

template <typename T>
std::variant<T, HttpError> guarded(const std::function<T()>& parse) {
  try {
    return parse();
  } catch (const Refusal& r) {
    HttpError e;
    e.status = 400;
    e.message = r.message;
    e.param = r.param;
    return e;
  } catch (const json::exception& x) {  // a type the checks above did not foresee
    HttpError e;
    e.status = 400;
    e.message = std::string("malformed request: ") + x.what();
    return e;
  }
}

json base_object(const char* object, const std::string& id, int64_t created, const std::string& model) {
  return json{{"id", id}, {"object", object}, {"created", created}, {"model", model}};
}

}  // namespace

std::variant<CompletionCall, HttpError> parse_completion(std::string_view text) {
  return guarded<CompletionCall>([&] {
    const json body = parse_object(text);
    CompletionCall call;
    pb::SamplingParams& sp = *call.request.mutable_sampling();
    sp.set_max_tokens(16);  // OpenAI's default for completions
    common_fields(body, call, sp);
    // logprobs: N alternatives per token (OpenAI allows up to 5 here); false: none.
    if (const json* l = find(body, "logprobs"); l && !(l->is_boolean() && !l->get<bool>())) {
      if (l->is_boolean()) refuse("logprobs", "logprobs: must be an integer in [0, 5] (alternatives per token)");
      sp.set_logprobs(static_cast<uint32_t>(integer(body, "logprobs", 0, 5)));
    }
    if (const json* t = find(body, "top_logprobs"); t && !(t->is_number_integer() && t->get<int64_t>() == 0))
      refuse("top_logprobs", "top_logprobs: a chat field; /v1/completions takes logprobs: N");
    // echo: the prompt before the completion, and with logprobs its tokens'
    // log-probabilities before the completion's (the first has none): how
    // evaluation harnesses score a text's likelihood, with max_tokens 0.
    if (find(body, "echo") && boolean(body, "echo")) {
      sp.set_echo(true);
      if (sp.has_logprobs()) sp.set_prompt_logprobs(sp.logprobs());
    }
    if (sp.max_tokens() == 0 && !sp.echo()) {
      const std::string key = find(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
      refuse(key, key + ": must be at least 1 (0 only with echo)");
    }
    const json* prompt = find(body, "prompt");
    if (!prompt) refuse("prompt", "prompt: required");
    if (prompt->is_string()) {
      if (prompt->get<std::string>().empty()) refuse("prompt", "prompt: must not be empty");
      call.request.set_text(prompt->get<std::string>());
    } else if (prompt->is_array() && !prompt->empty() && (prompt->front().is_string() || prompt->front().is_array())) {
      // A batch: [text, ...] or [[ids], ...]; each prompt its own request.
      if (prompt->size() > kMaxBatch)
        refuse("prompt", "prompt: at most " + std::to_string(kMaxBatch) + " prompts per request, got " +
                             std::to_string(prompt->size()));
      for (size_t i = 0; i < prompt->size(); ++i) {
        const json& one = (*prompt)[i];
        pb::GenerateRequest& r = i == 0 ? call.request : call.more.emplace_back(call.request);
        r.clear_text();
        r.clear_token_ids();
        if (one.is_string()) {
          if (one.get<std::string>().empty()) refuse("prompt", "prompt[" + std::to_string(i) + "]: must not be empty");
          r.set_text(one.get<std::string>());
        } else if (!token_ids(one, *r.mutable_token_ids())) {
          refuse("prompt", "prompt[" + std::to_string(i) + "]: must be a string or an array of token ids");
        }
      }
    } else if (!token_ids(*prompt, *call.request.mutable_token_ids())) {
      refuse("prompt", "prompt: must be a string or an array of token ids");
    }
    expand_choices(call.request, call.more, call.n);
    return call;
  });
}

// An optional string member of `obj` ("" when absent or null), refused as
// `at.key` when it is something else.
std::string optional_string(const json& obj, const char* key, const std::string& at) {
  const json* v = find(obj, key);
  if (!v || v->is_null()) return {};
  if (!v->is_string()) refuse(at + "." + key, at + "." + key + ": must be a string");
  return v->get<std::string>();
}

// "tools": [{"type": "function", "function": {"name", "description",
// "parameters"}}] (the schema passed on as its JSON text).
void chat_tools(const json& body, google::protobuf::RepeatedPtrField<pb::Tool>& out) {
  const json* tools = find(body, "tools");
  if (!tools) return;
  if (!tools->is_array()) refuse("tools", "tools: must be an array of {\"type\": \"function\", \"function\": {...}}");
  for (size_t i = 0; i < tools->size(); ++i) {
    const json& t = (*tools)[i];
    const std::string at = "tools[" + std::to_string(i) + "]";
    const json* type = t.is_object() ? find(t, "type") : nullptr;
    if (!type || *type != "function") refuse(at, at + ": must be {\"type\": \"function\", \"function\": {...}}");
    const json* fn = find(t, "function");
    if (!fn || !fn->is_object()) refuse(at + ".function", at + ".function: must be an object");
    const json* name = find(*fn, "name");
    if (!name || !name->is_string()) refuse(at + ".function.name", at + ".function.name: required, a string");
    pb::Tool* tool = out.Add();
    tool->set_name(name->get<std::string>());
    tool->set_description(optional_string(*fn, "description", at + ".function"));
    if (const json* p = find(*fn, "parameters"); p && !p->is_null()) {
      if (!p->is_object()) refuse(at + ".function.parameters", at + ".function.parameters: must be a JSON schema object");
      tool->set_parameters(p->dump());
    }
  }
}

// "tool_choice": "none" | "auto" | "required" | {"type": "function",
// "function": {"name": ...}}; "parallel_tool_calls": bool.
void chat_tool_choice(const json& body, pb::ChatRequest& r) {
  const char* kShape = "tool_choice: must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}";
  if (const json* c = find(body, "tool_choice"); c && !c->is_null()) {
    if (c->is_string()) {
      const std::string v = c->get<std::string>();
      if (v == "none") r.set_tool_choice(pb::TOOL_CHOICE_NONE);
      else if (v == "auto") r.set_tool_choice(pb::TOOL_CHOICE_AUTO);
      else if (v == "required") r.set_tool_choice(pb::TOOL_CHOICE_REQUIRED);
      else refuse("tool_choice", kShape);
    } else {
      const json* fn = c->is_object() ? find(*c, "function") : nullptr;
      const json* name = fn && fn->is_object() ? find(*fn, "name") : nullptr;
      if (!name || !name->is_string()) refuse("tool_choice", kShape);
      r.set_tool_choice(pb::TOOL_CHOICE_FUNCTION);
      r.set_tool_choice_function(name->get<std::string>());
    }
  }
  if (find(body, "parallel_tool_calls")) r.set_parallel_tool_calls(boolean(body, "parallel_tool_calls"));
}

// vLLM's "chat_template_kwargs": more template variables, an object.
void chat_template_kwargs(const json& body, std::string& out) {
  const json* k = find(body, "chat_template_kwargs");
  if (!k || k->is_null()) return;
  if (!k->is_object()) refuse("chat_template_kwargs", "chat_template_kwargs: must be an object");
  out = k->dump();
}

std::variant<ChatCall, HttpError> parse_chat(std::string_view text) {
  return guarded<ChatCall>([&] {
    const json body = parse_object(text);
    ChatCall call;
    common_fields(body, call, *call.request.mutable_sampling());
    chat_tools(body, *call.request.mutable_tools());
    chat_tool_choice(body, call.request);
    chat_template_kwargs(body, *call.request.mutable_chat_template_kwargs());
    if (const json* e = find(body, "echo"); e && !(e->is_boolean() && !e->get<bool>()))
      refuse("echo", "echo: a /v1/completions field");
    if (call.request.sampling().has_max_tokens() && call.request.sampling().max_tokens() == 0) {
      const std::string key = find(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
      refuse(key, key + ": must be at least 1");
    }
    // logprobs: true, with top_logprobs alternatives per token (0..20).
    const bool want_logprobs = find(body, "logprobs") && boolean(body, "logprobs");
    if (find(body, "top_logprobs")) {
      const int64_t top = integer(body, "top_logprobs", 0, 20);
      if (!want_logprobs && top > 0) refuse("top_logprobs", "top_logprobs: needs logprobs: true");
      if (want_logprobs) call.request.mutable_sampling()->set_logprobs(static_cast<uint32_t>(top));
    } else if (want_logprobs) {
      call.request.mutable_sampling()->set_logprobs(0);
    }
    chat_messages(body, *call.request.mutable_messages());
    expand_choices(call.request, call.more, call.n);
    return call;
  });
}

std::variant<tandem::v1::TokenizeRequest, HttpError> parse_tokenize(std::string_view text) {
  return guarded<pb::TokenizeRequest>([&] {
    const json body = parse_object(text);
    pb::TokenizeRequest r;
    r.set_model(model_field(body));
    const json* prompt = find(body, "prompt");
    if (prompt && find(body, "messages")) refuse("prompt", "prompt: give prompt or messages, not both");
    if (find(body, "add_special_tokens")) r.set_add_special_tokens(boolean(body, "add_special_tokens"));
    if (prompt) {
      if (!prompt->is_string()) refuse("prompt", "prompt: must be a string");
      r.set_text(prompt->get<std::string>());
    } else {
      if (!find(body, "messages")) refuse("prompt", "prompt: give prompt (a text) or messages (a conversation)");
      chat_messages(body, *r.mutable_messages());
      chat_tools(body, *r.mutable_tools());
      chat_template_kwargs(body, *r.mutable_chat_template_kwargs());
      if (find(body, "add_generation_prompt")) r.set_add_generation_prompt(boolean(body, "add_generation_prompt"));
    }
    return r;
  });
}

std::variant<tandem::v1::DetokenizeRequest, HttpError> parse_detokenize(std::string_view text) {
  return guarded<pb::DetokenizeRequest>([&] {
    const json body = parse_object(text);
    pb::DetokenizeRequest r;
    r.set_model(model_field(body));
    const json* tokens = find(body, "tokens");
    if (!tokens) refuse("tokens", "tokens: required");
    token_id_array(*tokens, "tokens", *r.mutable_token_ids());
    if (find(body, "skip_special_tokens")) r.set_skip_special_tokens(boolean(body, "skip_special_tokens"));
    return r;
  });
}

Json tokenize_response(const tandem::v1::TokenizeResponse& r) {
  json tokens = json::array();
  for (uint32_t id : r.token_ids()) tokens.push_back(id);
  return {{"count", r.token_ids_size()}, {"max_model_len", r.max_context()}, {"tokens", tokens}};
}

Json detokenize_response(const tandem::v1::DetokenizeResponse& r) { return {{"prompt", r.text()}}; }

namespace {

// "messages" (string content or text parts) into the router's chat messages.
void chat_messages(const json& body, google::protobuf::RepeatedPtrField<pb::ChatMessage>& out) {
    const json* messages = find(body, "messages");
    if (!messages || !messages->is_array() || messages->empty())
      refuse("messages", "messages: must be a non-empty array");
    for (size_t i = 0; i < messages->size(); ++i) {
      const json& m = (*messages)[i];
      const std::string at = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) refuse(at, at + ": must be an object");
      const json* role = find(m, "role");
      if (!role || !role->is_string() || role->get<std::string>().empty()) refuse(at + ".role", at + ".role: required");
      std::string content;
      if (const json* c = find(m, "content"); c && !c->is_null()) {  // null: an assistant turn of calls only
        if (c->is_string()) {
          content = c->get<std::string>();
        } else if (c->is_array()) {
          for (size_t k = 0; k < c->size(); ++k) {
            const json& part = (*c)[k];
            const std::string pat = at + ".content[" + std::to_string(k) + "]";
            const json* type = part.is_object() ? find(part, "type") : nullptr;
            if (!type || !type->is_string() || type->get<std::string>() != "text" || !find(part, "text") ||
                !part.at("text").is_string())
              refuse(pat, pat + ": only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
            content += part.at("text").get<std::string>();
          }
        } else {
          refuse(at + ".content", at + ".content: must be a string or an array of text parts");
        }
      }
      auto* msg = out.Add();
      msg->set_role(role->get<std::string>());
      msg->set_content(content);
      if (const json* t = find(m, "tool_calls"); t && !t->is_null()) {
        if (!t->is_array()) refuse(at + ".tool_calls", at + ".tool_calls: must be an array");
        for (size_t k = 0; k < t->size(); ++k) {
          const json& c = (*t)[k];
          const std::string cat = at + ".tool_calls[" + std::to_string(k) + "]";
          const json* fn = c.is_object() ? find(c, "function") : nullptr;
          const json* name = fn && fn->is_object() ? find(*fn, "name") : nullptr;
          if (!name || !name->is_string())
            refuse(cat, cat + ": must be {\"id\": ..., \"type\": \"function\", \"function\": {\"name\": ..., \"arguments\": ...}}");
          auto* call = msg->add_tool_calls();
          call->set_name(name->get<std::string>());
          if (const json* id = find(c, "id"); id && id->is_string()) call->set_id(id->get<std::string>());
          // OpenAI sends the arguments as JSON text; an object is taken too.
          if (const json* a = find(*fn, "arguments"); a && !a->is_null())
            call->set_arguments(a->is_string() ? a->get<std::string>() : a->dump());
        }
      }
      msg->set_tool_call_id(optional_string(m, "tool_call_id", at));
      msg->set_name(optional_string(m, "name", at));
      msg->set_reasoning_content(optional_string(m, "reasoning_content", at));
    }
}

}  // namespace

HttpError from_grpc(const grpc::Status& status) {
  HttpError e;
  e.message = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      e.status = 400;
      break;
    case grpc::StatusCode::NOT_FOUND:
      e.status = 404;
      e.type = "not_found_error";
      e.code = "model_not_found";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      e.status = 401;
      e.code = "invalid_api_key";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      e.status = 429;
      e.type = "rate_limit_error";
      break;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::CANCELLED:  // the router shutting down under a request
      e.status = 503;
      e.type = "service_unavailable";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      e.status = 504;
      e.type = "timeout";
      break;
    default:
      e.status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

namespace {
json error_object(const HttpError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}
}  // namespace

std::string dump(const json& j) {
  // Text from elsewhere (a node's error message) may not be valid UTF-8:
  // replaced, never thrown.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string error_body(const HttpError& e) { return dump(error_object(e)); }

std::string error_event(const HttpError& e) { return sse(error_object(e)); }

json finish_reason(pb::FinishReason r) {
  if (r == pb::FINISH_REASON_STOP) return "stop";
  if (r == pb::FINISH_REASON_LENGTH) return "length";
  if (r == pb::FINISH_REASON_TOOL_CALLS) return "tool_calls";
  return nullptr;
}

json usage(const pb::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"total_tokens", u.prompt_tokens() + u.completion_tokens()}};
}

namespace {
// One entry of "choices": `key` ("text", "message" or "delta") holds `value`.
json choice(size_t index, const char* key, json value, pb::FinishReason finish, json logprobs = nullptr) {
  return {{"index", index},
          {key, std::move(value)},
          {"logprobs", std::move(logprobs)},
          {"finish_reason", finish_reason(finish)}};
}

json byte_list(const std::string& bytes) {
  json out = json::array();
  for (unsigned char c : bytes) out.push_back(static_cast<int>(c));
  return out;
}

// A token as text: itself when it is whole UTF-8; otherwise "bytes:\xNN..."
// as OpenAI writes a piece of a character, so that distinct tokens stay
// distinct strings.
std::string token_text(const std::string& bytes) {
  if (model::is_valid_utf8(bytes)) return bytes;
  std::string out = "bytes:";
  char hex[8];
  for (unsigned char c : bytes) {
    std::snprintf(hex, sizeof hex, "\\x%02x", c);
    out += hex;
  }
  return out;
}

// A log-probability as a JSON number: -inf and NaN (degenerate logits) as
// -9999, as vLLM does, never null.
double finite_logprob(float v) { return std::isfinite(v) ? static_cast<double>(v) : -9999.0; }
}  // namespace

json completion_logprobs(const std::vector<pb::TokenLogprob>& lps, size_t text_offset) {
  json tokens = json::array(), logprobs = json::array(), top = json::array(), offsets = json::array();
  for (const auto& lp : lps) {
    tokens.push_back(token_text(lp.token()));
    if (!lp.has_logprob()) {  // an echoed prompt's first token: nothing to condition it on
      logprobs.push_back(nullptr);
      top.push_back(nullptr);
      offsets.push_back(text_offset);
      text_offset += lp.token().size();
      continue;
    }
    logprobs.push_back(finite_logprob(lp.logprob()));
    // Most likely first, as OpenAI lists them; a string already there (two
    // ids that read the same) keeps its likelier value; the chosen token is in.
    json alternatives = json::object();
    for (const auto& alt : lp.top()) {
      const std::string key = token_text(alt.token());
      if (!alternatives.contains(key)) alternatives[key] = finite_logprob(alt.logprob());
    }
    if (const std::string chosen = token_text(lp.token()); !alternatives.contains(chosen))
      alternatives[chosen] = finite_logprob(lp.logprob());
    top.push_back(std::move(alternatives));
    offsets.push_back(text_offset);
    text_offset += lp.token().size();
  }
  return {{"tokens", tokens}, {"token_logprobs", logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json chat_logprobs(const std::vector<pb::TokenLogprob>& lps) {
  json content = json::array();
  for (const auto& lp : lps) {
    json top = json::array();
    for (const auto& alt : lp.top())
      top.push_back({{"token", token_text(alt.token())},
                     {"logprob", finite_logprob(alt.logprob())},
                     {"bytes", byte_list(alt.token())}});
    content.push_back({{"token", token_text(lp.token())},
                       {"logprob", finite_logprob(lp.logprob())},
                       {"bytes", byte_list(lp.token())},
                       {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

json completion(const std::string& id, int64_t created, const std::string& model, const std::vector<Choice>& choices,
                const pb::Usage& u) {
  json j = base_object("text_completion", id, created, model);
  j["choices"] = json::array();
  for (size_t i = 0; i < choices.size(); ++i)
    j["choices"].push_back(choice(i, "text", choices[i].text, choices[i].finish,
                                  choices[i].logprobs ? completion_logprobs(*choices[i].logprobs, 0) : json()));
  j["usage"] = usage(u);
  return j;
}

json tool_calls(const std::vector<pb::ToolCall>& calls) {
  json out = json::array();
  for (const pb::ToolCall& c : calls)
    out.push_back({{"id", c.id()}, {"type", "function"}, {"function", {{"name", c.name()}, {"arguments", c.arguments()}}}});
  return out;
}

json tool_call_deltas(const std::vector<pb::ToolCallDelta>& pieces) {
  json out = json::array();
  for (const pb::ToolCallDelta& d : pieces) {
    json one = {{"index", d.index()}};
    if (!d.name().empty()) {
      one["id"] = d.id();
      one["type"] = "function";
      one["function"] = {{"name", d.name()}, {"arguments", d.arguments()}};
    } else {
      one["function"] = {{"arguments", d.arguments()}};
    }
    out.push_back(std::move(one));
  }
  return out;
}

json chat_completion(const std::string& id, int64_t created, const std::string& model,
                     const std::vector<Choice>& choices, const pb::Usage& u) {
  json j = base_object("chat.completion", id, created, model);
  j["choices"] = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    json message = {{"role", "assistant"}, {"content", c.text}};
    // DeepSeek's and vLLM's field for the thought before the answer.
    if (!c.reasoning.empty()) message["reasoning_content"] = c.reasoning;
    // OpenAI's shape: no content next to calls or a thought is null, not ""
    // (nor the blank line before a call).
    if ((!c.tool_calls.empty() || !c.reasoning.empty()) && c.text.find_first_not_of(" \t\r\n") == std::string::npos)
      message["content"] = nullptr;
    if (!c.tool_calls.empty()) message["tool_calls"] = tool_calls(c.tool_calls);
    j["choices"].push_back(choice(i, "message", std::move(message), c.finish,
                                  c.logprobs ? chat_logprobs(*c.logprobs) : json()));
  }
  j["usage"] = usage(u);
  return j;
}

json completion_chunk(const std::string& id, int64_t created, const std::string& model, const std::string& text,
                      pb::FinishReason finish, const json& logprobs) {
  json j = base_object("text_completion", id, created, model);
  j["choices"] = json::array({choice(0, "text", text, finish, logprobs)});
  return j;
}

json chat_chunk(const std::string& id, int64_t created, const std::string& model, const json& delta,
                pb::FinishReason finish, const json& logprobs) {
  json j = base_object("chat.completion.chunk", id, created, model);
  j["choices"] = json::array({choice(0, "delta", delta, finish, logprobs)});
  return j;
}

json usage_chunk(const std::string& object, const std::string& id, int64_t created, const std::string& model,
                 const pb::Usage& u) {
  json j = base_object(object.c_str(), id, created, model);
  j["choices"] = json::array();
  j["usage"] = usage(u);
  return j;
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

json model_list(const std::string& served_name, int64_t created) {
  return {{"object", "list"},
          {"data", json::array({{{"id", served_name}, {"object", "model"}, {"created", created}, {"owned_by", "tandem"}}})}};
}

}  // namespace tandem::router::openai
