// Tool calling in the router: a Chat request's tools checked and turned into
// what the chat template reads, the grammar that forces a call, and the
// messages of earlier turns (with their calls and tool results) as the
// template expects them.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/model/tool_calls.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::router {

struct ChatTools {
  // The template's `tools` (OpenAI's shape: {"type": "function", "function":
  // {...}}); null: none offered (no tools, or tool_choice none).
  nlohmann::ordered_json template_tools;
  bool parse = false;   // calls in the output are parsed
  bool forced = false;  // the output is calls only
  bool named = false;   // forced to one named function (OpenAI then finishes with "stop")
  size_t max_calls = SIZE_MAX;  // 1 with parallel_tool_calls: false
  std::string regex;    // with forced: the grammar
};

// The request's tools checked against the model's call format: errors name
// the field (tools[i].name, tools[i].parameters, tool_choice_function);
// FAILED_PRECONDITION when tools are offered to a model with no format.
Result<ChatTools> chat_tools(const google::protobuf::RepeatedPtrField<tandem::v1::Tool>& tools,
                             tandem::v1::ToolChoice choice, const std::string& function,
                             std::optional<bool> parallel, model::ToolCallFormat format);

// The conversation as the template reads it: role, content, and an
// assistant's tool_calls (arguments as an object when they parse, as
// transformers' templates expect) or a tool turn's tool_call_id and name.
Result<nlohmann::ordered_json> template_messages(
    const google::protobuf::RepeatedPtrField<tandem::v1::ChatMessage>& messages);

// chat_template_kwargs (JSON text, "" = none): the variables it adds to the
// template's; INVALID_ARGUMENT when it is not an object or names one the
// request sets itself (messages, tools, add_generation_prompt, ...).
Result<nlohmann::ordered_json> template_kwargs(const std::string& text);

// A fresh call id: "call_" and 24 random letters and digits; for the
// mistral format 9 letters and digits (its templates refuse other ids).
std::string new_tool_call_id(model::ToolCallFormat format = model::ToolCallFormat::kHermes);

}  // namespace tandem::router
