// The OpenAI wire format: what each request field becomes in the router's
// request, what is refused and how it is named, and the shape of responses.
#include "openai.h"

#include <gtest/gtest.h>

#include <limits>

namespace tandem::router::openai {
namespace {

namespace pb = tandem::v1;
using nlohmann::json;

// The refusal of a body that must be refused (a failure, and an empty error, if accepted).
template <typename Call>
HttpError refused(const std::variant<Call, HttpError>& r, const std::string& body) {
  if (const auto* e = std::get_if<HttpError>(&r)) return *e;
  ADD_FAILURE() << body << " was accepted";
  return {};
}

CompletionCall completion_ok(const std::string& body) {
  auto r = parse_completion(body);
  if (auto* e = std::get_if<HttpError>(&r)) {
    ADD_FAILURE() << body << " -> " << e->message;
    return {};
  }
  return std::get<CompletionCall>(r);
}

HttpError completion_refused(const std::string& body) { return refused(parse_completion(body), body); }
HttpError chat_refused(const std::string& body) { return refused(parse_chat(body), body); }

TEST(OpenAiCompletion, MapsEveryTakenField) {
  const auto c = completion_ok(R"({"model": "m", "prompt": "Hello", "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": 40, "seed": 12345678901234, "stop": ["\n", "", "END"], "stream": true,
      "stream_options": {"include_usage": true}, "ignore_eos": true, "skip_special_tokens": false, "user": "u1",
      "n": 1, "logprobs": null, "presence_penalty": 0, "unknown_field": {"x": 1}})");
  const pb::GenerateRequest& r = c.request;
  EXPECT_EQ(r.model(), "m");
  EXPECT_EQ(r.text(), "Hello");
  EXPECT_EQ(r.request_id(), "u1");
  const pb::SamplingParams& s = r.sampling();
  EXPECT_EQ(s.max_tokens(), 7u);
  EXPECT_FLOAT_EQ(s.temperature(), 0.5f);
  EXPECT_FLOAT_EQ(s.top_p(), 0.9f);
  EXPECT_EQ(s.top_k(), 40);
  EXPECT_EQ(s.seed(), 12345678901234u);
  ASSERT_EQ(s.stop_size(), 2);  // empty stop strings dropped
  EXPECT_EQ(s.stop(0), "\n");
  EXPECT_EQ(s.stop(1), "END");
  EXPECT_TRUE(s.ignore_eos());
  EXPECT_FALSE(s.skip_special_tokens());
  EXPECT_TRUE(c.stream);
  EXPECT_TRUE(c.include_usage);
}

TEST(OpenAiCompletion, DefaultsAndPromptForms) {
  const auto plain = completion_ok(R"({"prompt": "Hi"})");
  EXPECT_EQ(plain.request.sampling().max_tokens(), 16u);  // OpenAI's completions default
  EXPECT_FALSE(plain.request.sampling().has_temperature());  // the router's default applies
  EXPECT_FALSE(plain.stream);
  EXPECT_EQ(completion_ok(R"({"prompt": ["one"]})").request.text(), "one");
  const auto ids = completion_ok(R"({"prompt": [1, 2, 3]})");
  ASSERT_EQ(ids.request.token_ids().ids_size(), 3);
  EXPECT_EQ(ids.request.token_ids().ids(2), 3u);
  EXPECT_EQ(completion_ok(R"({"prompt": [[4, 5]]})").request.token_ids().ids_size(), 2);
  // A batch: one request per prompt, the same sampling, text and ids mixed.
  const auto batch = completion_ok(R"({"prompt": ["a", [7, 8], "c"], "max_tokens": 3, "seed": 5})");
  EXPECT_EQ(batch.request.text(), "a");
  ASSERT_EQ(batch.more.size(), 2u);
  EXPECT_EQ(batch.more[0].token_ids().ids_size(), 2);
  EXPECT_FALSE(batch.more[0].has_text());
  EXPECT_EQ(batch.more[1].text(), "c");
  EXPECT_EQ(batch.more[1].sampling().max_tokens(), 3u);
  EXPECT_EQ(batch.more[1].sampling().seed(), 5u);
  EXPECT_TRUE(completion_ok(R"({"prompt": ["one"]})").more.empty());
  // n choices per prompt, prompt-major, the seed moved per sample.
  const auto samples = completion_ok(R"({"prompt": ["a", "b"], "n": 3, "seed": 10})");
  ASSERT_EQ(samples.more.size(), 5u);
  EXPECT_EQ(samples.request.text(), "a");
  EXPECT_EQ(samples.request.sampling().seed(), 10u);
  EXPECT_EQ(samples.more[1].text(), "a");
  EXPECT_EQ(samples.more[1].sampling().seed(), 12u);
  EXPECT_EQ(samples.more[2].text(), "b");
  EXPECT_EQ(samples.more[2].sampling().seed(), 10u);
  EXPECT_FALSE(completion_ok(R"({"prompt": "x", "n": 2})").more[0].sampling().has_seed());  // drawn per sample
  EXPECT_EQ(completion_ok(R"({"prompt": "x", "stop": "###"})").request.sampling().stop(0), "###");
  EXPECT_EQ(completion_ok(R"({"prompt": "x", "top_k": -1})").request.sampling().top_k(), 0);  // vLLM's "off"
  EXPECT_EQ(completion_ok(R"({"prompt": "x", "max_completion_tokens": 3})").request.sampling().max_tokens(), 3u);
}

// Several choices stream too: n copies and batches keep `stream`.
TEST(OpenAiCompletion, SeveralChoicesMayStream) {
  const auto c = completion_ok(R"({"prompt": ["a", "b"], "n": 2, "stream": true})");
  EXPECT_TRUE(c.stream);
  EXPECT_EQ(c.more.size(), 3u);
}

TEST(OpenAiCompletion, RefusalsNameTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"prompt": "x", "n": 0})", "n"},
      {R"({"prompt": ["a", "b"], "n": 40})", "n"},
      {R"({"prompt": "x", "best_of": 3})", "best_of"},
      {R"({"prompt": "x", "logprobs": 6})", "logprobs"},
      {R"({"prompt": "x", "logprobs": true})", "logprobs"},
      {R"({"prompt": "x", "top_logprobs": 2})", "top_logprobs"},
      {R"({"prompt": "x", "echo": 1})", "echo"},
      {R"({"prompt": "x", "max_tokens": 0, "echo": false})", "max_tokens"},
      {R"({"prompt": "x", "max_completion_tokens": 0})", "max_completion_tokens"},
      {R"({"prompt": "x", "frequency_penalty": 2.5})", "frequency_penalty"},
      {R"({"prompt": "x", "presence_penalty": "a"})", "presence_penalty"},
      {R"({"prompt": "x", "repetition_penalty": 0})", "repetition_penalty"},
      {R"({"prompt": "x", "logit_bias": {"abc": 1}})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": {"5": 101}})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": [1]})", "logit_bias"},
      {R"({"prompt": "x", "min_p": 1.5})", "min_p"},
      {R"({"prompt": "x", "min_tokens": -1})", "min_tokens"},
      {R"({"prompt": "x", "priority": "high"})", "priority"},
      {R"({"prompt": "x", "stop_token_ids": [-1]})", "stop_token_ids"},
      {R"({"prompt": "x", "prompt_logprobs": 1})", "prompt_logprobs"},
      {R"({"prompt": "x", "include_stop_str_in_output": 1})", "include_stop_str_in_output"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": -1})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "top_p": 1.5})", "top_p"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 99999999999})", "max_tokens"},
      {R"({"prompt": "x", "stop": 7})", "stop"},
      {R"({"prompt": "x", "stop": ["a", 1]})", "stop"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "seed": "abc"})", "seed"},
      {R"({"prompt": "x", "model": 3})", "model"},
      {R"({"prompt": ""})", "prompt"},
      {R"({"prompt": []})", "prompt"},
      {R"({"prompt": ["a", ""]})", "prompt"},
      {R"({"prompt": ["a", 5]})", "prompt"},
      {R"({"prompt": [1, -2]})", "prompt"},
      {R"({"prompt": [1, "a"]})", "prompt"},
      {R"({"prompt": {"text": "x"}})", "prompt"},
      {R"({"max_tokens": 4})", "prompt"},
  };
  for (const auto& [body, param] : cases) {
    const HttpError e = completion_refused(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.type, "invalid_request_error") << body;
    EXPECT_EQ(e.param, param) << body;
    EXPECT_EQ(e.message.rfind(param, 0), 0u) << body << " -> " << e.message;  // the message starts with the field
  }
  // Past the batch limit.
  json many = {{"prompt", json::array()}};
  for (size_t i = 0; i <= kMaxBatch; ++i) many["prompt"].push_back("p");
  EXPECT_EQ(completion_refused(many.dump()).param, "prompt");
  // Not JSON, or not an object: refused without a field.
  for (const char* body : {"{bad", "", "[1, 2]", "\"text\"", "null"}) {
    const HttpError e = completion_refused(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_TRUE(e.param.empty()) << body;
    EXPECT_FALSE(e.message.empty());
  }
}

TEST(OpenAiChat, MessagesAndContentParts) {
  auto r = parse_chat(R"({"messages": [{"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}], "max_tokens": 9, "stream": true})");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(r)) << std::get<HttpError>(r).message;
  const ChatCall& c = std::get<ChatCall>(r);
  ASSERT_EQ(c.request.messages_size(), 3);
  EXPECT_EQ(c.request.messages(0).role(), "system");
  EXPECT_EQ(c.request.messages(1).content(), "Hello, there");
  EXPECT_EQ(c.request.messages(2).content(), "");
  EXPECT_EQ(c.request.sampling().max_tokens(), 9u);
  EXPECT_TRUE(c.stream);
  // n samples of the conversation.
  auto two = parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "n": 2, "temperature": 0.7})");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(two));
  ASSERT_EQ(std::get<ChatCall>(two).more.size(), 1u);
  EXPECT_EQ(std::get<ChatCall>(two).more[0].messages(0).content(), "x");
  // Without max_tokens a chat keeps the router's default (not the completions 16).
  auto d = parse_chat(R"({"messages": [{"role": "user", "content": "x"}]})");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(d));
  EXPECT_FALSE(std::get<ChatCall>(d).request.sampling().has_max_tokens());

  const std::pair<const char*, const char*> cases[] = {
      {R"({})", "messages"},
      {R"({"messages": []})", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({"messages": [7]})", "messages[0]"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
       "messages[0].content[0]"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})", "tools[0].function"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": {"type": "function"}})", "tools"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]})", "tools[0]"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f",
           "parameters": "{}"}}]})", "tools[0].function.parameters"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"})", "tool_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function"}})", "tool_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": "yes"})", "parallel_tool_calls"},
      {R"({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]})", "functions"},
      {R"({"messages": [{"role": "assistant", "tool_calls": {}}]})", "messages[0].tool_calls"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]})", "messages[0].tool_calls[0]"},
      {R"({"messages": [{"role": "tool", "content": "r", "tool_call_id": 5}]})", "messages[0].tool_call_id"},
      {R"({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": [1]})", "chat_template_kwargs"},
      {R"({"messages": [{"role": "assistant", "content": "x", "reasoning_content": 1}]})", "messages[0].reasoning_content"},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}})", "response_format"},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}})",
       "response_format"},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
           "guided_regex": "a+"})",
       "response_format"},
      {R"({"messages": [{"role": "user", "content": "x"}], "guided_choice": []})", "guided_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "guided_choice": ["a", 1]})", "guided_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "guided_regex": 5})", "guided_regex"},
      {R"({"messages": [{"role": "user", "content": "x"}], "guided_json": 5})", "guided_json"},
      {R"({"messages": [{"role": "user", "content": "x"}], "guided_grammar": "root ::= x"})", "guided_grammar"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", "logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "echo": true})", "echo"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens"},
  };
  for (const auto& [body, param] : cases) {
    const HttpError e = chat_refused(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body << " -> " << e.message;
  }
  auto text_format = parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"},
                                    "tools": [], "tool_choice": "none"})");
  EXPECT_TRUE(std::holds_alternative<ChatCall>(text_format));
}

// tools, tool_choice and the turns of a conversation with calls become the
// router's ChatRequest; answers with calls take OpenAI's shape.
TEST(OpenAiRequests, ToolCallingFields) {
  auto c = parse_chat(R"({"messages": [
      {"role": "user", "content": "Weather in Oslo?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
          "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "3 C"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Forecast",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
              {"type": "function", "function": {"name": "now"}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": false})");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(c)) << std::get<HttpError>(c).message;
  const pb::ChatRequest& r = std::get<ChatCall>(c).request;
  ASSERT_EQ(r.tools_size(), 2);
  EXPECT_EQ(r.tools(0).name(), "get_weather");
  EXPECT_EQ(r.tools(0).description(), "Forecast");
  EXPECT_EQ(r.tools(0).parameters(), R"({"type":"object","properties":{"city":{"type":"string"}}})");
  EXPECT_EQ(r.tools(1).parameters(), "");
  EXPECT_EQ(r.tool_choice(), pb::TOOL_CHOICE_FUNCTION);
  EXPECT_EQ(r.tool_choice_function(), "get_weather");
  ASSERT_TRUE(r.has_parallel_tool_calls());
  EXPECT_FALSE(r.parallel_tool_calls());
  ASSERT_EQ(r.messages_size(), 3);
  EXPECT_EQ(r.messages(1).content(), "");
  ASSERT_EQ(r.messages(1).tool_calls_size(), 1);
  EXPECT_EQ(r.messages(1).tool_calls(0).id(), "call_1");
  EXPECT_EQ(r.messages(1).tool_calls(0).arguments(), R"({"city": "Oslo"})");
  EXPECT_EQ(r.messages(2).tool_call_id(), "call_1");
  auto kw = parse_chat(R"({"messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}],
                          "chat_template_kwargs": {"enable_thinking": false}})");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(kw));
  EXPECT_EQ(std::get<ChatCall>(kw).request.chat_template_kwargs(), R"({"enable_thinking":false})");
  EXPECT_EQ(std::get<ChatCall>(kw).request.messages(0).reasoning_content(), "r");
  EXPECT_EQ(r.messages(2).name(), "get_weather");
  for (const auto& [choice, want] : std::vector<std::pair<std::string, pb::ToolChoice>>{
           {"\"none\"", pb::TOOL_CHOICE_NONE}, {"\"auto\"", pb::TOOL_CHOICE_AUTO}, {"\"required\"", pb::TOOL_CHOICE_REQUIRED}}) {
    auto one = parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": )" + choice + "}");
    ASSERT_TRUE(std::holds_alternative<ChatCall>(one)) << choice;
    EXPECT_EQ(std::get<ChatCall>(one).request.tool_choice(), want);
  }

  pb::ToolCall call;
  call.set_id("call_x");
  call.set_name("get_weather");
  call.set_arguments(R"({"city":"Oslo"})");
  const json whole = chat_completion("chatcmpl-1", 0, "m", {Choice{"", pb::FINISH_REASON_TOOL_CALLS, std::nullopt, {call}}}, {});
  const json& msg = whole["choices"][0]["message"];
  EXPECT_TRUE(msg["content"].is_null());
  EXPECT_EQ(msg["tool_calls"][0]["id"], "call_x");
  EXPECT_EQ(msg["tool_calls"][0]["type"], "function");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["arguments"], R"({"city":"Oslo"})");
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "tool_calls");
  // Streamed: the first piece names the call, later ones carry arguments only.
  pb::ToolCallDelta first, later;
  first.set_index(1);
  first.set_id("call_y");
  first.set_name("now");
  later.set_index(1);
  later.set_arguments("{}");
  const json pieces = tool_call_deltas({first, later});
  EXPECT_EQ(pieces[0], json::parse(R"({"index": 1, "id": "call_y", "type": "function",
                                       "function": {"name": "now", "arguments": ""}})"));
  EXPECT_EQ(pieces[1], json::parse(R"({"index": 1, "function": {"arguments": "{}"}})"));
  const json words = chat_completion("chatcmpl-2", 0, "m", {Choice{"hi", pb::FINISH_REASON_STOP}}, {});
  EXPECT_FALSE(words["choices"][0]["message"].contains("tool_calls"));
  EXPECT_FALSE(words["choices"][0]["message"].contains("reasoning_content"));
  const json thought =
      chat_completion("chatcmpl-3", 0, "m", {Choice{"4", pb::FINISH_REASON_STOP, std::nullopt, {}, "2+2"}}, {});
  EXPECT_EQ(thought["choices"][0]["message"]["reasoning_content"], "2+2");
}

// response_format and vLLM's guided_* fields become the request's structured-output fields.
TEST(OpenAiRequests, StructuredOutputFields) {
  auto sampling = [](const std::string& extra) {
    auto c = parse_chat(R"({"messages": [{"role": "user", "content": "x"}], )" + extra + "}");
    EXPECT_TRUE(std::holds_alternative<ChatCall>(c)) << extra;
    return std::get<ChatCall>(c).request.sampling();
  };
  EXPECT_TRUE(sampling(R"("response_format": {"type": "json_object"})").guided_json_object());
  const auto schema = sampling(R"("response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true,
      "schema": {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}}})");
  // Property order survives (it is the order the answer writes them in).
  EXPECT_EQ(schema.guided_json(), R"({"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"string"}}})");
  EXPECT_EQ(sampling(R"("guided_json": {"type": "integer"})").guided_json(), R"({"type":"integer"})");
  EXPECT_EQ(sampling(R"("guided_json": "{\"type\": \"integer\"}")").guided_json(), R"({"type": "integer"})");
  EXPECT_EQ(sampling(R"("guided_regex": "[0-9]+")").guided_regex(), "[0-9]+");
  const auto choice = sampling(R"("guided_choice": ["yes", "no"])");
  ASSERT_EQ(choice.guided_choice_size(), 2);
  EXPECT_EQ(choice.guided_choice(1), "no");
  const auto text = sampling(R"("response_format": {"type": "text"})");
  EXPECT_FALSE(text.guided_json_object());
  EXPECT_TRUE(text.guided_json().empty());
  // The completions endpoint takes them too.
  auto c = parse_completion(R"({"prompt": "x", "guided_choice": ["a"]})");
  ASSERT_TRUE(std::holds_alternative<CompletionCall>(c));
  EXPECT_EQ(std::get<CompletionCall>(c).request.sampling().guided_choice_size(), 1);
}

// A body nested past any real request's depth is refused before anything
// recurses over it (dump() in error messages and schemas does).
TEST(OpenAiRequests, DeepBodiesAreRefused) {
  const std::string deep = std::string(100000, '[') + "1" + std::string(100000, ']');
  const HttpError e =
      chat_refused(R"({"messages": [{"role": "user", "content": "x"}], "guided_json": {"const": )" + deep + "}}");
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("nests deeper than 256"), std::string::npos) << e.message;
}

TEST(OpenAiResponses, ShapesAsOpenAiClientsReadThem) {
  pb::Usage u;
  u.set_prompt_tokens(5);
  u.set_completion_tokens(3);
  const json c = completion("cmpl-1", 1700000000, "m", {{"abc", pb::FINISH_REASON_LENGTH}}, u);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "abc");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["usage"]["total_tokens"], 8);
  const json b = completion("cmpl-2", 1, "m", {{"x", pb::FINISH_REASON_STOP}, {"y", pb::FINISH_REASON_LENGTH}}, u);
  ASSERT_EQ(b["choices"].size(), 2u);
  EXPECT_EQ(b["choices"][1]["index"], 1);
  EXPECT_EQ(b["choices"][1]["text"], "y");
  EXPECT_EQ(b["choices"][0]["finish_reason"], "stop");
  const json chat = chat_completion("chatcmpl-1", 1, "m", {{"hi", pb::FINISH_REASON_STOP}}, u);
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "stop");
  const json chunk = chat_chunk("chatcmpl-1", 1, "m", {{"content", "x"}}, pb::FINISH_REASON_UNSPECIFIED);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(chunk["choices"][0]["delta"]["content"], "x");
  const json usage_only = usage_chunk("text_completion", "cmpl-1", 1, "m", u);
  EXPECT_TRUE(usage_only["choices"].empty());
  EXPECT_EQ(usage_only["usage"]["completion_tokens"], 3);
  EXPECT_EQ(sse(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  const json models = model_list("m", 2);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "m");
}

// logprobs: asked for as OpenAI's two endpoints ask, answered in their shapes.
TEST(OpenAiLogprobs, ParsedPerEndpointAndShaped) {
  auto c = std::get<CompletionCall>(parse_completion(R"({"prompt": ["a", "b"], "logprobs": 3})"));
  EXPECT_EQ(c.request.sampling().logprobs(), 3u);
  EXPECT_EQ(c.more.at(0).sampling().logprobs(), 3u);  // every prompt of a batch
  EXPECT_FALSE(std::get<CompletionCall>(parse_completion(R"({"prompt": "a", "logprobs": false})"))
                   .request.sampling()
                   .has_logprobs());
  EXPECT_FALSE(std::get<CompletionCall>(parse_completion(R"({"prompt": "a"})")).request.sampling().has_logprobs());
  auto chat = std::get<ChatCall>(
      parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 4})"));
  EXPECT_EQ(chat.request.sampling().logprobs(), 4u);
  chat = std::get<ChatCall>(parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})"));
  EXPECT_TRUE(chat.request.sampling().has_logprobs());
  EXPECT_EQ(chat.request.sampling().logprobs(), 0u);
  chat = std::get<ChatCall>(
      parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": false, "top_logprobs": 0})"));
  EXPECT_FALSE(chat.request.sampling().has_logprobs());

  std::vector<pb::TokenLogprob> lps(2);
  lps[0].set_token_id(7);
  lps[0].set_token("He");
  lps[0].set_logprob(-0.25f);
  auto* alt = lps[0].add_top();
  alt->set_token_id(7);
  alt->set_token("He");
  alt->set_logprob(-0.25f);
  alt = lps[0].add_top();
  alt->set_token_id(9);
  alt->set_token("\xe2");  // part of a UTF-8 character: bytes kept, text replaced when dumped
  alt->set_logprob(-2.0f);
  lps[1].set_token_id(8);
  lps[1].set_token("llo");
  lps[1].set_logprob(-1.5f);
  const json cl = completion_logprobs(lps, 10);
  EXPECT_EQ(cl["tokens"], json({"He", "llo"}));
  EXPECT_EQ(cl["token_logprobs"], json({-0.25, -1.5}));
  EXPECT_EQ(cl["text_offset"], json({10, 12}));
  EXPECT_EQ(cl["top_logprobs"][0]["He"], -0.25);
  EXPECT_EQ(cl["top_logprobs"][0].size(), 2u);
  // A piece of a character is written as its bytes; the chosen token is
  // always among the alternatives; most likely first (not sorted by key).
  EXPECT_EQ(cl["top_logprobs"][0]["bytes:\\xe2"], -2.0);
  EXPECT_EQ(cl["top_logprobs"][1].size(), 1u);
  EXPECT_EQ(cl["top_logprobs"][1]["llo"], -1.5);
  lps[1].add_top()->CopyFrom(lps[0].top(1));  // "bytes:\xe2" (-2) first, then
  auto* same = lps[1].add_top();             // another id that reads the same, less likely
  same->set_token("\xe2");
  same->set_logprob(-3.0f);
  lps[1].add_top()->set_token("Zz");
  lps[1].mutable_top(2)->set_logprob(-std::numeric_limits<float>::infinity());
  const std::string ordered = dump(completion_logprobs(lps, 0)["top_logprobs"][1]);
  EXPECT_EQ(ordered, R"({"bytes:\\xe2":-2.0,"Zz":-9999.0,"llo":-1.5})") << ordered;
  const json ch = chat_logprobs(lps);
  ASSERT_EQ(ch["content"].size(), 2u);
  EXPECT_EQ(ch["content"][0]["token"], "He");
  EXPECT_EQ(ch["content"][0]["bytes"], json({72, 101}));
  EXPECT_EQ(ch["content"][0]["top_logprobs"][1]["bytes"], json({0xe2}));
  EXPECT_EQ(ch["content"][0]["top_logprobs"][1]["token"], "bytes:\\xe2");
  EXPECT_TRUE(ch["refusal"].is_null());
  pb::Usage u;
  const json whole = completion("cmpl-1", 1, "m", {{"Hello", pb::FINISH_REASON_LENGTH, lps}, {"x", pb::FINISH_REASON_STOP}}, u);
  EXPECT_EQ(whole["choices"][0]["logprobs"]["text_offset"], json({0, 2}));
  EXPECT_TRUE(whole["choices"][1]["logprobs"].is_null());
  const json chat_whole = chat_completion("chatcmpl-1", 1, "m", {{"Hello", pb::FINISH_REASON_LENGTH, lps}}, u);
  EXPECT_EQ(chat_whole["choices"][0]["logprobs"]["content"][1]["logprob"], -1.5);
  const json chunk = completion_chunk("cmpl-1", 1, "m", "He", pb::FINISH_REASON_UNSPECIFIED, cl);
  EXPECT_EQ(chunk["choices"][0]["logprobs"]["tokens"][0], "He");
}

// Penalties and bias reach the router's request on both endpoints; neutral
// values and nulls stay unset-equivalent.
TEST(OpenAiSampling, PenaltiesAndLogitBias) {
  const auto c = completion_ok(R"({"prompt": "x", "presence_penalty": 0.5, "frequency_penalty": -1,
      "repetition_penalty": 1.3, "logit_bias": {"17": -100, "4": 2.5}, "min_p": 0.1, "min_tokens": 3})");
  const pb::SamplingParams& s = c.request.sampling();
  EXPECT_FLOAT_EQ(s.min_p(), 0.1f);
  EXPECT_EQ(completion_ok(R"({"prompt": "x", "priority": -5})").request.priority(), -5);
  const auto stops = completion_ok(R"({"prompt": "x", "stop_token_ids": [7, 9], "include_stop_str_in_output": true})");
  EXPECT_EQ(stops.request.sampling().stop_token_ids_size(), 2);
  EXPECT_TRUE(stops.request.sampling().include_stop_str_in_output());
  EXPECT_EQ(s.min_tokens(), 3u);
  EXPECT_FLOAT_EQ(s.presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(s.frequency_penalty(), -1.0f);
  EXPECT_FLOAT_EQ(s.repetition_penalty(), 1.3f);
  ASSERT_EQ(s.logit_bias_size(), 2);
  EXPECT_FLOAT_EQ(s.logit_bias().at(17), -100.0f);
  EXPECT_FLOAT_EQ(s.logit_bias().at(4), 2.5f);
  auto chat = parse_chat(R"({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 1.5,
      "logit_bias": {"3": 1}, "presence_penalty": null})");
  ASSERT_TRUE(std::holds_alternative<ChatCall>(chat)) << std::get<HttpError>(chat).message;
  const auto& cs = std::get<ChatCall>(chat).request.sampling();
  EXPECT_FLOAT_EQ(cs.frequency_penalty(), 1.5f);
  EXPECT_FALSE(cs.has_presence_penalty());
  EXPECT_EQ(cs.logit_bias().at(3), 1.0f);
  EXPECT_EQ(chat_refused(R"({"messages": [{"role": "user", "content": "x"}], "presence_penalty": -3})").param,
            "presence_penalty");
}

// echo: the prompt comes back first (max_tokens 0: only it), and with logprobs
// its tokens are scored with as many alternatives as the completion's; the
// first prompt token, conditioned on nothing, has null entries (OpenAI's shape).
TEST(OpenAiLogprobs, EchoScoresThePrompt) {
  auto c = completion_ok(R"({"prompt": [[1, 2, 3], "abc"], "echo": true, "logprobs": 2, "max_tokens": 0})");
  for (const auto* r : {&c.request, &c.more.at(0)}) {
    EXPECT_TRUE(r->sampling().echo());
    EXPECT_EQ(r->sampling().prompt_logprobs(), 2u);
    EXPECT_EQ(r->sampling().logprobs(), 2u);
    EXPECT_EQ(r->sampling().max_tokens(), 0u);
  }
  c = completion_ok(R"({"prompt": "abc", "echo": true})");
  EXPECT_TRUE(c.request.sampling().echo());
  EXPECT_FALSE(c.request.sampling().has_prompt_logprobs());
  EXPECT_EQ(c.request.sampling().max_tokens(), 16u);
  c = completion_ok(R"({"prompt": "abc", "echo": false, "logprobs": 1})");
  EXPECT_FALSE(c.request.sampling().echo());
  EXPECT_FALSE(c.request.sampling().has_prompt_logprobs());

  std::vector<pb::TokenLogprob> lps(2);
  lps[0].set_token_id(1);
  lps[0].set_token("<s>");
  lps[1].set_token_id(8);
  lps[1].set_token("Hi");
  lps[1].set_logprob(-4.0f);
  const json cl = completion_logprobs(lps, 0);
  EXPECT_EQ(cl["tokens"], json({"<s>", "Hi"}));
  EXPECT_EQ(cl["token_logprobs"], json({nullptr, -4.0}));
  EXPECT_TRUE(cl["top_logprobs"][0].is_null());
  EXPECT_EQ(cl["top_logprobs"][1]["Hi"], -4.0);
  EXPECT_EQ(cl["text_offset"], json({0, 3}));
}

// /tokenize and /detokenize in vLLM's shapes.
TEST(OpenAiTokenizer, RequestsAndAnswers) {
  auto t = parse_tokenize(R"({"model": "m", "prompt": "Hello", "add_special_tokens": false})");
  ASSERT_TRUE(std::holds_alternative<pb::TokenizeRequest>(t));
  EXPECT_EQ(std::get<pb::TokenizeRequest>(t).text(), "Hello");
  EXPECT_FALSE(std::get<pb::TokenizeRequest>(t).add_special_tokens());
  t = parse_tokenize(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                         "add_generation_prompt": false})");
  ASSERT_TRUE(std::holds_alternative<pb::TokenizeRequest>(t));
  const auto& chat = std::get<pb::TokenizeRequest>(t);
  ASSERT_EQ(chat.messages_size(), 1);
  EXPECT_EQ(chat.messages(0).content(), "Hi");
  EXPECT_FALSE(chat.add_generation_prompt());
  EXPECT_FALSE(chat.has_add_special_tokens());
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({})", "prompt"},
           {R"({"prompt": 5})", "prompt"},
           {R"({"prompt": "x", "messages": [{"role": "user", "content": "x"}]})", "prompt"},
           {R"({"messages": [{"content": "x"}]})", "messages[0].role"}}) {
    EXPECT_EQ(refused(parse_tokenize(body), body).param, param) << body;
  }
  auto d = parse_detokenize(R"({"tokens": [1, 2, 3], "skip_special_tokens": false})");
  ASSERT_TRUE(std::holds_alternative<pb::DetokenizeRequest>(d));
  EXPECT_EQ(std::get<pb::DetokenizeRequest>(d).token_ids_size(), 3);
  EXPECT_FALSE(std::get<pb::DetokenizeRequest>(d).skip_special_tokens());
  EXPECT_TRUE(std::holds_alternative<pb::DetokenizeRequest>(parse_detokenize(R"({"tokens": []})")));
  for (const char* body : {R"({})", R"({"tokens": "1 2"})", R"({"tokens": [1, -2]})"})
    EXPECT_EQ(refused(parse_detokenize(body), body).param, "tokens") << body;

  pb::TokenizeResponse r;
  r.add_token_ids(5);
  r.add_token_ids(9);
  r.set_max_context(4096);
  EXPECT_EQ(tokenize_response(r), Json::parse(R"({"count": 2, "max_model_len": 4096, "tokens": [5, 9]})"));
  pb::DetokenizeResponse dr;
  dr.set_text("Hi");
  EXPECT_EQ(detokenize_response(dr), Json::parse(R"({"prompt": "Hi"})"));
}

TEST(OpenAiErrors, GrpcCodesBecomeHttpStatuses) {
  const std::pair<grpc::StatusCode, int> cases[] = {
      {grpc::StatusCode::INVALID_ARGUMENT, 400}, {grpc::StatusCode::FAILED_PRECONDITION, 400},
      {grpc::StatusCode::NOT_FOUND, 404},        {grpc::StatusCode::RESOURCE_EXHAUSTED, 429},
      {grpc::StatusCode::UNAVAILABLE, 503},      {grpc::StatusCode::DEADLINE_EXCEEDED, 504},
      {grpc::StatusCode::INTERNAL, 500},        {grpc::StatusCode::CANCELLED, 503},
  };
  for (auto [code, http] : cases) {
    const HttpError e = from_grpc(grpc::Status(code, "why"));
    EXPECT_EQ(e.status, http) << static_cast<int>(code);
    EXPECT_EQ(e.message, "why");
  }
  EXPECT_EQ(from_grpc(grpc::Status(grpc::StatusCode::NOT_FOUND, "m")).code, "model_not_found");
  EXPECT_EQ(from_grpc(grpc::Status(grpc::StatusCode::CANCELLED, "shutting down")).status, 503);
  // A message that is not valid UTF-8 (relayed from elsewhere) is replaced, not thrown.
  HttpError bad;
  bad.message = "bad \xff byte";
  const std::string bad_utf8 = error_body(bad);
  EXPECT_NE(bad_utf8.find("bad "), std::string::npos);
  EXPECT_EQ(error_event(bad).rfind("data: {\"error\"", 0), 0u);
  const json body = json::parse(error_body({.status = 400, .type = "invalid_request_error", .message = "n: no",
                                            .param = "n", .code = ""}));
  EXPECT_EQ(body["error"]["message"], "n: no");
  EXPECT_EQ(body["error"]["param"], "n");
  EXPECT_TRUE(body["error"]["code"].is_null());
}

}  // namespace
}  // namespace tandem::router::openai
