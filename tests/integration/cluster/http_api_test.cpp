// The OpenAI-compatible HTTP API (router.http_listen) of a real cluster,
// spoken to over real HTTP: the same tokens as the gRPC API, streamed as
// server-sent events, errors in OpenAI's shape with fitting statuses, and a
// client that hangs up mid-stream frees its sequence.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster_harness.h"
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/engine/engine.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/guided.h"
#include "tandem/model/weights.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::Cluster;
using testing::cluster_model;
using testing::generate;
using testing::greedy;

class HttpApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster(cluster_model("tiny-mixtral"),
                           {.attention_nodes = 1,
                            .expert_nodes = 2,
                            .micro_batches = 2,
                            .http = true,
                            // Scored prompts come a few rows a step, in several events.
                            .attention_tuning = "max_prompt_logprob_rows: 3",
                            .router_tuning = "reasoning_parser: qwen3"});
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static httplib::Client client() {
    httplib::Client c("127.0.0.1", cluster_->http_port());
    c.set_read_timeout(60, 0);
    return c;
  }
  static json post_ok(const std::string& path, const json& body) {
    auto res = client().Post(path, body.dump(), "application/json");
    EXPECT_TRUE(res) << path << ": no response (" << httplib::to_string(res.error()) << ")";
    if (!res) return {};
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    return json::parse(res->body);
  }
  // The data of each server-sent event of a streamed answer, in order.
  static std::vector<std::string> events(const std::string& path, const json& body) {
    auto res = client().Post(path, body.dump(), "application/json");
    EXPECT_TRUE(res) << path;
    if (!res) return {};
    EXPECT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
    std::vector<std::string> out;
    size_t at = 0;
    while (at < res->body.size()) {
      const size_t end = res->body.find("\n\n", at);
      EXPECT_NE(end, std::string::npos) << "an unterminated event: " << res->body.substr(at);
      if (end == std::string::npos) break;
      const std::string event = res->body.substr(at, end - at);
      EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
      out.push_back(event.substr(6));
      at = end + 2;
    }
    return out;
  }
  static Cluster* cluster_;
};
Cluster* HttpApi::cluster_ = nullptr;

TEST_F(HttpApi, CompletionsGiveTheGrpcTokensWholeAndStreamed) {
  ASSERT_TRUE(cluster_->ready().is_ok()) << cluster_->ready().to_string();
  const auto want = generate(cluster_->stub(), greedy("The quick brown fox", 12));
  ASSERT_TRUE(want.status.ok()) << want.status.error_message();

  const json whole = post_ok("/v1/completions", {{"prompt", "The quick brown fox"}, {"max_tokens", 12},
                                                 {"temperature", 0}});
  EXPECT_EQ(whole["object"], "text_completion");
  EXPECT_EQ(whole["choices"][0]["text"], want.text);
  EXPECT_EQ(whole["choices"][0]["finish_reason"], want.finish == tandem::v1::FINISH_REASON_STOP ? "stop" : "length");
  EXPECT_EQ(whole["usage"]["prompt_tokens"], want.prompt_tokens);
  EXPECT_EQ(whole["usage"]["completion_tokens"], want.completion_tokens);
  EXPECT_EQ(whole["id"].get<std::string>().rfind("cmpl-", 0), 0u);

  const auto ev = events("/v1/completions", {{"prompt", "The quick brown fox"}, {"max_tokens", 12}, {"temperature", 0},
                                             {"stream", true}, {"stream_options", {{"include_usage", true}}}});
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string text;
  json finish;
  for (size_t i = 0; i + 2 < ev.size(); ++i) {
    const json chunk = json::parse(ev[i]);
    EXPECT_EQ(chunk["id"], json::parse(ev[0])["id"]) << "one id per stream";
    text += chunk["choices"][0]["text"].get<std::string>();
    finish = chunk["choices"][0]["finish_reason"];
    if (i + 3 < ev.size()) {
      EXPECT_TRUE(finish.is_null()) << "finish_reason before the last chunk";
    }
  }
  EXPECT_EQ(text, want.text);
  EXPECT_EQ(finish, whole["choices"][0]["finish_reason"]);
  const json usage = json::parse(ev[ev.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], want.completion_tokens);

  // Token ids as the prompt give the same continuation.
  auto ck = model::Checkpoint::open(cluster_model("tiny-mixtral"));
  ASSERT_TRUE(ck.is_ok());
  auto ids = ck->tokenizer->encode("The quick brown fox", true);
  ASSERT_TRUE(ids.is_ok());
  const json by_ids =
      post_ok("/v1/completions", json{{"prompt", json(*ids)}, {"max_tokens", 12}, {"temperature", 0}});
  EXPECT_EQ(by_ids["choices"][0]["text"], want.text);
}

// A batch of prompts in one request: one choice per prompt, each the answer
// that prompt gets alone, usage summed.
TEST_F(HttpApi, BatchedPromptsAnswerEachAsAlone) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const std::vector<std::string> prompts = {"first of three", "the second", "and a third one"};
  std::vector<testing::Reply> alone;
  for (const auto& p : prompts) {
    alone.push_back(generate(cluster_->stub(), greedy(p, 6)));
    ASSERT_TRUE(alone.back().status.ok());
  }
  const json batch = post_ok("/v1/completions", {{"prompt", prompts}, {"max_tokens", 6}, {"temperature", 0}});
  ASSERT_EQ(batch["choices"].size(), prompts.size()) << batch.dump();
  uint32_t completion_tokens = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(batch["choices"][i]["index"], i);
    EXPECT_EQ(batch["choices"][i]["text"], alone[i].text) << "prompt " << i;
    completion_tokens += alone[i].completion_tokens;
  }
  EXPECT_EQ(batch["usage"]["completion_tokens"], completion_tokens);
  // n samples of each prompt, prompt-major: greedy samples are the greedy answer.
  const json samples = post_ok("/v1/completions", {{"prompt", {prompts[0], prompts[1]}}, {"n", 2}, {"max_tokens", 6},
                                                   {"temperature", 0}});
  ASSERT_EQ(samples["choices"].size(), 4u) << samples.dump();
  for (size_t c = 0; c < 4; ++c) EXPECT_EQ(samples["choices"][c]["text"], alone[c / 2].text) << "choice " << c;
  const json messages = json::array({{{"role", "user"}, {"content", "sample me"}}});
  const json chats = post_ok("/v1/chat/completions", {{"messages", messages}, {"n", 3}, {"max_tokens", 4},
                                                      {"temperature", 1.0}, {"seed", 3}});
  ASSERT_EQ(chats["choices"].size(), 3u) << chats.dump();
  EXPECT_EQ(chats["object"], "chat.completion");
  EXPECT_EQ(chats["choices"][2]["index"], 2);
  // One bad prompt fails the batch, naming it.
  auto bad = client().Post("/v1/completions", json{{"prompt", {"fine", std::string(100000, 'x')}}}.dump(),
                           "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  EXPECT_NE(bad->body.find("prompt 1: "), std::string::npos) << bad->body;
}

TEST_F(HttpApi, ChatCompletionsApplyTheTemplateAsGrpcChat) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const auto grpc_chat = testing::chat(cluster_->stub(), testing::greedy_chat("Tell me about ping-pong pipelines", 10));
  ASSERT_TRUE(grpc_chat.status.ok()) << grpc_chat.status.error_message();
  const std::string want = grpc_chat.text;

  const json messages = json::array({{{"role", "user"}, {"content", "Tell me about ping-pong pipelines"}}});
  const json whole = post_ok("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 10}, {"temperature", 0}});
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(whole["choices"][0]["message"]["content"], want);

  const auto ev = events("/v1/chat/completions",
                         {{"messages", messages}, {"max_tokens", 10}, {"temperature", 0}, {"stream", true}});
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.back(), "[DONE]");
  const json first = json::parse(ev[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (size_t i = 1; i + 1 < ev.size(); ++i) {
    const json delta = json::parse(ev[i])["choices"][0]["delta"];
    if (delta.contains("content")) text += delta["content"].get<std::string>();
  }
  EXPECT_EQ(text, want);
  EXPECT_FALSE(json::parse(ev[ev.size() - 2])["choices"][0]["finish_reason"].is_null());
}

// Several choices streamed (n > 1, a batch of prompts): each choice's events
// carry its index, and joined they give the whole answer's choices, finish
// reasons and usage (sampled with seeds, so both runs draw the same).
TEST_F(HttpApi, SeveralChoicesStreamUnderTheirIndex) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  for (const bool chat : {false, true}) {
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    json body = {{"max_tokens", 6}, {"temperature", 1.0}, {"seed", 11}, {"n", 2}};
    if (chat) body["messages"] = json::array({{{"role", "user"}, {"content", "Pick a word"}}});
    else body["prompt"] = json::array({"one two", "three four five"});
    const size_t choices = chat ? 2 : 4;
    const json whole = post_ok(path, body);
    ASSERT_EQ(whole["choices"].size(), choices) << whole.dump();
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    std::vector<std::string> text(choices), finish(choices);
    std::vector<int> roles(choices, 0);
    json usage;
    bool done = false;
    for (const std::string& e : events(path, body)) {
      if (e == "[DONE]") {
        done = true;
        break;
      }
      const json chunk = json::parse(e);
      ASSERT_TRUE(chunk.contains("choices")) << e;  // not an error event
      if (chunk.contains("usage") && !chunk["usage"].is_null()) usage = chunk["usage"];
      for (const json& c : chunk["choices"]) {
        const size_t i = c["index"].get<size_t>();
        ASSERT_LT(i, choices) << e;
        if (chat) {
          if (c["delta"].contains("role")) ++roles[i];
          if (c["delta"].contains("content")) text[i] += c["delta"]["content"].get<std::string>();
        } else {
          text[i] += c["text"].get<std::string>();
        }
        if (!c["finish_reason"].is_null()) finish[i] = c["finish_reason"];
      }
    }
    for (size_t i = 0; i < choices; ++i) {
      const json& want = whole["choices"][i];
      EXPECT_EQ(text[i], chat ? want["message"]["content"].get<std::string>() : want["text"].get<std::string>())
          << path << " choice " << i;
      EXPECT_EQ(finish[i], want["finish_reason"]) << path << " choice " << i;
      if (chat) {
        EXPECT_EQ(roles[i], 1) << "choice " << i;
      }
    }
    EXPECT_EQ(usage, whole["usage"]) << path;
    EXPECT_TRUE(done) << path;
  }
}

TEST_F(HttpApi, ErrorsHaveOpenAiShapeAndFittingStatus) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  struct Case {
    std::string path, body;
    int status;
    std::string param;  // "" : null
    std::string says;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{not json", 400, "", "not valid JSON"},
      {"/v1/completions", R"({"prompt": "x", "suffix": "y"})", 400, "suffix", "not supported"},
      {"/v1/completions", R"({"prompt": "x", "n": 0, "stream": true})", 400, "n", "n"},
      {"/v1/completions", R"({"prompt": "x", "model": "gpt-17"})", 404, "", "gpt-17"},
      {"/v1/completions", R"({"prompt": "x", "temperature": -1})", 400, "temperature", "outside"},
      // Refused by the router (the prompt leaves no room in the context), through the gateway.
      {"/v1/completions", json{{"prompt", std::string(100000, 'x')}}.dump(), 400, "", "prompt"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "messages", "non-empty"},
  };
  for (const Case& k : cases) {
    auto res = client().Post(k.path, k.body, "application/json");
    ASSERT_TRUE(res) << k.path;
    EXPECT_EQ(res->status, k.status) << k.body.substr(0, 80) << " -> " << res->body;
    const json body = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << res->body;
    EXPECT_NE(body["error"]["message"].get<std::string>().find(k.says), std::string::npos) << res->body;
    if (k.param.empty())
      EXPECT_TRUE(body["error"]["param"].is_null()) << res->body;
    else
      EXPECT_EQ(body["error"]["param"], k.param) << res->body;
  }
  // A streamed request the router refuses still gets its status, not a 200 stream.
  auto refused = client().Post("/v1/completions", R"({"prompt": "x", "model": "gpt-17", "stream": true})",
                               "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 404) << refused->body;
  auto nowhere = client().Get("/v1/engines");
  ASSERT_TRUE(nowhere);
  EXPECT_EQ(nowhere->status, 404);
  EXPECT_TRUE(json::parse(nowhere->body).contains("error"));

  auto models = client().Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  const std::string dir = cluster_model("tiny-mixtral");
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], dir.substr(dir.find_last_of('/') + 1));  // served_name
  auto health = client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200) << health->body;
}

// A client that hangs up mid-stream: the router's stream is cancelled and the
// attention node frees the sequence's KV blocks.
TEST_F(HttpApi, HangingUpMidStreamFreesTheSequence) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  auto stub = tandem::internal::v1::AttentionNode::NewStub(
      grpc::CreateChannel(cluster_->attention_address(0), grpc::InsecureChannelCredentials()));
  auto load = [&] {
    grpc::ClientContext ctx;
    tandem::internal::v1::LoadReply rp;
    EXPECT_TRUE(stub->Load(&ctx, tandem::internal::v1::LoadRequest{}, &rp).ok());
    return rp;
  };
  const int64_t steps_before = load().pipeline().steps();
  int chunks = 0;
  httplib::Client c = client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Content-Type", "application/json");
  req.body = json{{"prompt", "a long one"}, {"max_tokens", 2000}, {"ignore_eos", true}, {"stream", true}}.dump();
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };  // then hang up
  auto res = c.send(req);
  EXPECT_FALSE(res);  // the read was abandoned
  EXPECT_GE(chunks, 1);
  bool freed = false;
  int64_t steps_after = 0;
  for (int tries = 0; tries < 100 && !freed; ++tries) {
    const auto rp = load();
    freed = rp.free_blocks() == rp.total_blocks() && rp.running() == 0;
    steps_after = rp.pipeline().steps();
    if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(freed) << "the attention node still holds the abandoned sequence";
  // Freed because it was cancelled, not because it ran its 2000 tokens out
  // (one step per token for a lone sequence).
  EXPECT_LT(steps_after - steps_before, 1000) << "the abandoned sequence ran on";
}

// Log-probabilities: over gRPC one per token with its alternatives; over
// HTTP the same numbers in OpenAI's completion and chat shapes, whole and
// streamed; out-of-range asks refused naming the field.
TEST_F(HttpApi, LogprobsOverGrpcAndHttp) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  auto req = greedy("The quick brown fox", 6);
  req.mutable_sampling()->set_logprobs(2);
  req.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext ctx;
  auto reader = cluster_->stub().Generate(&ctx, req);
  tandem::v1::GenerateResponse r;
  std::vector<tandem::v1::TokenLogprob> lps;
  std::vector<uint32_t> ids;
  while (reader->Read(&r)) {
    EXPECT_EQ(r.logprobs_size(), r.token_ids_size());
    ids.insert(ids.end(), r.token_ids().begin(), r.token_ids().end());
    lps.insert(lps.end(), r.logprobs().begin(), r.logprobs().end());
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(lps.size(), 6u);
  for (size_t i = 0; i < lps.size(); ++i) {
    EXPECT_EQ(lps[i].token_id(), ids[i]);
    EXPECT_FALSE(lps[i].token().empty());
    EXPECT_LE(lps[i].logprob(), 0.0f);
    ASSERT_EQ(lps[i].top_size(), 2);
    EXPECT_EQ(lps[i].top(0).token_id(), ids[i]);  // greedy: the most likely token
    EXPECT_EQ(lps[i].top(0).logprob(), lps[i].logprob());
    EXPECT_GE(lps[i].top(0).logprob(), lps[i].top(1).logprob());
  }
  auto none = generate(cluster_->stub(), greedy("The quick brown fox", 2));
  ASSERT_TRUE(none.status.ok());
  auto too_many = greedy("x", 2);
  too_many.mutable_sampling()->set_logprobs(21);
  const auto refused = generate(cluster_->stub(), too_many);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("sampling.logprobs"), std::string::npos);

  const json body = {{"prompt", "The quick brown fox"}, {"max_tokens", 6}, {"temperature", 0},
                     {"ignore_eos", true}, {"logprobs", 2}};
  const json whole = post_ok("/v1/completions", body);
  const json& c = whole["choices"][0]["logprobs"];
  ASSERT_EQ(c["token_logprobs"].size(), 6u) << whole.dump();
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_NEAR(c["token_logprobs"][i].get<double>(), lps[i].logprob(), 1e-6);
    EXPECT_EQ(c["top_logprobs"][i].size(), 2u);
  }
  EXPECT_EQ(c["text_offset"][0], 0);
  json streamed_body = body;
  streamed_body["stream"] = true;
  std::vector<double> streamed;
  for (const std::string& e : events("/v1/completions", streamed_body)) {
    if (e == "[DONE]") continue;
    const json chunk = json::parse(e);
    const json& l = chunk["choices"][0]["logprobs"];
    if (!l.is_null())
      for (const auto& v : l["token_logprobs"]) streamed.push_back(v.get<double>());
  }
  ASSERT_EQ(streamed.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(streamed[i], lps[i].logprob(), 1e-6);

  const json chat = post_ok("/v1/chat/completions",
                            {{"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                             {"max_tokens", 4},
                             {"temperature", 0},
                             {"logprobs", true},
                             {"top_logprobs", 3}});
  const json& content = chat["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), chat["usage"]["completion_tokens"].get<size_t>()) << chat.dump();
  for (const auto& t : content) {
    EXPECT_EQ(t["top_logprobs"].size(), 3u);
    EXPECT_TRUE(t["bytes"].is_array());
    EXPECT_EQ(t["top_logprobs"][0]["logprob"], t["logprob"]);
  }
  EXPECT_TRUE(post_ok("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                               {"max_tokens", 2}})["choices"][0]["logprobs"]
                  .is_null());
  auto res = client().Post("/v1/completions", json{{"prompt", "x"}, {"logprobs", 6}}.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(json::parse(res->body)["error"]["param"], "logprobs");
}

// Loglikelihood scoring as evaluation harnesses ask for it (lm-eval's
// local-completions: echo, logprobs, max_tokens 0): the prompt comes back as
// sent, its tokens scored as the single-process engine scores them, the
// first with nulls; over gRPC the same numbers in prompt_logprobs. With
// tokens to generate, the prompt's entries come before the completion's,
// whole and streamed. Chat has no echo.
TEST_F(HttpApi, EchoScoresThePromptAsEvaluationHarnessesAsk) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const std::string text = "The quick brown fox jumps over the lazy dog";
  auto ck = model::Checkpoint::open(cluster_model("tiny-mixtral"));
  ASSERT_TRUE(ck.is_ok());
  auto w = model::ModelWeights::load(ck->config, *ck->weights);
  ASSERT_TRUE(w.is_ok());
  auto eng = engine::Engine::create(ck->config, **w, {});
  ASSERT_TRUE(eng.is_ok());
  engine::GenerationRequest ref_req;
  ref_req.prompt = *ck->tokenizer->encode(text, true);
  ref_req.prompt_logprobs = 2;
  ref_req.max_tokens = 0;
  auto ref = (*eng)->generate({ref_req});
  ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
  const auto& want = (*ref)[0].prompt_logprobs;
  const size_t n = ref_req.prompt.size();
  ASSERT_EQ(want.size(), n - 1);

  tandem::v1::GenerateRequest req;
  req.set_text(text);
  req.mutable_sampling()->set_max_tokens(0);
  req.mutable_sampling()->set_prompt_logprobs(2);
  req.mutable_sampling()->set_echo(true);
  grpc::ClientContext ctx;
  auto reader = cluster_->stub().Generate(&ctx, req);
  tandem::v1::GenerateResponse r;
  std::vector<tandem::v1::TokenLogprob> prompt_lps;
  std::string echoed;
  tandem::v1::GenerateResponse last;
  while (reader->Read(&r)) {
    EXPECT_EQ(r.token_ids_size(), 0);
    echoed += r.text();
    prompt_lps.insert(prompt_lps.end(), r.prompt_logprobs().begin(), r.prompt_logprobs().end());
    last = r;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(echoed, text);
  EXPECT_EQ(last.finish_reason(), tandem::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 0u);
  ASSERT_EQ(prompt_lps.size(), n);
  EXPECT_FALSE(prompt_lps[0].has_logprob());
  EXPECT_EQ(prompt_lps[0].token_id(), static_cast<uint32_t>(ref_req.prompt[0]));
  for (size_t i = 1; i < n; ++i) {
    EXPECT_EQ(prompt_lps[i].token_id(), static_cast<uint32_t>(ref_req.prompt[i]));
    EXPECT_NEAR(prompt_lps[i].logprob(), want[i - 1].logprob, 1e-4) << "prompt token " << i;
    ASSERT_EQ(prompt_lps[i].top_size(), 2);
    EXPECT_NEAR(prompt_lps[i].top(0).logprob(), want[i - 1].top[0].second, 1e-4);
  }
  auto over = req;
  over.mutable_sampling()->set_prompt_logprobs(21);
  EXPECT_EQ(generate(cluster_->stub(), over).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Score only, over HTTP.
  const json scored = post_ok("/v1/completions", {{"prompt", text}, {"echo", true}, {"logprobs", 1}, {"max_tokens", 0}});
  const json& choice = scored["choices"][0];
  EXPECT_EQ(choice["text"], text);
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_EQ(scored["usage"]["completion_tokens"], 0);
  EXPECT_EQ(scored["usage"]["prompt_tokens"], n);
  const json& l = choice["logprobs"];
  ASSERT_EQ(l["token_logprobs"].size(), n) << scored.dump();
  EXPECT_TRUE(l["token_logprobs"][0].is_null());
  EXPECT_TRUE(l["top_logprobs"][0].is_null());
  for (size_t i = 1; i < n; ++i) {
    EXPECT_NEAR(l["token_logprobs"][i].get<double>(), want[i - 1].logprob, 1e-4) << "prompt token " << i;
    EXPECT_GE(l["top_logprobs"][i].size(), 1u);
  }

  // Scored and continued: the prompt's entries, then the completion's; the
  // text is the prompt and then what a plain request generates.
  const json plain = post_ok("/v1/completions", {{"prompt", text}, {"max_tokens", 3}, {"temperature", 0},
                                                 {"ignore_eos", true}});
  json body = {{"prompt", text}, {"echo", true}, {"logprobs", 1}, {"max_tokens", 3}, {"temperature", 0},
               {"ignore_eos", true}};
  const json both = post_ok("/v1/completions", body);
  EXPECT_EQ(both["choices"][0]["text"], text + plain["choices"][0]["text"].get<std::string>());
  ASSERT_EQ(both["choices"][0]["logprobs"]["token_logprobs"].size(), n + 3);
  EXPECT_NEAR(both["choices"][0]["logprobs"]["token_logprobs"][n - 1].get<double>(), want[n - 2].logprob, 1e-4);
  body["stream"] = true;
  std::string streamed_text;
  size_t streamed_entries = 0;
  for (const std::string& e : events("/v1/completions", body)) {
    if (e == "[DONE]") continue;
    const json chunk = json::parse(e);
    streamed_text += chunk["choices"][0]["text"].get<std::string>();
    const json& cl = chunk["choices"][0]["logprobs"];
    if (!cl.is_null()) streamed_entries += cl["token_logprobs"].size();
  }
  EXPECT_EQ(streamed_text, both["choices"][0]["text"]);
  EXPECT_EQ(streamed_entries, n + 3);

  // Echo alone of token ids: the prompt decoded, nothing computed.
  json ids = json::array();
  for (int32_t t : ref_req.prompt) ids.push_back(t);
  const json echo_only = post_ok("/v1/completions", {{"prompt", ids}, {"echo", true}, {"max_tokens", 0}});
  EXPECT_EQ(echo_only["choices"][0]["text"], ck->tokenizer->decode(ref_req.prompt, true));
  EXPECT_TRUE(echo_only["choices"][0]["logprobs"].is_null());

  auto res = client().Post("/v1/chat/completions",
                           json{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"echo", true}}.dump(),
                           "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(json::parse(res->body)["error"]["param"], "echo");
}

// Bias and penalties reach the node that samples: a +100 bias forces its
// token, and with two tokens forced equally each penalty on repeats makes the
// stream alternate between them (the biases dwarf the model's own logits, so
// the outcome is the penalty's alone). Over HTTP with OpenAI's field names;
// out-of-range values refused naming the field.
TEST_F(HttpApi, LogitBiasAndPenaltiesReachTheSampler) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const int32_t x = 100, y = 101;
  auto request = [&](std::initializer_list<std::pair<const uint32_t, float>> bias) {
    auto req = greedy("Bias me", 6);
    req.mutable_sampling()->set_ignore_eos(true);
    for (const auto& [t, b] : bias) (*req.mutable_sampling()->mutable_logit_bias())[t] = b;
    return req;
  };
  const auto forced = generate(cluster_->stub(), request({{x, 100.0f}}));
  ASSERT_TRUE(forced.status.ok()) << forced.status.error_message();
  EXPECT_EQ(forced.tokens, std::vector<int32_t>(6, x));
  for (const char* penalty : {"presence", "frequency", "repetition"}) {
    SCOPED_TRACE(penalty);
    auto req = request({{x, 100.0f}, {y, 100.0f}});
    auto* sp = req.mutable_sampling();
    if (penalty[0] == 'p') sp->set_presence_penalty(2.0f);
    if (penalty[0] == 'f') sp->set_frequency_penalty(2.0f);
    if (penalty[0] == 'r') sp->set_repetition_penalty(100.0f);
    const auto r = generate(cluster_->stub(), req);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_GE(r.tokens.size(), 2u);
    EXPECT_TRUE(r.tokens[0] == x || r.tokens[0] == y) << r.tokens[0];
    EXPECT_EQ(r.tokens[1], r.tokens[0] == x ? y : x) << "the penalty did not move the second token";
  }
  auto out_of_vocab = request({{1u << 30, 1.0f}});
  const auto refused = generate(cluster_->stub(), out_of_vocab);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("sampling.logit_bias"), std::string::npos);
  auto bad_penalty = request({});
  bad_penalty.mutable_sampling()->set_frequency_penalty(3.0f);
  EXPECT_EQ(generate(cluster_->stub(), bad_penalty).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  const json whole = post_ok("/v1/completions", {{"prompt", "Bias me"}, {"max_tokens", 6}, {"temperature", 0},
                                                 {"ignore_eos", true},
                                                 {"logit_bias", {{std::to_string(x), 100}}},
                                                 {"presence_penalty", 0}, {"frequency_penalty", 0}});
  EXPECT_EQ(whole["choices"][0]["text"], forced.text) << "the bias did not reach the sampler over HTTP";
  EXPECT_NE(post_ok("/v1/completions", {{"prompt", "Bias me"}, {"max_tokens", 6}, {"temperature", 0},
                                        {"ignore_eos", true}})["choices"][0]["text"],
            forced.text);
  auto res = client().Post("/v1/completions",
                           json{{"prompt", "x"}, {"logit_bias", {{"999999999", 5}}}}.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(json::parse(res->body)["error"]["message"].get<std::string>().find("logit_bias"), std::string::npos);
}

// min_tokens: neither a stop token (node) nor a stop string (router) ends
// the answer before that many tokens; min_p reaches the sampler (at 1 a
// sampled request is greedy).
TEST_F(HttpApi, MinTokensAndMinPReachTheCluster) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  auto req = greedy("Minimum lengths", 8);
  req.mutable_sampling()->set_ignore_eos(true);
  const auto plain = generate(cluster_->stub(), req);
  ASSERT_TRUE(plain.status.ok());
  ASSERT_EQ(plain.tokens.size(), 8u);
  auto by_token = req;
  by_token.mutable_sampling()->add_stop_token_ids(static_cast<uint32_t>(plain.tokens[0]));
  EXPECT_EQ(generate(cluster_->stub(), by_token).tokens.size(), 1u);
  by_token.mutable_sampling()->set_min_tokens(3);
  const auto held = generate(cluster_->stub(), by_token);
  ASSERT_TRUE(held.status.ok()) << held.status.error_message();
  ASSERT_GE(held.tokens.size(), 3u);
  EXPECT_NE(held.tokens[0], plain.tokens[0]);

  const json first = post_ok("/v1/completions", {{"prompt", "Minimum lengths"}, {"max_tokens", 1}, {"temperature", 0}});
  const std::string stop = first["choices"][0]["text"];
  ASSERT_FALSE(stop.empty());
  json body = {{"prompt", "Minimum lengths"}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true},
               {"stop", stop}};
  EXPECT_EQ(post_ok("/v1/completions", body)["usage"]["completion_tokens"], 1);
  body["include_stop_str_in_output"] = true;
  EXPECT_EQ(post_ok("/v1/completions", body)["choices"][0]["text"], stop);
  body.erase("include_stop_str_in_output");
  body["min_tokens"] = 1;  // the first token's text may not end the answer
  EXPECT_GE(post_ok("/v1/completions", body)["usage"]["completion_tokens"].get<int>(), 2);
  body["min_tokens"] = 4;
  EXPECT_GE(post_ok("/v1/completions", body)["usage"]["completion_tokens"].get<int>(), 4);

  auto top_only = greedy("Minimum lengths", 8);
  top_only.mutable_sampling()->set_ignore_eos(true);
  top_only.mutable_sampling()->set_temperature(1.0f);
  top_only.mutable_sampling()->set_min_p(1.0f);
  EXPECT_EQ(generate(cluster_->stub(), top_only).tokens, plain.tokens);
  auto too_many = req;
  too_many.mutable_sampling()->set_min_tokens(9);
  EXPECT_EQ(generate(cluster_->stub(), too_many).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  auto bad_stop = req;
  bad_stop.mutable_sampling()->add_stop_token_ids(1u << 30);
  const auto refused = generate(cluster_->stub(), bad_stop);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("sampling.stop_token_ids"), std::string::npos);
}

// `tandem client --score` prints every prompt token's log-probability (the
// first without one) and the log-likelihood they sum to, as gRPC gives them.
TEST_F(HttpApi, ClientScoresAPrompt) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const std::string text = "Score me with the command line";
  tandem::v1::GenerateRequest req;
  req.set_text(text);
  req.mutable_sampling()->set_max_tokens(0);
  req.mutable_sampling()->set_prompt_logprobs(0);
  grpc::ClientContext ctx;
  auto reader = cluster_->stub().Generate(&ctx, req);
  tandem::v1::GenerateResponse r;
  double total = 0;
  size_t entries = 0;
  while (reader->Read(&r))
    for (const auto& lp : r.prompt_logprobs()) {
      ++entries;
      total += lp.has_logprob() ? lp.logprob() : 0.0;
    }
  ASSERT_TRUE(reader->Finish().ok());
  int rc = 0;
  const std::string out = testing::shell(
      testing::tandem_bin() + " client --server " + cluster_->router_address() + " --prompt '" + text + "' --score", rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(static_cast<size_t>(std::count(out.begin(), out.end(), '\n')), entries + 1) << out;
  const size_t at = out.find("log-likelihood ");
  ASSERT_NE(at, std::string::npos) << out;
  EXPECT_NEAR(std::stod(out.substr(at + 15)), total, 1e-3) << out;
  EXPECT_NE(out.find("over " + std::to_string(entries - 1) + " tokens, perplexity "), std::string::npos) << out;
}

// The tokenizer routes count what Generate and Chat would: the token ids of
// a text prompt, and of a conversation through the chat template; decoding
// gives the text back. Over gRPC and over HTTP (vLLM's /tokenize, /detokenize).
TEST_F(HttpApi, TokenizeCountsWhatGenerationSees) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const std::string text = "Count these tokens, please.";
  const auto gen = generate(cluster_->stub(), greedy(text, 1));
  ASSERT_TRUE(gen.status.ok());
  tandem::v1::TokenizeRequest tr;
  tr.set_text(text);
  tandem::v1::TokenizeResponse tk;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(cluster_->stub().Tokenize(&ctx, tr, &tk).ok());
  }
  EXPECT_EQ(static_cast<uint32_t>(tk.token_ids_size()), gen.prompt_tokens);
  EXPECT_EQ(tk.tokens_size(), tk.token_ids_size());
  EXPECT_GT(tk.max_context(), 0u);
  tandem::v1::DetokenizeRequest dr;
  dr.mutable_token_ids()->CopyFrom(tk.token_ids());
  tandem::v1::DetokenizeResponse dt;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(cluster_->stub().Detokenize(&ctx, dr, &dt).ok());
  }
  EXPECT_EQ(dt.text(), text);
  {
    grpc::ClientContext ctx;
    tandem::v1::TokenizeRequest empty;
    EXPECT_EQ(cluster_->stub().Tokenize(&ctx, empty, &tk).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  dr.add_token_ids(1u << 30);
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(cluster_->stub().Detokenize(&ctx, dr, &dt).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }

  const json counted = post_ok("/tokenize", {{"prompt", text}});
  EXPECT_EQ(counted["count"], tk.token_ids_size());
  EXPECT_EQ(counted["tokens"].size(), static_cast<size_t>(tk.token_ids_size()));
  EXPECT_EQ(post_ok("/detokenize", {{"tokens", counted["tokens"]}})["prompt"], text);
  const json messages = {{{"role", "user"}, {"content", "Hello there"}}};
  const json chat = post_ok("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 1}});
  const json chat_tokens = post_ok("/tokenize", {{"messages", messages}});
  EXPECT_EQ(chat_tokens["count"], chat["usage"]["prompt_tokens"]);
  // The template's special tokens are skipped unless asked for.
  const std::string plain = post_ok("/detokenize", {{"tokens", chat_tokens["tokens"]}})["prompt"];
  const std::string raw =
      post_ok("/detokenize", {{"tokens", chat_tokens["tokens"]}, {"skip_special_tokens", false}})["prompt"];
  EXPECT_NE(plain.find("Hello there"), std::string::npos);
  EXPECT_GT(raw.size(), plain.size()) << raw;
  auto res = client().Post("/tokenize", json{{"prompt", "x"}, {"model", "other"}}.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  res = client().Post("/detokenize", json{{"tokens", "x"}}.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
}

// GET /metrics: Prometheus text of what the router answered, whichever API
// a request came through; read before and after, so other tests' traffic in
// the same process does not matter.
TEST_F(HttpApi, MetricsCountWhatTheRouterAnswered) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  auto scrape = [] {
    auto res = client().Get("/metrics");
    EXPECT_TRUE(res);
    if (!res) return std::map<std::string, double>{};
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->get_header_value("Content-Type").rfind("text/plain", 0), 0u);
    std::map<std::string, double> values;  // "name{labels}" -> value, comments skipped
    std::istringstream in(res->body);
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      const size_t space = line.rfind(' ');
      values[line.substr(0, space)] = std::stod(line.substr(space + 1));
    }
    return values;
  };
  auto before = scrape();
  const json whole = post_ok("/v1/completions", {{"prompt", "count me"}, {"max_tokens", 5}, {"temperature", 0},
                                                 {"ignore_eos", true}});
  const auto ev = events("/v1/completions", {{"prompt", "count me too"}, {"max_tokens", 4}, {"temperature", 0},
                                             {"ignore_eos", true}, {"stream", true}});
  ASSERT_FALSE(ev.empty());
  const auto grpc_reply = generate(cluster_->stub(), greedy("and over gRPC", 3));
  ASSERT_TRUE(grpc_reply.status.ok());
  auto too_long = client().Post("/v1/completions", json{{"prompt", std::string(100000, 'x')}}.dump(), "application/json");
  ASSERT_TRUE(too_long);
  EXPECT_EQ(too_long->status, 400);
  auto after = scrape();
  auto delta = [&](const std::string& key) { return after[key] - before[key]; };
  EXPECT_EQ(delta("tandem_requests_total{code=\"OK\"}"), 3);
  EXPECT_EQ(delta("tandem_requests_total{code=\"INVALID_ARGUMENT\"}"), 1);
  EXPECT_EQ(delta("tandem_generation_tokens_total"), 5 + 4 + grpc_reply.completion_tokens);
  EXPECT_EQ(delta("tandem_requests_finished_total{reason=\"length\"}"),
            2 + (grpc_reply.finish == tandem::v1::FINISH_REASON_LENGTH ? 1 : 0));
  EXPECT_EQ(delta("tandem_time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(delta("tandem_request_latency_seconds_count"), 3);
  EXPECT_EQ(after["tandem_request_latency_seconds_bucket{le=\"+Inf\"}"], after["tandem_request_latency_seconds_count"]);
  EXPECT_EQ(after["tandem_requests_in_flight"], 0);
  EXPECT_EQ(whole["usage"]["completion_tokens"], 5);
  // The attention node as the router last polled it (every 200 ms): up, with
  // its KV cache and prefix-cache counters, once a poll has seen the requests.
  const std::string node = "{node=\"" + cluster_->attention_address(0) + "\"}";
  for (int tries = 0; tries < 50 && after["tandem_attention_prefix_lookup_tokens_total" + node] == 0; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    after = scrape();
  }
  EXPECT_EQ(after["tandem_attention_up" + node], 1);
  EXPECT_GT(after["tandem_attention_kv_blocks" + node], 0);
  EXPECT_GT(after["tandem_attention_prefix_lookup_tokens_total" + node], 0);
  EXPECT_GE(after["tandem_attention_prefix_lookup_tokens_total" + node],
            after["tandem_attention_prefix_hit_tokens_total" + node]);
}

// Structured output through the cluster: the router compiles the grammar,
// the attention node masks the sampler, the answer parses; bad grammars are
// refused naming the field, over gRPC and HTTP.
TEST_F(HttpApi, StructuredOutputHoldsTheAnswerToTheFormat) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const std::string schema = R"({"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
      "age": {"type": "integer", "minimum": 0}, "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
      "maxItems": 2}}, "required": ["name", "age", "pets"]})";
  auto req = greedy("Describe a person as JSON:", 80);
  req.mutable_sampling()->set_guided_json(schema);
  const auto person = generate(cluster_->stub(), req);
  ASSERT_TRUE(person.status.ok()) << person.status.error_message();
  ASSERT_TRUE(json::accept(person.text)) << person.text;
  const json p = json::parse(person.text);
  EXPECT_TRUE(p["name"].is_string() && p["age"].is_number_unsigned() && p["pets"].is_array()) << person.text;
  EXPECT_EQ(person.finish, tandem::v1::FINISH_REASON_STOP);

  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto choice = greedy("Pick one:", 16);
    choice.mutable_sampling()->set_temperature(1.5f);
    choice.mutable_sampling()->set_seed(seed);
    for (const char* c : {"alpha", "beta", "gamma delta"}) choice.mutable_sampling()->add_guided_choice(c);
    const auto picked = generate(cluster_->stub(), choice);
    ASSERT_TRUE(picked.status.ok()) << picked.status.error_message();
    EXPECT_TRUE(picked.text == "alpha" || picked.text == "beta" || picked.text == "gamma delta") << picked.text;
  }

  auto bad = greedy("x", 4);
  bad.mutable_sampling()->set_guided_regex("(a");
  auto refused = generate(cluster_->stub(), bad);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("sampling.guided_regex"), std::string::npos)
      << refused.status.error_message();
  auto with_echo = greedy("x", 4);
  with_echo.mutable_sampling()->set_guided_json_object(true);
  with_echo.mutable_sampling()->set_echo(true);
  refused = generate(cluster_->stub(), with_echo);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("sampling.echo"), std::string::npos) << refused.status.error_message();
  bad.mutable_sampling()->set_guided_json_object(true);
  refused = generate(cluster_->stub(), bad);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("at most one"), std::string::npos) << refused.status.error_message();

  // HTTP: OpenAI's response_format with a schema equals the gRPC answer.
  // (The body is written as text: json would sort the schema's properties,
  // and their order is the order of the answer.)
  auto answered = client().Post("/v1/completions",
                                R"({"prompt": "Describe a person as JSON:", "max_tokens": 80, "temperature": 0,
                                    "response_format": {"type": "json_schema", "json_schema": {"name": "person",
                                    "schema": )" + schema + "}}}",
                                "application/json");
  ASSERT_TRUE(answered);
  ASSERT_EQ(answered->status, 200) << answered->body;
  const json chat = json::parse(answered->body);
  EXPECT_EQ(chat["choices"][0]["text"], person.text);
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "stop");
  // Any JSON object, streamed: every prefix a JSON object could start with.
  std::string streamed;
  for (const std::string& e : events("/v1/chat/completions",
                                     {{"messages", {{{"role", "user"}, {"content", "JSON please"}}}},
                                      {"max_tokens", 24}, {"stream", true}, {"seed", 3},
                                      {"response_format", {{"type", "json_object"}}}})) {
    if (e == "[DONE]") break;
    const json chunk = json::parse(e);
    if (chunk["choices"][0]["delta"].contains("content"))
      streamed += chunk["choices"][0]["delta"]["content"].get<std::string>();
  }
  auto object = model::json_object_automaton();
  int32_t at = object->start();
  for (char c : streamed) at = object->next(at, static_cast<uint8_t>(c));
  EXPECT_NE(at, model::ByteAutomaton::kDead) << streamed;
  const json regex = post_ok("/v1/completions", {{"prompt", "Date:"}, {"max_tokens", 20}, {"temperature", 1.0},
                                                 {"seed", 5}, {"guided_regex", "20[0-9]{2}-(0[1-9]|1[0-2])"}});
  const std::string date = regex["choices"][0]["text"];
  EXPECT_TRUE(date.size() == 7 && date.rfind("20", 0) == 0 && date[4] == '-') << date;
  // The command line: `tandem client --json-schema FILE` prints the prompt, then the answer.
  const std::string schema_file = ::testing::TempDir() + "/tandem_schema_" + std::to_string(getpid()) + ".json";
  {
    std::ofstream f(schema_file);
    f << schema;
  }
  int rc = 0;
  const std::string out = testing::shell(testing::tandem_bin() + " client --server " + cluster_->router_address() +
                                             " --prompt 'Describe a person as JSON:' --temperature 0 --max-tokens 80" +
                                             " --json-schema " + schema_file,
                                         rc);
  std::remove(schema_file.c_str());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(out.rfind("Describe a person as JSON:" + person.text + "\nfinish: stop", 0), 0u) << out;
  // Operators see the kinds served: one more choice request, one more count.
  auto choice_count = [&]() -> long {
    auto metrics = client().Get("/metrics");
    const std::string line = "tandem_guided_requests_total{kind=\"choice\"} ";
    const size_t at = metrics ? metrics->body.find(line) : std::string::npos;
    return at == std::string::npos ? 0 : std::stol(metrics->body.substr(at + line.size()));
  };
  const long choices_before = choice_count();
  EXPECT_GE(choices_before, 3);
  auto one_more = greedy("Pick one:", 4);
  one_more.mutable_sampling()->add_guided_choice("x");
  ASSERT_TRUE(generate(cluster_->stub(), one_more).status.ok());
  EXPECT_EQ(choice_count(), choices_before + 1);
  // The single process: `tandem generate` takes the same flags.
  const std::string gen = testing::tandem_bin() + " generate --model " + cluster_model("tiny-mixtral") +
                          " --prompt 'Pick one:' --temperature 1.5 --seed 4 --max-tokens 16";
  const std::string picked = testing::shell(gen + " --choice alpha --choice 'beta gamma'", rc);
  ASSERT_EQ(rc, 0) << picked;
  EXPECT_TRUE(picked.rfind("Pick one:alpha\n", 0) == 0 || picked.rfind("Pick one:beta gamma\n", 0) == 0) << picked;
  const std::string refused_cli = testing::shell(gen + " --regex '(a'", rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(refused_cli.find("--regex: regex: an unterminated '('"), std::string::npos) << refused_cli;
  auto res = client().Post("/v1/chat/completions",
                           json{{"messages", {{{"role", "user"}, {"content", "x"}}}},
                                {"response_format", {{"type", "json_schema"},
                                                     {"json_schema", {{"name", "n"}, {"schema", {{"not", {{"type", "string"}}}}}}}}}}
                               .dump(),
                           "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  EXPECT_NE(json::parse(res->body)["error"]["message"].get<std::string>().find("'not'"), std::string::npos) << res->body;
}

// Tool calling through the gateway and gRPC: the tools reach the chat
// template, a forced call follows its tool's schema and comes back as
// tool_calls (whole, streamed, over gRPC), calls the model writes on its own
// are parsed, earlier calls and results render in the conversation, and bad
// tools are refused naming the field.
TEST_F(HttpApi, ToolCallsComeBackAsCalls) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const json weather = {{"type", "function"},
                        {"function",
                         {{"name", "get_weather"},
                          {"description", "Forecast for a city"},
                          {"parameters",
                           {{"type", "object"},
                            {"properties", {{"city", {{"type", "string"}, {"maxLength", 12}}},
                                            {"days", {{"type", "integer"}, {"minimum", 1}}}}},
                            {"required", json::array({"city", "days"})}}}}}};
  const json now = {{"type", "function"}, {"function", {{"name", "now"}}}};
  const json ask = json::array({{{"role", "user"}, {"content", "Weather in Oslo?"}}});
  json body = {{"messages", ask},
               {"tools", {weather, now}},
               {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}},
               {"max_tokens", 120},
               {"temperature", 0}};
  const json whole = post_ok("/v1/chat/completions", body);
  const json& msg = whole["choices"][0]["message"];
  ASSERT_TRUE(msg.contains("tool_calls")) << whole.dump();
  EXPECT_TRUE(msg["content"].is_null()) << whole.dump();
  ASSERT_EQ(msg["tool_calls"].size(), 1u);
  const json& call = msg["tool_calls"][0];
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["id"].get<std::string>().rfind("call_", 0), 0u);
  EXPECT_EQ(call["function"]["name"], "get_weather");
  const json args = json::parse(call["function"]["arguments"].get<std::string>());
  EXPECT_TRUE(args["city"].is_string() && args["city"].get<std::string>().size() <= 12) << args;
  EXPECT_TRUE(args["days"].is_number_integer() && args["days"].get<int64_t>() >= 1) << args;
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "stop");  // OpenAI's, for a call forced by name

  // Streamed: no content; the call's first delta names it, its arguments
  // follow piece by piece as the model writes them (OpenAI's chunks).
  body["stream"] = true;
  json streamed_call;
  int argument_chunks = 0;
  std::string finish;
  for (const std::string& e : events("/v1/chat/completions", body)) {
    if (e == "[DONE]") break;
    const json chunk = json::parse(e);
    const json& c = chunk["choices"][0];
    if (c["delta"].contains("content")) {
      EXPECT_EQ(c["delta"]["content"], "") << e;
    }
    if (c["delta"].contains("tool_calls")) {
      for (const json& piece : c["delta"]["tool_calls"]) {
        EXPECT_EQ(piece["index"], 0) << e;
        if (streamed_call.is_null()) {
          ASSERT_TRUE(piece.contains("id") && piece["type"] == "function") << e;
          streamed_call = piece;
        } else {
          EXPECT_FALSE(piece.contains("id") || piece["function"].contains("name")) << e;
          streamed_call["function"]["arguments"] =
              streamed_call["function"]["arguments"].get<std::string>() + piece["function"]["arguments"].get<std::string>();
        }
        if (!piece["function"]["arguments"].get<std::string>().empty()) ++argument_chunks;
      }
    }
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  EXPECT_EQ(streamed_call["function"]["name"], "get_weather");
  EXPECT_EQ(json::parse(streamed_call["function"]["arguments"].get<std::string>()), args);
  EXPECT_GT(argument_chunks, 2) << "the arguments stream as they are written";
  EXPECT_EQ(finish, "stop");

  // gRPC Chat, "required" with both tools and one call.
  tandem::v1::ChatRequest chat = testing::greedy_chat("What time is it?", 120);
  for (const json& t : {weather, now}) {
    auto* tool = chat.add_tools();
    tool->set_name(t["function"]["name"]);
    if (t["function"].contains("parameters")) tool->set_parameters(t["function"]["parameters"].dump());
  }
  chat.set_tool_choice(tandem::v1::TOOL_CHOICE_REQUIRED);
  chat.set_parallel_tool_calls(false);
  chat.mutable_sampling()->set_temperature(1.0f);
  chat.mutable_sampling()->set_seed(7);
  {
    const auto r = testing::chat(cluster_->stub(), chat);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.text, "");
    ASSERT_EQ(r.tool_calls.size(), 1u);
    EXPECT_TRUE(r.tool_calls[0].name() == "get_weather" || r.tool_calls[0].name() == "now") << r.tool_calls[0].name();
    EXPECT_TRUE(json::parse(r.tool_calls[0].arguments()).is_object()) << r.tool_calls[0].arguments();
    // The pieces streamed before it join to the same call, under the same id.
    ASSERT_EQ(r.streamed_calls.size(), 1u);
    EXPECT_EQ(r.streamed_calls[0].id(), r.tool_calls[0].id());
    EXPECT_EQ(r.streamed_calls[0].name(), r.tool_calls[0].name());
    EXPECT_EQ(json::parse(r.streamed_calls[0].arguments()), json::parse(r.tool_calls[0].arguments()));
    EXPECT_GE(r.argument_pieces, 1u) << "arguments in pieces after the one that names the call";
    EXPECT_EQ(r.finish, tandem::v1::FINISH_REASON_TOOL_CALLS);
  }

  // tool_choice auto: a call the model writes itself is parsed (a regex
  // stands in for a trained model's habit of calling).
  const json self = post_ok("/v1/chat/completions",
                            {{"messages", ask},
                             {"tools", {weather, now}},
                             {"max_tokens", 60},
                             {"temperature", 0},
                             {"guided_regex", "It is cold\\.\\n<tool_call>\\n\\{\"name\": \"now\", \"arguments\": \\{\\}\\}\\n</tool_call>"}});
  const json& self_msg = self["choices"][0]["message"];
  EXPECT_EQ(self_msg["content"], "It is cold.\n") << self.dump();
  ASSERT_EQ(self_msg["tool_calls"].size(), 1u) << self.dump();
  EXPECT_EQ(self_msg["tool_calls"][0]["function"]["name"], "now");
  EXPECT_EQ(self_msg["tool_calls"][0]["function"]["arguments"], "{}");
  EXPECT_EQ(self["choices"][0]["finish_reason"], "tool_calls");
  // A call cut before its arguments close stays a call, its arguments as
  // written, and finishes as the cut did: the output ends there (the
  // grammar's end), or max_tokens cuts it.
  const json cut = post_ok("/v1/chat/completions",
                           {{"messages", ask},
                            {"tools", {weather, now}},
                            {"max_tokens", 60},
                            {"temperature", 0},
                            {"guided_regex", "<tool_call>\\n\\{\"name\": \"now\", \"arguments\": \\{\"at\": \"noo"}});
  ASSERT_EQ(cut["choices"][0]["message"]["tool_calls"].size(), 1u) << cut.dump();
  EXPECT_EQ(cut["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"at\": \"noo") << cut.dump();
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "stop") << cut.dump();
  const json cut_short =
      post_ok("/v1/chat/completions", {{"messages", ask},
                                       {"tools", {weather, now}},
                                       {"max_tokens", 100},
                                       {"temperature", 0},
                                       {"guided_regex", "<tool_call>\\n\\{\"name\": \"now\", \"arguments\": "
                                                        "\\{\"at\": \"[a-z]{300}\"\\}\\}\\n</tool_call>"}});
  ASSERT_EQ(cut_short["choices"][0]["message"]["tool_calls"].size(), 1u) << cut_short.dump();
  EXPECT_EQ(cut_short["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].get<std::string>().rfind(
                "{\"at\": \"", 0),
            0u)
      << cut_short.dump();
  EXPECT_EQ(cut_short["choices"][0]["finish_reason"], "length") << cut_short.dump();
  // Operators see the calls: every parsed call counted (six so far in this test).
  auto metrics = client().Get("/metrics");
  ASSERT_TRUE(metrics);
  const std::string line = "tandem_tool_calls_total ";
  const size_t at = metrics->body.find("\n" + line);
  ASSERT_NE(at, std::string::npos) << metrics->body;
  EXPECT_GE(std::stol(metrics->body.substr(at + 1 + line.size())), 6);
  // tool_choice none: the same text stays text.
  json plain = {{"messages", ask}, {"tools", {weather, now}}, {"tool_choice", "none"}, {"max_tokens", 60},
                {"temperature", 0}, {"guided_regex", "<tool_call>\\n\\{\\}\\n</tool_call>"}};
  const json words = post_ok("/v1/chat/completions", plain);
  EXPECT_EQ(words["choices"][0]["message"]["content"], "<tool_call>\n{}\n</tool_call>");
  EXPECT_FALSE(words["choices"][0]["message"].contains("tool_calls"));
  EXPECT_EQ(words["choices"][0]["finish_reason"], "stop");

  // The next turn: the call and its result render through the template.
  const json turn = {{"messages",
                      {ask[0],
                       {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({call})}},
                       {{"role", "tool"}, {"tool_call_id", call["id"]}, {"content", "3 degrees, snow"}}}},
                     {"tools", {weather}}};
  const json tokens = post_ok("/tokenize", turn);
  const json prompt = post_ok("/detokenize", {{"tokens", tokens["tokens"]}, {"skip_special_tokens", false}});
  const std::string text = prompt["prompt"];
  EXPECT_NE(text.find("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), std::string::npos)
      << text;
  EXPECT_NE(text.find("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("<|im_start|>user\n<tool_response>\n3 degrees, snow\n</tool_response><|im_end|>\n"
                      "<|im_start|>assistant\n"),
            std::string::npos)
      << text;
  json next = turn;
  next["max_tokens"] = 4;
  EXPECT_EQ(post_ok("/v1/chat/completions", next)["usage"]["prompt_tokens"], tokens["count"]);

  // Refusals name the field.
  auto refused = [&](json b, const std::string& field) {
    auto res = client().Post("/v1/chat/completions", b.dump(), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << res->body;
    EXPECT_NE(json::parse(res->body)["error"]["message"].get<std::string>().find(field), std::string::npos)
        << res->body;
  };
  json b = {{"messages", ask}, {"tools", {weather}}};
  b["tool_choice"] = {{"type", "function"}, {"function", {{"name", "elsewhere"}}}};
  refused(b, "tool_choice_function: 'elsewhere' is not one of the tools");
  b["tool_choice"] = "required";
  b["guided_regex"] = "a";
  refused(b, "tool_choice: a forced tool call is a grammar already");
  b.erase("guided_regex");
  b["tools"] = {weather, weather};
  refused(b, "tools[1].name: 'get_weather' is given twice");
  b["tools"] = {{{"type", "function"}, {"function", {{"name", "bad name"}}}}};
  refused(b, "tools[0].name");
  b["tools"] = {{{"type", "function"},
                 {"function", {{"name", "f"}, {"parameters", {{"type", "object"}, {"not", json::object()}}}}}}};
  refused(b, "tools[0] (f)");
  b["tools"] = json::array();
  refused(b, "there are no tools");
}

// router.reasoning_parser (qwen3 in this cluster): the thought between
// <think> and </think> comes back apart from the answer, whole, streamed and
// over gRPC, before tool calls too; chat_template_kwargs reach the template.
TEST_F(HttpApi, ReasoningComesApartFromTheAnswer) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const json ask = json::array({{{"role", "user"}, {"content", "Hi"}}});
  json body = {{"messages", ask},
               {"max_tokens", 60},
               {"temperature", 0},
               {"guided_regex", "<think>I should greet\\.</think>\\n\\nHello there"}};
  const json whole = post_ok("/v1/chat/completions", body);
  EXPECT_EQ(whole["choices"][0]["message"]["reasoning_content"], "I should greet.") << whole.dump();
  EXPECT_EQ(whole["choices"][0]["message"]["content"], "Hello there");
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "stop");

  body["stream"] = true;
  std::string reasoning, content;
  for (const std::string& e : events("/v1/chat/completions", body)) {
    if (e == "[DONE]") break;
    const json chunk = json::parse(e);
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"].get<std::string>();
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(reasoning, "I should greet.");
  EXPECT_EQ(content, "Hello there");

  tandem::v1::ChatRequest chat = testing::greedy_chat("Hi", 60);
  chat.mutable_sampling()->set_guided_regex("<think>I should greet\\.</think>\\n\\nHello there");
  {
    const auto r = testing::chat(cluster_->stub(), chat);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.reasoning, "I should greet.");
    EXPECT_EQ(r.text, "Hello there");
  }

  // A thought, then a call: each in its place.
  const json called = post_ok(
      "/v1/chat/completions",
      {{"messages", ask},
       {"tools", {{{"type", "function"}, {"function", {{"name", "now"}}}}}},
       {"max_tokens", 120},
       {"temperature", 0},
       {"guided_regex", "<think>Time\\?</think>\\n<tool_call>\\n\\{\"name\": \"now\", \"arguments\": \\{\\}\\}\\n</tool_call>"}});
  const json& msg = called["choices"][0]["message"];
  EXPECT_EQ(msg["reasoning_content"], "Time?") << called.dump();
  EXPECT_TRUE(msg["content"].is_null()) << called.dump();
  ASSERT_EQ(msg["tool_calls"].size(), 1u) << called.dump();
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "now");

  // No thought: no reasoning_content.
  const json plain = post_ok("/v1/chat/completions", {{"messages", ask}, {"max_tokens", 3}, {"temperature", 0}});
  EXPECT_FALSE(plain["choices"][0]["message"].contains("reasoning_content")) << plain.dump();

  // chat_template_kwargs: the template closes an empty thought when asked.
  const json off = post_ok("/tokenize", {{"messages", ask}, {"chat_template_kwargs", {{"enable_thinking", false}}}});
  const json text = post_ok("/detokenize", {{"tokens", off["tokens"]}, {"skip_special_tokens", false}});
  const std::string prompt = text["prompt"];
  const std::string closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
  EXPECT_TRUE(prompt.size() >= closed.size() && prompt.compare(prompt.size() - closed.size(), closed.size(), closed) == 0)
      << prompt;
  const json on = post_ok("/tokenize", {{"messages", ask}});
  EXPECT_LT(on["count"].get<int>(), off["count"].get<int>());
  for (const json& bad : {json{{"messages", ask}}, json("enable_thinking")}) {
    auto res = client().Post("/v1/chat/completions",
                             json{{"messages", ask}, {"chat_template_kwargs", bad}}.dump(), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << res->body;
    EXPECT_NE(json::parse(res->body)["error"]["message"].get<std::string>().find("chat_template_kwargs"),
              std::string::npos)
        << res->body;
  }
}

// The official `openai` Python client against the gateway
// (scripts/openai_client_check.py), where Python has it; skipped otherwise.
TEST_F(HttpApi, OfficialOpenAiPythonClientWorks) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  if (std::system("python3 -c 'import openai' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "the `openai` Python package is not installed (pip install openai to run this check)";
  int rc = 0;
  const std::string out = testing::shell("python3 " + std::string(TANDEM_SOURCE_DIR) +
                                             "/scripts/openai_client_check.py http://127.0.0.1:" +
                                             std::to_string(cluster_->http_port()) + "/v1",
                                         rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("all passed"), std::string::npos) << out;
}


// `tandem bench --api both` sends the same requests over gRPC and HTTP and
// reports both and their ratio; every request must succeed on both. With
// --shared-prefix every prompt starts with the same tokens, which the node
// then serves from its prefix cache.
TEST_F(HttpApi, BenchComparesHttpWithGrpc) {
  ASSERT_TRUE(cluster_->ready().is_ok());
  const int64_t hits_before = testing::node_load(*cluster_, 0).prefix_hit_tokens();
  int rc = 0;
  const std::string out = testing::shell(testing::tandem_bin() + " bench --api both --server " +
                                          cluster_->router_address() + " --http 127.0.0.1:" +
                                          std::to_string(cluster_->http_port()) +
                                          " --requests 6 --concurrency 3 --prompt-tokens 40 --shared-prefix 32"
                                          " --output-tokens 5",
                                      rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("prompt 40 tokens (32 shared in 1 group)"), std::string::npos) << out;
  // Each pass's 6 requests share 32 tokens (8 whole blocks of the harness's
  // 4; the passes have different prompts): at most the first 3 of a pass,
  // running side by side, miss.
  EXPECT_GE(testing::node_load(*cluster_, 0).prefix_hit_tokens() - hits_before, 6 * 32);
  const std::string refused = testing::shell(testing::tandem_bin() + " bench --server " + cluster_->router_address() +
                                              " --prompt-tokens 8 --shared-prefix 9",
                                          rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(refused.find("--shared-prefix (9) is longer than --prompt-tokens (8)"), std::string::npos) << refused;
  // --urgent-every: those requests go at priority -1 (over HTTP too) and are reported apart.
  const std::string urgent = testing::shell(testing::tandem_bin() + " bench --api http --http 127.0.0.1:" +
                                                std::to_string(cluster_->http_port()) + " --server " +
                                                cluster_->router_address() +
                                                " --requests 4 --concurrency 2 --prompt-tokens 8 --output-tokens 3"
                                                " --urgent-every 2",
                                            rc);
  EXPECT_EQ(rc, 0) << urgent;
  EXPECT_NE(urgent.find("urgent / rest (every 2-th request at priority -1)"), std::string::npos) << urgent;
  EXPECT_NE(out.find("tandem bench (grpc)"), std::string::npos) << out;
  EXPECT_NE(out.find("tandem bench (http)"), std::string::npos) << out;
  size_t all_ok = 0;
  for (size_t at = 0; (at = out.find("6 requests (6 ok, 0 failed)", at)) != std::string::npos; ++at) ++all_ok;
  EXPECT_EQ(all_ok, 2u) << out;  // both APIs
  EXPECT_NE(out.find("http / grpc: output throughput"), std::string::npos) << out;
}

}  // namespace
}  // namespace tandem
