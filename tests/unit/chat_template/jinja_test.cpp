// Chat templates rendered byte for byte as Python Jinja2 renders them with
// transformers' settings (fixtures from scripts/fixtures/make_chat_template_fixtures.py).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "tandem/model/jinja.h"
#include "tandem/model/make_model.h"

namespace tandem::model {
namespace {

using json = nlohmann::ordered_json;

json load_cases() {
  std::ifstream in(std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/chat_template/cases.json");
  return json::parse(in);
}

TEST(ChatTemplate, MatchesPythonJinja2OnEveryFixtureCase) {
  json fx = load_cases();
  int compared = 0;
  for (const auto& c : fx["cases"]) {
    const std::string name = c["template"];
    const std::string src = fx["templates"][name];
    json ctx = c["extra"];
    ctx["messages"] = fx["conversations"][c["conversation"].get<size_t>()];
    ctx["add_generation_prompt"] = c["add_generation_prompt"];
    ctx["bos_token"] = "<s>";
    ctx["eos_token"] = "</s>";
    auto t = JinjaTemplate::parse(src);
    ASSERT_TRUE(t.is_ok()) << name << ": " << t.status().to_string();
    auto out = t->render(ctx);
    const std::string where = name + " conversation " + c["conversation"].dump() + " agp " +
                              c["add_generation_prompt"].dump() + " extra " + c["extra"].dump();
    if (c["error"].is_null()) {
      ASSERT_TRUE(out.is_ok()) << where << ": " << out.status().to_string();
      EXPECT_EQ(*out, c["output"].get<std::string>()) << where;
    } else {
      ASSERT_FALSE(out.is_ok()) << where << " rendered instead of raising";
      EXPECT_NE(out.status().message().find(c["error"].get<std::string>()), std::string::npos)
          << out.status().message();
    }
    ++compared;
  }
  EXPECT_EQ(compared, 100);
}

TEST(ChatTemplate, ShippedDefaultTemplateRendersChatML) {
  json msgs = json::array({{{"role", "user"}, {"content", "Hi"}}});
  auto out = render_chat(std::string(default_chat_template()), msgs, true, "", "");
  ASSERT_TRUE(out.is_ok()) << out.status().to_string();
  EXPECT_EQ(*out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // The fixtures rendered this very template with Python Jinja2 (tools,
  // tool calls and tool results included).
  EXPECT_EQ(load_cases()["templates"]["tandem_default"].get<std::string>(), default_chat_template())
      << "the fixtures hold another default template: rerun scripts/fixtures/make_chat_template_fixtures.py";
}

TEST(ChatTemplate, BadTemplatesAreErrorsWithTheLine) {
  for (const char* bad : {"{% if x %}unclosed", "{{ x | no_such_filter }}", "line1\n{% frobnicate %}",
                          "{{ 'unterminated }}", "{% for x in %}{% endfor %}", "{{ x.( }}"}) {
    auto t = JinjaTemplate::parse(bad);
    Status st = t.is_ok() ? t->render(json::object()).status() : t.status();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("line"), std::string::npos) << st.message();
  }
}

TEST(ChatTemplate, RunawayLoopsAreStopped) {
  auto t = JinjaTemplate::parse("{% for a in range(2000) %}{% for b in range(2000) %}x{% endfor %}{% endfor %}");
  ASSERT_TRUE(t.is_ok());
  auto out = t->render(json::object());
  ASSERT_FALSE(out.is_ok());
  EXPECT_NE(out.status().message().find("iterations"), std::string::npos) << out.status().message();
}

// Random conversations through Python Jinja2 when it is installed.
TEST(ChatTemplate, LiveCrossCheckWithPythonJinja2) {
  if (std::system("python3 -c 'import jinja2' >/dev/null 2>&1") != 0) GTEST_SKIP() << "python3 with jinja2 not available";
  const std::string dir = ::testing::TempDir();
  const std::string out_path = dir + "/tandem_live_cases.json";
  const std::string cmd = "python3 " + std::string(TANDEM_SOURCE_DIR) +
                          "/scripts/fixtures/make_chat_template_fixtures.py " + out_path + " >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(out_path);
  json fx = json::parse(in);
  std::remove(out_path.c_str());
  for (const auto& c : fx["cases"]) {
    if (!c["error"].is_null()) continue;
    json ctx = c["extra"];
    ctx["messages"] = fx["conversations"][c["conversation"].get<size_t>()];
    ctx["add_generation_prompt"] = c["add_generation_prompt"];
    ctx["bos_token"] = "<s>";
    ctx["eos_token"] = "</s>";
    auto t = JinjaTemplate::parse(fx["templates"][c["template"].get<std::string>()].get<std::string>());
    ASSERT_TRUE(t.is_ok());
    EXPECT_EQ(*t->render(ctx), c["output"].get<std::string>());
  }
}

}  // namespace
}  // namespace tandem::model
