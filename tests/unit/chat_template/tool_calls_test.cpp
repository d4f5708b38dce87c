// Tool calls in model output: the hermes and mistral formats parsed whole and
// as a stream split anywhere, malformed calls given back as content, and the
// grammar that forces a call accepting exactly the calls of the tools.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "tandem/model/guided.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/tool_calls.h"

namespace tandem::model {
namespace {

using json = nlohmann::json;

// Whether `regex` matches all of `text`.
bool matches(const std::string& regex, const std::string& text) {
  auto a = compile_regex(regex);
  EXPECT_TRUE(a.is_ok()) << a.status().message();
  if (!a.is_ok()) return false;
  ByteAutomaton& m = **a;
  int32_t s = m.start();
  for (unsigned char c : text) {
    s = m.next(s, c);
    if (s == ByteAutomaton::kDead) return false;
  }
  return m.accepting(s);
}

// The same text fed in every two-piece split gives the same result and the
// same content, and no content streams after the marker.
void expect_split_invariant(ToolCallFormat f, const std::string& text) {
  const ToolCallParse whole = parse_tool_calls(f, text);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    ToolCallStream s(f, false);
    std::string content = s.push(std::string_view(text).substr(0, cut));
    content += s.push(std::string_view(text).substr(cut));
    ToolCallParse r = s.finish();
    EXPECT_EQ(content + r.content, whole.content) << "cut at " << cut;
    ASSERT_EQ(r.calls.size(), whole.calls.size()) << "cut at " << cut;
    for (size_t i = 0; i < r.calls.size(); ++i) {
      EXPECT_EQ(r.calls[i].name, whole.calls[i].name);
      EXPECT_EQ(r.calls[i].arguments, whole.calls[i].arguments);
    }
  }
}

// The calls the deltas give, joined by index (a call's first piece names it).
std::vector<ToolCall> join(const std::vector<ToolCallDelta>& deltas) {
  std::vector<ToolCall> calls;
  for (const ToolCallDelta& d : deltas) {
    if (!d.name.empty()) {
      EXPECT_EQ(d.index, calls.size()) << "a call's first piece comes in order";
      calls.push_back({d.name, {}});
    }
    EXPECT_LT(d.index, calls.size()) << "a piece of a call not yet named";
    if (d.index < calls.size()) calls[d.index].arguments += d.arguments;
  }
  return calls;
}

// Fed with stream_calls in `pieces` cut at `cuts`: the content and calls of
// the whole parse, and deltas whose arguments parse to the same objects.
void expect_streams_as_whole(ToolCallFormat f, const std::string& text, const std::vector<size_t>& cuts,
                             size_t max_calls = SIZE_MAX) {
  const ToolCallParse whole = parse_tool_calls(f, text, false, max_calls);
  ToolCallStream s(f, false, max_calls, /*stream_calls=*/true);
  std::string content;
  std::vector<ToolCallDelta> deltas;
  size_t from = 0;
  for (size_t cut : cuts) {
    content += s.push(std::string_view(text).substr(from, cut - from));
    for (auto& d : s.take_deltas()) deltas.push_back(std::move(d));
    from = cut;
  }
  content += s.push(std::string_view(text).substr(from));
  const ToolCallParse r = s.finish();
  for (auto& d : s.take_deltas()) deltas.push_back(std::move(d));
  EXPECT_EQ(content + r.content, whole.content) << text;
  EXPECT_FALSE(r.cut);
  ASSERT_EQ(r.calls.size(), whole.calls.size()) << text;
  const std::vector<ToolCall> joined = join(deltas);
  ASSERT_EQ(joined.size(), whole.calls.size()) << text;
  for (size_t i = 0; i < r.calls.size(); ++i) {
    EXPECT_EQ(r.calls[i].name, whole.calls[i].name);
    EXPECT_EQ(r.calls[i].arguments, whole.calls[i].arguments);
    EXPECT_EQ(joined[i].name, whole.calls[i].name);
    EXPECT_EQ(json::parse(joined[i].arguments), json::parse(whole.calls[i].arguments)) << joined[i].arguments;
  }
}

// Every two-piece split and one byte at a time.
void expect_streams_as_whole(ToolCallFormat f, const std::string& text, size_t max_calls = SIZE_MAX) {
  for (size_t cut = 0; cut <= text.size(); ++cut) expect_streams_as_whole(f, text, {cut}, max_calls);
  std::vector<size_t> bytes(text.size());
  for (size_t i = 0; i < text.size(); ++i) bytes[i] = i;
  expect_streams_as_whole(f, text, bytes, max_calls);
}

TEST(ToolCalls, FormatComesFromTheNameOrTheTemplate) {
  EXPECT_EQ(*tool_call_format("auto", "... '<tool_call>\\n{\"name\": \"' ..."), ToolCallFormat::kHermes);
  // The same tags around another body (Qwen3-Coder's XML) are not hermes.
  EXPECT_EQ(*tool_call_format("auto", "'<tool_call>\\n<function=' + name"), ToolCallFormat::kNone);
  EXPECT_EQ(*tool_call_format("auto", "{{ '[TOOL_CALLS]' }}"), ToolCallFormat::kMistral);
  EXPECT_EQ(*tool_call_format("auto", "{{ messages }}"), ToolCallFormat::kNone);
  EXPECT_EQ(*tool_call_format("mistral", "<tool_call>"), ToolCallFormat::kMistral);
  EXPECT_EQ(*tool_call_format("none", "<tool_call>"), ToolCallFormat::kNone);
  auto bad = tool_call_format("llama3_json", "");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("llama3_json"), std::string::npos);
}

TEST(ToolCalls, HermesCallsAfterContent) {
  const std::string text =
      "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Z\\u00fcrich\", \"days\": 2}}\n"
      "</tool_call>\n<tool_call>\n{\"arguments\": {}, \"name\": \"now\"}\n</tool_call>";
  const ToolCallParse r = parse_tool_calls(ToolCallFormat::kHermes, text);
  EXPECT_EQ(r.content, "Let me look.\n");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(r.calls[0].arguments), json::parse(R"({"city": "Zürich", "days": 2})"));
  EXPECT_EQ(r.calls[1].name, "now");
  EXPECT_EQ(r.calls[1].arguments, "{}");
  expect_split_invariant(ToolCallFormat::kHermes, text);
  expect_streams_as_whole(ToolCallFormat::kHermes, text);
}

// With stream_calls a hermes call goes out as it is written: its name once
// the block opens as {"name": ..., "arguments": {, then its arguments piece
// by piece, before the block ends.
TEST(ToolCalls, HermesArgumentsStreamAsWritten) {
  ToolCallStream s(ToolCallFormat::kHermes, false, SIZE_MAX, /*stream_calls=*/true);
  EXPECT_EQ(s.push("Looking.\n<tool_call>\n{\"name\": \"get_wea"), "Looking.\n");
  EXPECT_TRUE(s.take_deltas().empty());
  EXPECT_EQ(s.push("ther\", \"arguments\": {\"city\": \"Os"), "");
  std::vector<ToolCallDelta> d = s.take_deltas();
  ASSERT_EQ(d.size(), 1u);  // the name and the first piece, merged
  EXPECT_EQ(d[0].index, 0u);
  EXPECT_EQ(d[0].name, "get_weather");
  EXPECT_EQ(d[0].arguments, "{\"city\": \"Os");
  // A brace or an escaped quote inside a string does not end the arguments.
  EXPECT_EQ(s.push("lo \\\"}\\\"\", \"days\": [2"), "");
  d = s.take_deltas();
  ASSERT_EQ(d.size(), 1u);
  EXPECT_TRUE(d[0].name.empty());
  EXPECT_EQ(d[0].arguments, "lo \\\"}\\\"\", \"days\": [2");
  EXPECT_EQ(s.push("]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"), "");
  d = s.take_deltas();
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].arguments, "]}");
  EXPECT_EQ(d[1].index, 1u);
  EXPECT_EQ(d[1].name, "now");
  EXPECT_EQ(d[1].arguments, "{}");
  const ToolCallParse r = s.finish();
  EXPECT_TRUE(s.take_deltas().empty());
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].arguments, R"({"city":"Oslo \"}\"","days":[2]})");  // compact when whole
  EXPECT_FALSE(r.cut);
}

// A block opened as a call stays one (OpenAI's contract: the arguments are
// the model's text and need not parse); cut, it says so. Blocks that open
// another way, or past the call limit, are decided whole as without streaming.
TEST(ToolCalls, StreamedCallsStayCalls) {
  // Whole and one byte at a time: the same answer.
  const auto run = [](const std::string& text) {
    ToolCallParse r[2];
    for (int bytewise = 0; bytewise < 2; ++bytewise) {
      ToolCallStream s(ToolCallFormat::kHermes, false, SIZE_MAX, /*stream_calls=*/true);
      std::string content;
      if (bytewise)
        for (char c : text) content += s.push(std::string(1, c));
      else
        content = s.push(text);
      r[bytewise] = s.finish();
      r[bytewise].content = content + r[bytewise].content;
    }
    EXPECT_EQ(r[0].content, r[1].content) << text;
    EXPECT_EQ(r[0].cut, r[1].cut) << text;
    EXPECT_EQ(r[0].calls.size(), r[1].calls.size()) << text;
    for (size_t i = 0; i < std::min(r[0].calls.size(), r[1].calls.size()); ++i)
      EXPECT_EQ(r[0].calls[i].arguments, r[1].calls[i].arguments) << text;
    return r[0];
  };
  ToolCallParse r;
  // A string left open ends at the block's closing tag, and what follows is
  // read as ever; keys after the arguments belong to the call.
  r = run("<tool_call>{\"name\":\"f\",\"arguments\":{\"q\":\"it\"s\"}}</tool_call> Done.<tool_call>{\"name\":\"g\",\"arguments\":{}}</tool_call>");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].arguments, "{\"q\":\"it\"s\"}}");
  EXPECT_EQ(r.calls[1].name, "g");
  EXPECT_EQ(r.content, " Done.");
  r = run("<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":1},\"id\":3}</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"a\":1}");
  EXPECT_EQ(r.content, "");
  r = run("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1\nLet me check}</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"a\": 1\n");  // prose is not JSON: the arguments end before it
  EXPECT_EQ(r.content, "Let me check}");             // and it is the user's
  r = run("<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":1 I think</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.content, "I think");
  r = run("<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":1}, \"id\": 3} then</tool_call>");
  EXPECT_EQ(r.content, "then");
  r = run("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1</tool_call> after");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"x\": 1");  // ended at the tag, as written
  EXPECT_EQ(r.content, " after");  // text after a block, as written
  r = run("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"Os");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"x\": \"Os");
  EXPECT_TRUE(r.cut);
  r = run("<tool_call>{\"name\": \"f\", \"arguments\": {}}\n</tool_c");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_FALSE(r.cut);
  EXPECT_EQ(r.content, "");
  r = run("<tool_call>{\"name\": \"f\", \"arguments\": {}} and more");
  EXPECT_EQ(r.content, "and more");
  // Opened another way: whole, as without streaming.
  for (const std::string text :
       {"<tool_call>{\"name\": \"f\", \"arguments\": oops}</tool_call>", "<tool_call>{\"name\": \"bad name\", \"arguments\": {}}</tool_call>",
        "<tool_call>{\"arguments\": {}, \"name\": \"f\"}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>", "x <tool_call>\n{\"name\": \"f\", \"argu"}) {
    const ToolCallParse want = parse_tool_calls(ToolCallFormat::kHermes, text);
    r = run(text);
    EXPECT_EQ(r.content, want.content) << text;
    ASSERT_EQ(r.calls.size(), want.calls.size()) << text;
    if (!want.calls.empty()) {
      EXPECT_EQ(r.calls[0].arguments, want.calls[0].arguments);
    }
    expect_streams_as_whole(ToolCallFormat::kHermes, text);
  }
  // Forced (the grammar writes calls only): the same streaming.
  ToolCallStream forced(ToolCallFormat::kHermes, /*forced=*/true, SIZE_MAX, /*stream_calls=*/true);
  EXPECT_EQ(forced.push("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\""), "");
  const std::vector<ToolCallDelta> first = forced.take_deltas();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].name, "f");
  EXPECT_EQ(first[0].arguments, "{\"x\"");
  // Mistral's array comes whole at the end, in deltas too.
  ToolCallStream m(ToolCallFormat::kMistral, false, SIZE_MAX, /*stream_calls=*/true);
  EXPECT_EQ(m.push("[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"x\": 1}}]"), "");
  EXPECT_TRUE(m.take_deltas().empty());
  r = m.finish();
  const std::vector<ToolCallDelta> d = m.take_deltas();
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].name, "a");
  EXPECT_EQ(d[0].arguments, r.calls.at(0).arguments);
}

TEST(ToolCalls, ArgumentsWrittenAsAStringAreTaken) {
  const ToolCallParse r = parse_tool_calls(
      ToolCallFormat::kHermes, "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"x\":1}");
  EXPECT_EQ(r.content, "");
}

TEST(ToolCalls, TextWithoutTheMarkerIsAllContent) {
  for (const std::string text : {"plain answer", "a < b and <tool", "<tool_cal", ""}) {
    const ToolCallParse r = parse_tool_calls(ToolCallFormat::kHermes, text);
    EXPECT_EQ(r.content, text);
    EXPECT_TRUE(r.calls.empty());
    expect_split_invariant(ToolCallFormat::kHermes, text);
    expect_streams_as_whole(ToolCallFormat::kHermes, text);
  }
  // No format: the marker is just text.
  const ToolCallParse r = parse_tool_calls(ToolCallFormat::kNone, "<tool_call>{\"name\": \"f\"}</tool_call>");
  EXPECT_TRUE(r.calls.empty());
}

TEST(ToolCalls, MalformedCallsComeBackAsContentWhole) {
  for (const std::string text : {
           "x <tool_call>\n{\"name\": \"f\", \"argu",                                      // cut short (max_tokens)
           "<tool_call>{\"name\": \"f\", \"arguments\": {]}</tool_call>",                // bad JSON
           "<tool_call>{\"arguments\": {}}</tool_call>",                                // no name
           "<tool_call>{\"name\": \"bad name!\", \"arguments\": {}}</tool_call>",       // not a function name
           "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",              // arguments not an object
           "<tool_call>{\"name\": 1}</tool_call>\n <tool_call>{]</tool_call>",          // whitespace kept too
       }) {
    const ToolCallParse r = parse_tool_calls(ToolCallFormat::kHermes, text);
    EXPECT_TRUE(r.calls.empty()) << text;
    EXPECT_EQ(r.content, text);
    expect_split_invariant(ToolCallFormat::kHermes, text);
  }
  // Arguments nested deeper than a dump may recurse are not a call.
  std::string deep = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": " + std::string(300, '[') +
                     std::string(300, ']') + "}}</tool_call>";
  EXPECT_TRUE(parse_tool_calls(ToolCallFormat::kHermes, deep).calls.empty());
}

// Each hermes block stands alone, as vLLM reads them: good blocks are calls,
// the rest is content; a last block cut before its closing tag counts when
// its JSON is whole; calls past the limit stay text.
TEST(ToolCalls, HermesBlocksStandAlone) {
  const std::string good = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
  const std::string bad = "<tool_call>{\"name\": \"g\", \"arguments\": oops}</tool_call>";
  ToolCallParse r = parse_tool_calls(ToolCallFormat::kHermes, "Sure. " + good + "\n" + bad + " then words");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].name, "f");
  EXPECT_EQ(r.content, "Sure. \n" + bad + " then words");  // a failed block keeps its separator
  expect_split_invariant(ToolCallFormat::kHermes, "Sure. " + good + "\n" + bad + " then words");
  expect_streams_as_whole(ToolCallFormat::kHermes, "Sure. " + good + "\n" + bad + " then words");
  expect_streams_as_whole(ToolCallFormat::kHermes, good + good + good, /*max_calls=*/1);
  expect_streams_as_whole(ToolCallFormat::kHermes,
                          good + "\n<tool_call>\n{\"name\": \"h\", \"arguments\": {}}\n</tool_c");
  r = parse_tool_calls(ToolCallFormat::kHermes, good + "\n<tool_call>\n{\"name\": \"h\", \"arguments\": {}}\n</tool_c");
  ASSERT_EQ(r.calls.size(), 2u);  // cut inside the closing tag, its JSON whole
  EXPECT_EQ(r.calls[1].name, "h");
  EXPECT_EQ(r.content, "");
  r = parse_tool_calls(ToolCallFormat::kHermes, good + good + good, /*forced=*/false, /*max_calls=*/1);
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.content, good + good);
}

TEST(ToolCalls, MistralArrayAfterTheMarker) {
  const std::string text =
      "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"now\", "
      "\"arguments\": {}}]";
  const ToolCallParse r = parse_tool_calls(ToolCallFormat::kMistral, text);
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  EXPECT_EQ(r.calls[0].arguments, "{\"city\":\"Paris\"}");
  expect_split_invariant(ToolCallFormat::kMistral, text);
  // Forced (the marker is a hidden special token): the array alone.
  const ToolCallParse forced =
      parse_tool_calls(ToolCallFormat::kMistral, " [{\"name\": \"now\", \"arguments\": {}}]", /*forced=*/true);
  ASSERT_EQ(forced.calls.size(), 1u);
  EXPECT_EQ(forced.calls[0].name, "now");
  const ToolCallParse bad = parse_tool_calls(ToolCallFormat::kMistral, "[TOOL_CALLS] [{\"name\": 3}]");
  EXPECT_TRUE(bad.calls.empty());
  EXPECT_EQ(bad.content, "[TOOL_CALLS] [{\"name\": 3}]");
}

const std::vector<ToolSpec> kTools = {
    {"get_weather", R"({"type": "object", "properties": {"city": {"type": "string"},
                       "unit": {"enum": ["c", "f"]}}, "required": ["city"]})"},
    {"now", ""},
};

TEST(ToolCalls, ForcingGrammarAcceptsExactlyTheToolsCalls) {
  auto one = tool_call_regex(ToolCallFormat::kHermes, kTools, /*parallel=*/false);
  ASSERT_TRUE(one.is_ok()) << one.status().message();
  const std::string weather = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
  const std::string now = "<tool_call>\n{\"name\": \"now\", \"arguments\": {\"any\": [1, {\"x\": null}]}}\n</tool_call>";
  EXPECT_TRUE(matches(*one, weather));
  EXPECT_TRUE(matches(*one, now));
  EXPECT_FALSE(matches(*one, weather + "\n" + now));  // one call only
  EXPECT_FALSE(matches(*one, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"));  // city required
  EXPECT_FALSE(matches(*one, "<tool_call>\n{\"name\": \"other\", \"arguments\": {}}\n</tool_call>"));
  EXPECT_FALSE(matches(*one, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"k\"}}\n</tool_call>"));
  auto many = tool_call_regex(ToolCallFormat::kHermes, kTools, /*parallel=*/true);
  ASSERT_TRUE(many.is_ok());
  EXPECT_TRUE(matches(*many, weather + "\n" + now + "\n" + weather));
  // What the grammar accepts, the parser reads back.
  const ToolCallParse r = parse_tool_calls(ToolCallFormat::kHermes, weather + "\n" + now);
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[1].arguments, "{\"any\":[1,{\"x\":null}]}");

  auto mistral = tool_call_regex(ToolCallFormat::kMistral, kTools, /*parallel=*/true);
  ASSERT_TRUE(mistral.is_ok()) << mistral.status().message();
  const std::string arr = " [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"c\"}}, {\"name\": \"now\", \"arguments\": {}}]";
  EXPECT_TRUE(matches(*mistral, arr));
  EXPECT_EQ(parse_tool_calls(ToolCallFormat::kMistral, arr, /*forced=*/true).calls.size(), 2u);
  auto single = tool_call_regex(ToolCallFormat::kMistral, kTools, /*parallel=*/false);
  ASSERT_TRUE(single.is_ok());
  EXPECT_FALSE(matches(*single, arr));
}

// A schema's $refs resolve against its own root; a schema without a type
// still gives an object.
TEST(ToolCalls, ForcingGrammarKeepsEachToolsSchemaWhole) {
  const std::vector<ToolSpec> tools = {
      {"book", R"({"$defs": {"Seat": {"enum": ["aisle", "window"]}}, "type": "object",
                  "properties": {"seat": {"$ref": "#/$defs/Seat"}}, "required": ["seat"]})"},
      {"open", "{}"}};
  auto r = tool_call_regex(ToolCallFormat::kHermes, tools, /*parallel=*/false);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_TRUE(matches(*r, "<tool_call>\n{\"name\": \"book\", \"arguments\": {\"seat\": \"aisle\"}}\n</tool_call>"));
  EXPECT_FALSE(matches(*r, "<tool_call>\n{\"name\": \"book\", \"arguments\": {\"seat\": \"roof\"}}\n</tool_call>"));
  EXPECT_TRUE(matches(*r, "<tool_call>\n{\"name\":\"open\",\"arguments\":{\"k\": [true]}}\n</tool_call>"));
  EXPECT_FALSE(matches(*r, "<tool_call>\n{\"name\": \"open\", \"arguments\": 5}\n</tool_call>"));
  // Too many tools, or a grammar past its limit, is refused, not built.
  std::vector<ToolSpec> many(kMaxTools + 1, ToolSpec{"f", ""});
  EXPECT_FALSE(tool_call_regex(ToolCallFormat::kHermes, many, true).is_ok());
  std::string wide = R"({"type": "object", "properties": {)";
  for (int i = 0; i < 200; ++i) wide += (i ? "," : "") + std::string("\"p") + std::to_string(i) + "\": {\"enum\": [\"" + std::string(300, 'x') + "\"]}";
  wide += "}}";
  auto big = tool_call_regex(ToolCallFormat::kHermes, std::vector<ToolSpec>(8, ToolSpec{"w", wide}), true);
  ASSERT_FALSE(big.is_ok());
  EXPECT_NE(big.status().message().find("bytes"), std::string::npos) << big.status().message();
}

TEST(ToolCalls, ForcingGrammarErrorsNameTheTool) {
  auto bad = tool_call_regex(ToolCallFormat::kHermes, {{"f", "[1]"}}, false);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("tools[0] (f)"), std::string::npos) << bad.status().message();
  auto unsupported = tool_call_regex(ToolCallFormat::kHermes, {{"g", R"({"type": "object", "not": {}})"}}, false);
  ASSERT_FALSE(unsupported.is_ok());
  EXPECT_NE(unsupported.status().message().find("(g)"), std::string::npos);
  EXPECT_FALSE(tool_call_regex(ToolCallFormat::kNone, kTools, false).is_ok());
  EXPECT_FALSE(tool_call_regex(ToolCallFormat::kHermes, {}, false).is_ok());
}

TEST(ToolCalls, FunctionNames) {
  EXPECT_TRUE(valid_tool_name("get_weather-v2"));
  EXPECT_FALSE(valid_tool_name(""));
  EXPECT_FALSE(valid_tool_name("has space"));
  EXPECT_FALSE(valid_tool_name(std::string(65, 'a')));
}

}  // namespace
}  // namespace tandem::model

namespace tandem::model {
namespace {

// A block missing its closing tag ends where the next opens; mistral calls
// past the limit come back as their JSON; a forced call's schema must be an
// object at its top.
TEST(ToolCalls, ReviewedEdges) {
  ToolCallParse r = parse_tool_calls(
      ToolCallFormat::kHermes,
      "<tool_call>{\"name\": \"a\", \"arguments\": {}}\n<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[1].name, "b");
  EXPECT_EQ(r.content, "");
  r = parse_tool_calls(ToolCallFormat::kMistral,
                       "[TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"x\": 1}}]",
                       false, /*max_calls=*/1);
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].name, "a");
  EXPECT_EQ(nlohmann::json::parse(r.content), nlohmann::json::parse(R"([{"name": "b", "arguments": {"x": 1}}])"));
  for (const char* top : {R"({"anyOf": [{"type": "object"}, {"type": "string"}]})", R"({"$ref": "#/$defs/A", "$defs": {"A": {}}})",
                          R"({"enum": [1]})"}) {
    auto bad = tool_call_regex(ToolCallFormat::kHermes, {{"f", top}}, false);
    ASSERT_FALSE(bad.is_ok()) << top;
    EXPECT_NE(bad.status().message().find("object schema at the parameters' top level"), std::string::npos)
        << bad.status().message();
  }
}

// tokenizer_config.json's list of named templates: "default" for chats,
// "tool_use" kept for requests with tools (transformers' choice).
TEST(ToolCalls, NamedToolUseTemplateIsKept) {
  auto tc = parse_tokenizer_config(R"({"chat_template": [{"name": "default", "template": "D"},
                                                         {"name": "tool_use", "template": "T <tool_call>"},
                                                         {"name": "rag", "template": "R"}]})",
                                   "tokenizer_config.json");
  ASSERT_TRUE(tc.is_ok()) << tc.status().message();
  EXPECT_EQ(tc->chat_template, "D");
  EXPECT_EQ(tc->tool_use_template, "T <tool_call>");
  auto plain = parse_tokenizer_config(R"({"chat_template": "P"})", "tokenizer_config.json");
  ASSERT_TRUE(plain.is_ok());
  EXPECT_EQ(plain->tool_use_template, "");
}

}  // namespace
}  // namespace tandem::model
