#include "chat_tools.h"

#include <random>
#include <set>

#include "tandem/model/guided.h"

namespace tandem::router {

namespace pb = tandem::v1;
using json = nlohmann::ordered_json;

Result<ChatTools> chat_tools(const google::protobuf::RepeatedPtrField<pb::Tool>& tools, pb::ToolChoice choice,
                             const std::string& function, std::optional<bool> parallel_calls,
                             model::ToolCallFormat format) {
  ChatTools out;
  if (choice != pb::TOOL_CHOICE_FUNCTION && !function.empty())
    return invalid_argument("tool_choice_function: only with tool_choice FUNCTION");
  if (tools.empty()) {
    if (choice == pb::TOOL_CHOICE_REQUIRED || choice == pb::TOOL_CHOICE_FUNCTION)
      return invalid_argument("tool_choice: names a tool to call, and there are no tools");
    return out;
  }
  if (static_cast<size_t>(tools.size()) > model::kMaxTools)
    return invalid_argument("tools: " + std::to_string(tools.size()) + " tools, at most " +
                            std::to_string(model::kMaxTools));
  std::vector<model::ToolSpec> specs;
  std::set<std::string> names;
  out.template_tools = json::array();
  for (int i = 0; i < tools.size(); ++i) {
    const pb::Tool& t = tools[i];
    const std::string at = "tools[" + std::to_string(i) + "]";
    if (!model::valid_tool_name(t.name()))
      return invalid_argument(at + ".name: '" + t.name() + "' is not a function name (1-64 of a-z, A-Z, 0-9, _ and -)");
    if (!names.insert(t.name()).second) return invalid_argument(at + ".name: '" + t.name() + "' is given twice");
    json fn = {{"name", t.name()}};
    if (!t.description().empty()) fn["description"] = t.description();
    if (!t.parameters().empty()) {
      json p = json::parse(t.parameters(), nullptr, /*allow_exceptions=*/false);
      if (p.is_discarded() || !p.is_object())
        return invalid_argument(at + ".parameters: must be a JSON schema (an object)");
      if (model::json_depth(p) > model::kMaxJsonInputDepth)
        return invalid_argument(at + ".parameters: nested deeper than " + std::to_string(model::kMaxJsonInputDepth));
      if (auto type = p.find("type"); type != p.end() && *type != "object")
        return invalid_argument(at + ".parameters: the arguments are a JSON object (type must be \"object\")");
      fn["parameters"] = std::move(p);
    }
    out.template_tools.push_back({{"type", "function"}, {"function", std::move(fn)}});
    specs.push_back({t.name(), t.parameters()});
  }
  if (choice == pb::TOOL_CHOICE_NONE) {
    // The model answers in words: it is not shown the tools.
    out.template_tools = nullptr;
    return out;
  }
  if (format == model::ToolCallFormat::kNone)
    return failed_precondition(
        "tools: the model's chat template writes no tool calls in a format this server reads "
        "(router.tool_call_parser: hermes or mistral names one)");
  out.parse = true;
  const bool parallel = parallel_calls.value_or(true) && choice != pb::TOOL_CHOICE_FUNCTION;
  if (!parallel) out.max_calls = 1;
  if (choice == pb::TOOL_CHOICE_AUTO) return out;
  out.forced = true;
  out.named = choice == pb::TOOL_CHOICE_FUNCTION;
  if (choice == pb::TOOL_CHOICE_FUNCTION) {
    const model::ToolSpec* one = nullptr;
    for (const auto& s : specs)
      if (s.name == function) one = &s;
    if (!one) return invalid_argument("tool_choice_function: '" + function + "' is not one of the tools");
    specs = {*one};
  }
  auto regex = model::tool_call_regex(format, specs, parallel);
  if (!regex.is_ok()) return invalid_argument(regex.status().message());
  out.regex = std::move(regex).value();
  return out;
}

Result<json> template_messages(const google::protobuf::RepeatedPtrField<pb::ChatMessage>& messages) {
  json msgs = json::array();
  for (int i = 0; i < messages.size(); ++i) {
    const pb::ChatMessage& m = messages[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (m.role().empty()) return invalid_argument(at + ".role: must be set");
    json one = {{"role", m.role()}, {"content", m.content()}};
    if (m.tool_calls_size() > 0) {
      if (m.role() != "assistant") return invalid_argument(at + ".tool_calls: only an assistant turn makes calls");
      json calls = json::array();
      for (int k = 0; k < m.tool_calls_size(); ++k) {
        const pb::ToolCall& c = m.tool_calls(k);
        const std::string cat = at + ".tool_calls[" + std::to_string(k) + "]";
        if (!model::valid_tool_name(c.name())) return invalid_argument(cat + ".name: '" + c.name() + "' is not a function name");
        json args = json::parse(c.arguments().empty() ? std::string("{}") : c.arguments(), nullptr, false);
        if (args.is_discarded() || model::json_depth(args) > model::kMaxJsonInputDepth)
          args = c.arguments();  // the template writes it as the text it is
        json call = {{"type", "function"}, {"function", {{"name", c.name()}, {"arguments", std::move(args)}}}};
        if (!c.id().empty()) call["id"] = c.id();
        calls.push_back(std::move(call));
      }
      one["tool_calls"] = std::move(calls);
    }
    if (!m.reasoning_content().empty()) one["reasoning_content"] = m.reasoning_content();
    if (!m.tool_call_id().empty()) one["tool_call_id"] = m.tool_call_id();
    if (!m.name().empty()) one["name"] = m.name();
    msgs.push_back(std::move(one));
  }
  return msgs;
}

Result<json> template_kwargs(const std::string& text) {
  json vars = json::object();
  if (text.empty()) return vars;
  vars = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (vars.is_discarded() || !vars.is_object())
    return invalid_argument("chat_template_kwargs: must be a JSON object");
  if (model::json_depth(vars) > model::kMaxJsonInputDepth)
    return invalid_argument("chat_template_kwargs: nested deeper than " + std::to_string(model::kMaxJsonInputDepth));
  for (const char* reserved : {"messages", "tools", "add_generation_prompt", "bos_token", "eos_token"})
    if (vars.contains(reserved))
      return invalid_argument(std::string("chat_template_kwargs: '") + reserved +
                              "' is the request's own (set it with its field)");
  return vars;
}

std::string new_tool_call_id(model::ToolCallFormat format) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<int> pick(0, static_cast<int>(sizeof(kChars)) - 2);
  const bool mistral = format == model::ToolCallFormat::kMistral;
  std::string id = mistral ? "" : "call_";
  for (int i = 0; i < (mistral ? 9 : 24); ++i) id += kChars[pick(rng)];
  return id;
}

}  // namespace tandem::router
