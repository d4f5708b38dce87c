// A Chat request's tools as the router checks them: what the template gets,
// when a grammar forces a call, and the errors, by field.
#include "chat_tools.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>

namespace tandem::router {
namespace {

namespace pb = tandem::v1;
using model::ToolCallFormat;

google::protobuf::RepeatedPtrField<pb::Tool> tools(std::initializer_list<std::pair<const char*, const char*>> list) {
  google::protobuf::RepeatedPtrField<pb::Tool> out;
  for (const auto& [name, params] : list) {
    auto* t = out.Add();
    t->set_name(name);
    t->set_parameters(params);
  }
  return out;
}

TEST(ChatTools, ChoiceDecidesPromptParsingAndGrammar) {
  const auto two = tools({{"get_weather", R"({"type": "object", "properties": {"city": {"type": "string"}}})"}, {"now", ""}});
  auto none = chat_tools(two, pb::TOOL_CHOICE_NONE, "", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_TRUE(none.is_ok());
  EXPECT_TRUE(none->template_tools.is_null());  // the model is not shown them
  EXPECT_FALSE(none->parse);
  auto automatic = chat_tools(two, pb::TOOL_CHOICE_AUTO, "", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_TRUE(automatic.is_ok());
  ASSERT_EQ(automatic->template_tools.size(), 2u);
  EXPECT_EQ(automatic->template_tools[0]["function"]["parameters"]["properties"]["city"]["type"], "string");
  EXPECT_FALSE(automatic->template_tools[1]["function"].contains("parameters"));
  EXPECT_TRUE(automatic->parse);
  EXPECT_FALSE(automatic->forced);
  auto named = chat_tools(two, pb::TOOL_CHOICE_FUNCTION, "now", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_TRUE(named.is_ok());
  EXPECT_TRUE(named->forced);
  EXPECT_TRUE(named->named);
  EXPECT_EQ(named->max_calls, 1u);
  auto required = chat_tools(two, pb::TOOL_CHOICE_REQUIRED, "", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_TRUE(required.is_ok());
  EXPECT_FALSE(required->named);
  EXPECT_EQ(required->max_calls, SIZE_MAX);
  auto single = chat_tools(two, pb::TOOL_CHOICE_AUTO, "", false, ToolCallFormat::kHermes);
  ASSERT_TRUE(single.is_ok());
  EXPECT_EQ(single->max_calls, 1u);  // parallel_tool_calls: false
  EXPECT_NE(named->regex.find("now"), std::string::npos);
  EXPECT_EQ(named->regex.find("get_weather"), std::string::npos);
  // No tools and nothing asked: nothing to do, whatever the model.
  auto nothing = chat_tools({}, pb::TOOL_CHOICE_AUTO, "", std::nullopt, ToolCallFormat::kNone);
  ASSERT_TRUE(nothing.is_ok());
  EXPECT_FALSE(nothing->parse);
  EXPECT_TRUE(nothing->template_tools.is_null());
}

TEST(ChatTools, ErrorsNameTheField) {
  const auto one = tools({{"f", ""}});
  auto no_format = chat_tools(one, pb::TOOL_CHOICE_AUTO, "", std::nullopt, ToolCallFormat::kNone);
  ASSERT_FALSE(no_format.is_ok());
  EXPECT_EQ(no_format.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(no_format.status().message().find("router.tool_call_parser"), std::string::npos);
  // tool_choice none needs no format: the tools are not used.
  EXPECT_TRUE(chat_tools(one, pb::TOOL_CHOICE_NONE, "", std::nullopt, ToolCallFormat::kNone).is_ok());
  const std::pair<google::protobuf::RepeatedPtrField<pb::Tool>, std::string> cases[] = {
      {tools({{"", ""}}), "tools[0].name"},
      {tools({{"f", ""}, {"f", ""}}), "tools[1].name: 'f' is given twice"},
      {tools({{"f", "[]"}}), "tools[0].parameters"},
      {tools({{"f", "{"}}), "tools[0].parameters"},
      {tools({{"f", R"({"type": "string"})"}}), "tools[0].parameters: the arguments are a JSON object"},
  };
  for (const auto& [list, want] : cases) {
    auto r = chat_tools(list, pb::TOOL_CHOICE_AUTO, "", std::nullopt, ToolCallFormat::kHermes);
    ASSERT_FALSE(r.is_ok()) << want;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  }
  auto unknown = chat_tools(one, pb::TOOL_CHOICE_FUNCTION, "g", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().message().find("tool_choice_function: 'g'"), std::string::npos);
  auto stray = chat_tools(one, pb::TOOL_CHOICE_AUTO, "f", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_FALSE(stray.is_ok());
  EXPECT_NE(stray.status().message().find("tool_choice_function"), std::string::npos);
  auto empty = chat_tools({}, pb::TOOL_CHOICE_REQUIRED, "", std::nullopt, ToolCallFormat::kHermes);
  ASSERT_FALSE(empty.is_ok());
  EXPECT_NE(empty.status().message().find("no tools"), std::string::npos);
}

TEST(ChatTools, TemplateKwargsAreAnObjectOfNewNames) {
  auto none = template_kwargs("");
  ASSERT_TRUE(none.is_ok());
  EXPECT_TRUE(none->empty());
  auto some = template_kwargs(R"({"enable_thinking": false, "custom": [1]})");
  ASSERT_TRUE(some.is_ok()) << some.status().message();
  EXPECT_EQ((*some)["enable_thinking"], false);
  for (const char* bad : {"[1]", "{", R"({"messages": []})", R"({"tools": null})", R"({"add_generation_prompt": false})"}) {
    auto r = template_kwargs(bad);
    ASSERT_FALSE(r.is_ok()) << bad;
    EXPECT_NE(r.status().message().find("chat_template_kwargs"), std::string::npos) << r.status().message();
  }
}

TEST(ChatTools, MessagesCarryCallsAndResults) {
  google::protobuf::RepeatedPtrField<pb::ChatMessage> msgs;
  auto* a = msgs.Add();
  a->set_role("assistant");
  auto* c = a->add_tool_calls();
  c->set_id("call_1");
  c->set_name("f");
  c->set_arguments(R"({"x": [1, 2]})");
  auto* raw = a->add_tool_calls();
  raw->set_name("g");
  raw->set_arguments("not json");
  a->set_reasoning_content("thought");
  auto* t = msgs.Add();
  t->set_role("tool");
  t->set_content("42");
  t->set_tool_call_id("call_1");
  auto m = template_messages(msgs);
  ASSERT_TRUE(m.is_ok()) << m.status().message();
  const auto& calls = (*m)[0]["tool_calls"];
  EXPECT_EQ(calls[0]["id"], "call_1");
  EXPECT_EQ(calls[0]["function"]["arguments"]["x"][1], 2);  // an object for the template
  EXPECT_EQ(calls[1]["function"]["arguments"], "not json");  // text that does not parse stays text
  EXPECT_EQ((*m)[0]["reasoning_content"], "thought");
  EXPECT_FALSE((*m)[1].contains("reasoning_content"));
  EXPECT_EQ((*m)[1]["tool_call_id"], "call_1");
  EXPECT_FALSE((*m)[1].contains("name"));

  msgs[1].add_tool_calls()->set_name("f");
  auto bad = template_messages(msgs);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("messages[1].tool_calls"), std::string::npos);
  EXPECT_TRUE(new_tool_call_id().rfind("call_", 0) == 0 && new_tool_call_id().size() == 29);
  EXPECT_NE(new_tool_call_id(), new_tool_call_id());
  const std::string mistral = new_tool_call_id(ToolCallFormat::kMistral);
  EXPECT_EQ(mistral.size(), 9u);
  EXPECT_TRUE(std::all_of(mistral.begin(), mistral.end(), [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)); }));
}

}  // namespace
}  // namespace tandem::router
