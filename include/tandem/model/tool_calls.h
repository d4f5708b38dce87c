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
  // A JSON object, as compact JSON text; a streamed call whose arguments were
  // cut or broken keeps the text the model wrote (OpenAI's contract).
  std::string arguments;
};

// A finished answer split into what the user reads and the calls it made.
struct ToolCallParse {
  std::string content;
  std::vector<ToolCall> calls;
  // A streamed call whose arguments ended before they closed (max_tokens or a
  // stop string cut it): it stays a call, with its arguments as written.
  bool cut = false;
};

// A piece of a call as it streams. Joined by index, the pieces give each
// call: its name (first piece only) and its arguments' JSON text.
struct ToolCallDelta {
  size_t index = 0;
  std::string name;       // the call's first piece only
  std::string arguments;  // the next piece of the arguments
};

// The answer's text as it streams: content passes through until the
// format's marker (or what may be its beginning) shows up; from the marker
// on, text is held back and parsed. What does not parse as a call is given
// back as content, so no text is lost: hermes blocks one by one (a last block
// cut before its closing tag counts when its JSON is whole), mistral's array
// whole at the end.
//
// With `stream_calls`, hermes calls stream as they are written (take_deltas):
// a block that opens as {"name": "<name>", "arguments": { is a call from
// there on, and its arguments go out piece by piece, as the model writes
// them, until their object closes. Such a call stays a call whatever follows
// (OpenAI's contract: arguments are the model's text and may not parse);
// finish() gives it with compact arguments where they parse. Blocks that
// open otherwise (other key order, arguments as a string) go out whole once
// they end. Without it, everything is decided at the end of each block.
class ToolCallStream {
 public:
  // `forced`: the output holds calls only (a grammar made it so); formats
  // whose marker is a special token the tokenizer hides then expect none.
  // `max_calls`: calls past it stay text (parallel_tool_calls: false).
  ToolCallStream(ToolCallFormat format, bool forced, size_t max_calls = SIZE_MAX, bool stream_calls = false);
  // Content that may go to the user now.
  std::string push(std::string_view text);
  // The end of the answer: the rest of the content, and every call.
  ToolCallParse finish();
  // The calls' pieces ready since the last take; after finish(), the rest,
  // so that the deltas of a whole answer give every call of finish().
  // Adjacent pieces of one call come merged.
  std::vector<ToolCallDelta> take_deltas();
  bool holding() const { return calling_; }

 private:
  void advance_hermes(std::string& content);
  bool stream_arguments();
  void end_streamed_call();
  void announce(size_t index, std::string name, std::string arguments);

  ToolCallFormat format_;
  std::string marker_;
  size_t max_calls_;
  bool stream_calls_;
  bool calling_ = false;  // the marker was seen (or forced): everything after it is held
  std::string pending_;   // content that may be the start of the marker
  std::string held_;      // the calls' text not decided yet
  std::vector<ToolCall> calls_;       // decided and streaming calls, in order
  std::vector<ToolCallDelta> deltas_;  // not taken yet
  // The streaming call's arguments: scanned as JSON text to find their end.
  bool in_call_ = false, args_closed_ = false, in_string_ = false, escaped_ = false;
  size_t depth_ = 0;
  bool cut_ = false;
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
