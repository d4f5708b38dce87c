// The OpenAI-compatible HTTP API's wire format: requests of /v1/completions and
// /v1/chat/completions turned into the router's own tandem.v1 requests, and
// the router's answers turned into OpenAI response objects, stream chunks and
// error bodies. Pure translation (no I/O), so every rule is unit-tested; the
// HTTP server is http_gateway.h.
//
// What is taken: model, prompt (a string, token ids, or an array of either:
// a batch, one choice per prompt), messages (string content or text parts), max_tokens /
// max_completion_tokens, temperature, top_p, seed, stop, stream,
// stream_options.include_usage, n, logprobs (completions:
// 0..5 alternatives; chat: logprobs + top_logprobs 0..20), echo (completions:
// the prompt first, with logprobs its tokens' too; max_tokens 0 scores only),
// presence_penalty, frequency_penalty, logit_bias, and the extensions top_k,
// min_p, min_tokens, repetition_penalty, priority, stop_token_ids,
// include_stop_str_in_output, ignore_eos, skip_special_tokens. What cannot be
// honoured (best_of, suffix, tools, non-text content, JSON response formats) is
// refused naming the field, never silently ignored; other unknown fields are
// ignored, as OpenAI's own server does.
#pragma once

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tandem/v1/generation.pb.h"

namespace tandem::router::openai {

// Responses keep their keys in the order written (OpenAI's order; most likely
// first in a completion's top_logprobs).
using Json = nlohmann::ordered_json;

// An error answered as HTTP `status` with {"error": {...}} in OpenAI's shape.
struct HttpError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the field at fault; empty: null
  std::string code;   // e.g. "model_not_found"; empty: null
};

// Prompts one /v1/completions request may carry (choices of a batch run at once).
inline constexpr size_t kMaxBatch = 64;

struct CompletionCall {
  tandem::v1::GenerateRequest request;
  // The other requests of a batch of prompts and/or n > 1 (the first is
  // `request`), in choice order: prompt i's n samples are choices i*n ..
  // i*n+n-1. Streamed too, each choice's events under its index.
  std::vector<tandem::v1::GenerateRequest> more;
  int n = 1;  // choices per prompt
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

struct ChatCall {
  tandem::v1::ChatRequest request;
  std::vector<tandem::v1::ChatRequest> more;  // n > 1: the other samples, choices 1 .. n-1
  int n = 1;
  bool stream = false;
  bool include_usage = false;
};

// Bodies as the client sent them. Without max_tokens a completion gets 16
// tokens (OpenAI's default for /v1/completions); a chat the router's default.
std::variant<CompletionCall, HttpError> parse_completion(std::string_view body);
std::variant<ChatCall, HttpError> parse_chat(std::string_view body);

// POST /tokenize and /detokenize (vLLM's shapes): {"prompt"} or
// {"messages", "add_generation_prompt"}, with "add_special_tokens";
// {"tokens": [ids], "skip_special_tokens"}.
std::variant<tandem::v1::TokenizeRequest, HttpError> parse_tokenize(std::string_view body);
std::variant<tandem::v1::DetokenizeRequest, HttpError> parse_detokenize(std::string_view body);
// {"count", "max_model_len", "tokens"} and {"prompt"}.
Json tokenize_response(const tandem::v1::TokenizeResponse& r);
Json detokenize_response(const tandem::v1::DetokenizeResponse& r);

// The router's gRPC status as an HTTP error (INVALID_ARGUMENT 400, NOT_FOUND
// 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE and CANCELLED 503,
// DEADLINE_EXCEEDED 504, others 500).
HttpError from_grpc(const grpc::Status& status);
std::string error_body(const HttpError& e);
// The same as a server-sent event, for an error after a stream has started.
std::string error_event(const HttpError& e);
// JSON text; invalid UTF-8 in strings is replaced, never thrown.
std::string dump(const Json& j);

// "stop" | "length" | "tool_calls" | null.
Json finish_reason(tandem::v1::FinishReason r);
Json usage(const tandem::v1::Usage& u);

// Responses. `id` is the response id ("cmpl-..." / "chatcmpl-..."), `created`
// Unix seconds, `model` the served name.
// Choice i answers request i (of a batch, or n > 1); `u` summed over them.
struct Choice {
  std::string text;
  tandem::v1::FinishReason finish = tandem::v1::FINISH_REASON_UNSPECIFIED;
  std::optional<std::vector<tandem::v1::TokenLogprob>> logprobs = std::nullopt;  // set: the request asked for them
  std::vector<tandem::v1::ToolCall> tool_calls = {};  // chat: the calls the answer made
  std::string reasoning = {};  // chat: the model's reasoning (router.reasoning_parser); "" = none
};
// A message's "tool_calls" in OpenAI's shape ({"id", "type": "function",
// "function": {"name", "arguments"}}).
Json tool_calls(const std::vector<tandem::v1::ToolCall>& calls);
// A stream delta's "tool_calls": each piece with its call's "index"; a call's
// first piece has its "id", "type" and "function.name", every piece its
// "function.arguments" (OpenAI's chunks).
Json tool_call_deltas(const std::vector<tandem::v1::ToolCallDelta>& pieces);
// A choice's "logprobs" object. Completions: tokens, token_logprobs,
// top_logprobs ({token: logprob}), text_offset (bytes, from text_offset on).
// An entry without a logprob (an echoed prompt's first token) has null
// token_logprobs and top_logprobs, as OpenAI answers.
// Chat: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}.
// Token strings are the tokens' bytes (invalid UTF-8 replaced when dumped).
Json completion_logprobs(const std::vector<tandem::v1::TokenLogprob>& lps, size_t text_offset);
Json chat_logprobs(const std::vector<tandem::v1::TokenLogprob>& lps);
Json completion(const std::string& id, int64_t created, const std::string& model,
                          const std::vector<Choice>& choices, const tandem::v1::Usage& u);
Json chat_completion(const std::string& id, int64_t created, const std::string& model,
                               const std::vector<Choice>& choices, const tandem::v1::Usage& u);
// Stream chunks: text (or a chat delta) and, on the last, the finish reason;
// `logprobs` (null: none) those of the chunk's tokens.
Json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                                const std::string& text, tandem::v1::FinishReason finish,
                                const Json& logprobs = nullptr);
Json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                          const Json& delta, tandem::v1::FinishReason finish,
                          const Json& logprobs = nullptr);
// The chunk after the last one when stream_options.include_usage is set:
// no choices, the usage. `object` is "text_completion" or "chat.completion.chunk".
Json usage_chunk(const std::string& object, const std::string& id, int64_t created,
                           const std::string& model, const tandem::v1::Usage& u);
// One server-sent event: "data: <json>\n\n".
std::string sse(const Json& j);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// GET /v1/models.
Json model_list(const std::string& served_name, int64_t created);

}  // namespace tandem::router::openai
