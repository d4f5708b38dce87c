// Tool calling: how a model writes a function call in its output, recognised
// as the text streams, and a grammar that makes it write one. The call
// formats are the models' own conventions:
//   hermes  (Qwen2.5, Qwen2-MoE, Qwen3-MoE, Hermes): one block per call,
//           <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
//   mistral (Mixtral-8x22B-Instruct, Mistral v3 tokenizers): one marker, then
//           a JSON array: [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::model {

enum class ToolCallFormat { kNone, kHermes, kMistral };

// "hermes" | "mistral" | "none", or "auto": the format the chat template
// writes calls in (it names the marker), kNone when it writes none.
// INVALID_ARGUMENT for another name.
Result<ToolCallFormat> tool_call_format(std::string_view name, std::string_view chat_template);
// The text that starts the calls ("<tool_call>", "[TOOL_CALLS]").
std::string_view tool_call_marker(ToolCallFormat f);
// Every tag of the format (hermes: the opening and the closing one): where
// a tokenizer holds one as a special token that decoding skips, the caller
// puts its text back for the parser.
std::vector<std::string_view> tool_call_tags(ToolCallFormat f);

// Tools a request may offer (OpenAI's limit), and the size of a forced
// call's grammar (compile_regex's pattern limit).
inline constexpr size_t kMaxTools = 128;
inline constexpr size_t kMaxToolRegexBytes = size_t{1} << 17;

struct ToolCall {
  std::string name;
  std::string arguments;  // a JSON object, as compact JSON text
};

// A finished answer split into what the user reads and the calls it made.
struct ToolCallParse {
  std::string content;
  std::vector<ToolCall> calls;
};

// The answer's text as it streams: content passes through until the
// format's marker (or what may be its beginning) shows up; from the marker
// on, text is held back and parsed at the end. What does not parse as a call
// is given back as content, so no text is lost: hermes blocks one by one (a
// last block cut before its closing tag counts when its JSON is whole),
// mistral's array whole.
class ToolCallStream {
 public:
  // `forced`: the output holds calls only (a grammar made it so); formats
  // whose marker is a special token the tokenizer hides then expect none.
  // `max_calls`: calls past it stay text (parallel_tool_calls: false).
  ToolCallStream(ToolCallFormat format, bool forced, size_t max_calls = SIZE_MAX);
  // Content that may go to the user now.
  std::string push(std::string_view text);
  // The end of the answer: the rest of the content, and the calls.
  ToolCallParse finish();
  bool holding() const { return calling_; }

 private:
  ToolCallFormat format_;
  std::string marker_;
  size_t max_calls_;
  bool calling_ = false;  // the marker was seen (or forced): everything after it is held
  std::string pending_;   // content that may be the start of the marker
  std::string held_;      // the calls' text, marker included
};

// The whole text at once (a ToolCallStream fed once).
ToolCallParse parse_tool_calls(ToolCallFormat format, std::string_view text, bool forced = false,
                               size_t max_calls = SIZE_MAX);

// A function the model may call: its name and its arguments' JSON schema
// (text; empty: any JSON object).
struct ToolSpec {
  std::string name;
  std::string parameters;
};
// A regular expression (compile_regex's syntax) for output that is nothing
// but calls of `tools` in the format: one call, or with `parallel` one or
// more. Arguments follow each tool's schema (json_schema_to_regex, an
// object where the schema gives no type; its errors name the tool).
// INVALID_ARGUMENT for kNone, no tools, more than kMaxTools or a grammar past
// kMaxToolRegexBytes.
Result<std::string> tool_call_regex(ToolCallFormat format, const std::vector<ToolSpec>& tools, bool parallel);

// Names OpenAI accepts for a function: 1-64 of [a-zA-Z0-9_-].
bool valid_tool_name(std::string_view name);

}  // namespace tandem::model
