#include "tandem/model/tool_calls.h"

#include <algorithm>
#include <utility>
#include <nlohmann/json.hpp>

#include "tag_text.h"
#include "tandem/model/guided.h"

namespace tandem::model {
namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kMistralMarker = "[TOOL_CALLS]";

// One call object {"name": ..., "arguments": {...}}; arguments written as a
// JSON string holding an object are taken too (models do both).
bool read_call(const json& j, ToolCall& out) {
  if (!j.is_object()) return false;
  auto name = j.find("name");
  auto args = j.find("arguments");
  if (args == j.end()) args = j.find("parameters");
  if (name == j.end() || !name->is_string() || !valid_tool_name(name->get<std::string>())) return false;
  json a = json::object();
  if (args != j.end()) {
    if (args->is_string()) {
      a = json::parse(args->get<std::string>(), nullptr, /*allow_exceptions=*/false);
      if (a.is_discarded()) return false;
    } else {
      a = *args;
    }
  }
  // dump() recurses: deep arguments are not a call.
  if (!a.is_object() || json_depth(a) > kMaxJsonInputDepth) return false;
  out.name = name->get<std::string>();
  out.arguments = a.dump(-1, ' ', false, json::error_handler_t::replace);
  return true;
}

bool parse_json(std::string_view text, json& out) {
  out = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  return !out.is_discarded() && json_depth(out) <= kMaxJsonInputDepth;
}

// Blocks of <tool_call> JSON </tool_call>. Each block stands alone: a good
// one is a call, anything else (a malformed block, text between or after
// the blocks) goes back to `rest`. A last block cut before its closing tag
// (max_tokens, a stop string) is a call when its JSON is whole.
void parse_hermes(std::string_view text, size_t max_calls, std::vector<ToolCall>& calls, std::string& rest) {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t open = text.find(kHermesOpen, pos);
    if (open == std::string_view::npos) break;
    const std::string_view between = text.substr(pos, open - pos);
    const size_t body = open + kHermesOpen.size();
    // A block ends at its closing tag, or where the next one opens (a block
    // missing its closing tag does not swallow the next).
    size_t end = std::min(text.find(kHermesClose, body), text.find(kHermesOpen, body));
    if (end == std::string_view::npos) end = text.size();
    const size_t next = text.compare(end, kHermesClose.size(), kHermesClose) == 0 ? end + kHermesClose.size() : end;
    std::string_view json_text = trim_blanks(text.substr(body, end - body));
    if (end == text.size()) json_text = trim_blanks(json_text.substr(0, json_text.size() - partial_tag(json_text, kHermesClose)));
    json j;
    ToolCall c;
    if (calls.size() < max_calls && parse_json(json_text, j) && read_call(j, c)) {
      calls.push_back(std::move(c));
      if (!trim_blanks(between).empty()) rest += between;
    } else {
      rest += between;  // with its separator: text stays as written
      rest += text.substr(open, next - open);
    }
    pos = next;
  }
  if (pos < text.size() && !trim_blanks(text.substr(pos)).empty()) rest += text.substr(pos);
}

// [TOOL_CALLS] (absent when forced) then an array of calls, or one call;
// all of them or none. Calls past `max_calls` go back to `rest` as a JSON array.
bool parse_mistral(std::string_view text, size_t max_calls, std::vector<ToolCall>& calls, std::string& rest) {
  text = trim_blanks(text);
  if (text.substr(0, kMistralMarker.size()) == kMistralMarker) text = trim_blanks(text.substr(kMistralMarker.size()));
  json j;
  if (!parse_json(text, j)) return false;
  if (j.is_object()) j = json::array({j});
  if (!j.is_array() || j.empty()) return false;
  json extra = json::array();
  for (const json& one : j) {
    ToolCall c;
    if (!read_call(one, c)) return false;
    if (calls.size() < max_calls) calls.push_back(std::move(c));
    else extra.push_back(one);
  }
  if (!extra.empty()) rest = extra.dump(-1, ' ', false, json::error_handler_t::replace);
  return true;
}
enum class Opening { kMore, kNo, kYes };

// Whether a hermes block's body so far opens as a call whose arguments can
// stream: {"name": "<name>", "arguments": { (blanks allowed between).
// kYes: `name` set, `args_at` the arguments' `{`.
Opening match_opening(std::string_view text, std::string& name, size_t& args_at) {
  size_t i = 0;
  const auto blanks = [&] {
    while (i < text.size() && is_blank(text[i])) ++i;
  };
  const auto literal = [&](std::string_view l) {
    for (char c : l) {
      if (i == text.size()) return Opening::kMore;
      if (text[i++] != c) return Opening::kNo;
    }
    return Opening::kYes;
  };
  for (std::string_view l : {"{", R"("name")", ":", "\""}) {
    blanks();
    if (Opening o = literal(l); o != Opening::kYes) return o;
  }
  const size_t start = i;
  while (i < text.size() && text[i] != '"') {
    if (i - start >= 64 || !valid_tool_name(text.substr(i, 1))) return Opening::kNo;
    ++i;
  }
  if (i == text.size()) return Opening::kMore;
  if (i == start) return Opening::kNo;
  name = std::string(text.substr(start, i - start));
  ++i;
  for (std::string_view l : {",", R"("arguments")", ":", "{"}) {
    blanks();
    if (Opening o = literal(l); o != Opening::kYes) return o;
  }
  args_at = i - 1;
  return Opening::kYes;
}

// Characters JSON may hold outside strings (its punctuation, numbers,
// true/false/null); anything else (a tag's `<`, prose) ends a streaming
// call's arguments even when their braces never closed.
bool json_outside_string(char c) {
  return is_blank(c) || (c >= '0' && c <= '9') || std::string_view("{}[],:\"-+.eEtrufalsn").find(c) != std::string_view::npos;
}

// Where the text after a streamed call's arguments closes the call object
// (other keys may come first: `, "id": 3}`): the position after its `}`,
// npos when it does not close. Strings are skipped whole.
size_t call_object_end(std::string_view tail) {
  size_t depth = 1;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < tail.size(); ++i) {
    const char c = tail[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if ((c == '}' || c == ']') && --depth == 0) {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// What a streamed call's block holds after its arguments that is not the
// rest of the call object (`}`, or more keys and then `}`): text the user
// gets back, so none is lost. The object's rest cut short holds none.
std::string_view block_leftover(std::string_view tail) {
  tail = trim_blanks(tail);
  if (!tail.empty() && (tail.front() == '}' || tail.front() == ',')) {
    const size_t end = call_object_end(tail.front() == '}' ? tail : tail.substr(1));
    if (end == std::string_view::npos) return {};
    tail = trim_blanks(tail.substr(end + (tail.front() == '}' ? 0 : 1)));
  }
  return trim_blanks(tail.substr(0, tail.size() - partial_tag(tail, kHermesClose)));
}
}  // namespace

Result<ToolCallFormat> tool_call_format(std::string_view name, std::string_view chat_template) {
  if (name == "hermes") return ToolCallFormat::kHermes;
  if (name == "mistral") return ToolCallFormat::kMistral;
  if (name == "none") return ToolCallFormat::kNone;
  if (name == "auto" || name.empty()) {
    // Hermes's JSON body, not another format in the same tags (Qwen3-Coder's XML).
    if (chat_template.find(kHermesOpen) != std::string_view::npos &&
        chat_template.find(R"({"name")") != std::string_view::npos)
      return ToolCallFormat::kHermes;
    if (chat_template.find(kMistralMarker) != std::string_view::npos) return ToolCallFormat::kMistral;
    return ToolCallFormat::kNone;
  }
  return invalid_argument("tool call parser '" + std::string(name) + "': must be auto, hermes, mistral or none");
}

std::string_view tool_call_marker(ToolCallFormat f) {
  switch (f) {
    case ToolCallFormat::kHermes: return kHermesOpen;
    case ToolCallFormat::kMistral: return kMistralMarker;
    case ToolCallFormat::kNone: break;
  }
  return {};
}

bool valid_tool_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

std::vector<std::string_view> tool_call_tags(ToolCallFormat f) {
  switch (f) {
    case ToolCallFormat::kHermes: return {kHermesOpen, kHermesClose};
    case ToolCallFormat::kMistral: return {kMistralMarker};
    case ToolCallFormat::kNone: break;
  }
  return {};
}

ToolCallStream::ToolCallStream(ToolCallFormat format, bool forced, size_t max_calls, bool stream_calls)
    : format_(format),
      marker_(tool_call_marker(format)),
      max_calls_(max_calls),
      stream_calls_(stream_calls && format == ToolCallFormat::kHermes),
      calling_(forced && format != ToolCallFormat::kNone) {}

std::string ToolCallStream::push(std::string_view text) {
  std::string out;
  if (calling_) {
    held_ += text;
  } else {
    if (marker_.empty()) return std::string(text);
    pending_ += text;
    if (const size_t at = pending_.find(marker_); at != std::string::npos) {
      out = pending_.substr(0, at);
      held_ = pending_.substr(at);
      pending_.clear();
      calling_ = true;
    } else {
      const size_t keep = partial_tag(pending_, marker_);
      out = pending_.substr(0, pending_.size() - keep);
      pending_.erase(0, pending_.size() - keep);
      return out;
    }
  }
  if (stream_calls_) advance_hermes(out);
  return out;
}

void ToolCallStream::announce(size_t index, std::string name, std::string arguments) {
  if (!deltas_.empty() && deltas_.back().index == index && name.empty()) {
    deltas_.back().arguments += arguments;
    return;
  }
  deltas_.push_back({index, std::move(name), std::move(arguments)});
}

std::vector<ToolCallDelta> ToolCallStream::take_deltas() { return std::exchange(deltas_, {}); }

// Decides what the held text allows: blocks that ended, a block that opens
// as a streamable call, the arguments of the call that streams.
void ToolCallStream::advance_hermes(std::string& content) {
  for (;;) {
    if (in_call_) {
      if (!args_closed_ && !stream_arguments()) return;
      // The call's block ends at its closing tag or where the next opens.
      const size_t close = held_.find(kHermesClose), open = held_.find(kHermesOpen);
      const size_t end = std::min(close, open);
      if (end == std::string::npos) return;
      content += block_leftover(std::string_view(held_).substr(0, end));
      held_.erase(0, end == close ? close + kHermesClose.size() : open);
      end_streamed_call();
      continue;
    }
    const size_t open = held_.find(kHermesOpen);
    if (open == std::string::npos) return;  // text after the blocks waits for the next one or the end
    const size_t body = open + kHermesOpen.size();
    std::string name;
    size_t args_at = 0;
    const Opening o = calls_.size() < max_calls_ ? match_opening(std::string_view(held_).substr(body), name, args_at)
                                                 : Opening::kNo;
    if (o == Opening::kYes) {
      const std::string_view between = std::string_view(held_).substr(0, open);
      if (!trim_blanks(between).empty()) content += between;
      held_.erase(0, body + args_at);
      calls_.push_back({std::move(name), {}});
      announce(calls_.size() - 1, calls_.back().name, "");
      in_call_ = true;
      args_closed_ = in_string_ = escaped_ = false;
      depth_ = 0;
      continue;
    }
    const size_t end = std::min(held_.find(kHermesClose, body), held_.find(kHermesOpen, body));
    if (end == std::string::npos) return;  // the block is still being written
    // A block that is not a streamable call, whole: a call or text.
    const size_t next = held_.compare(end, kHermesClose.size(), kHermesClose) == 0 ? end + kHermesClose.size() : end;
    std::vector<ToolCall> got;
    std::string rest;
    parse_hermes(std::string_view(held_).substr(0, next), max_calls_ - calls_.size(), got, rest);
    for (ToolCall& c : got) {
      calls_.push_back(std::move(c));
      announce(calls_.size() - 1, calls_.back().name, calls_.back().arguments);
    }
    content += rest;
    held_.erase(0, next);
  }
}

// Scans the held text as the streaming call's arguments: what belongs to
// them goes out. True once their object closed, stopped being JSON, or the
// block ended (its closing tag or the next block's opening one, even inside
// a string: a block ends at its tag, as when it is read whole).
bool ToolCallStream::stream_arguments() {
  const size_t tag = std::min(held_.find(kHermesClose), held_.find(kHermesOpen));
  // Text that may be the start of a tag waits until it is known.
  const size_t limit = tag != std::string::npos
                           ? tag
                           : held_.size() - std::max(partial_tag(held_, kHermesClose), partial_tag(held_, kHermesOpen));
  size_t i = 0;
  while (i < limit) {
    const char c = held_[i];
    if (in_string_) {
      ++i;
      if (escaped_) escaped_ = false;
      else if (c == '\\') escaped_ = true;
      else if (c == '"') in_string_ = false;
      continue;
    }
    if (!json_outside_string(c)) {
      args_closed_ = true;
      break;
    }
    ++i;
    if (c == '"') {
      in_string_ = true;
    } else if (c == '{' || c == '[') {
      ++depth_;
    } else if ((c == '}' || c == ']') && --depth_ == 0) {
      args_closed_ = true;
      break;
    }
  }
  if (i == tag) args_closed_ = true;
  if (i > 0) {
    calls_.back().arguments.append(held_, 0, i);
    announce(calls_.size() - 1, "", held_.substr(0, i));
    held_.erase(0, i);
  }
  return args_closed_;
}

// The streamed call is whole: its arguments as compact JSON where they parse.
void ToolCallStream::end_streamed_call() {
  ToolCall& c = calls_.back();
  json j;
  if (args_closed_ && parse_json(c.arguments, j) && j.is_object())
    c.arguments = j.dump(-1, ' ', false, json::error_handler_t::replace);
  in_call_ = false;
}

ToolCallParse ToolCallStream::finish() {
  ToolCallParse r;
  r.content = std::move(pending_);
  pending_.clear();
  if (stream_calls_) {
    if (in_call_) {
      // Cut inside the call's block: its arguments so far are the call's.
      if (!args_closed_) cut_ = true;
      r.content += block_leftover(held_);
      held_.clear();
      end_streamed_call();
    }
    // What is left: a last block cut before its closing tag, text after the blocks.
    std::vector<ToolCall> got;
    std::string rest;
    parse_hermes(held_, max_calls_ - calls_.size(), got, rest);
    r.content += calls_.empty() && got.empty() ? held_ : rest;
    for (ToolCall& c : got) {
      calls_.push_back(std::move(c));
      announce(calls_.size() - 1, calls_.back().name, calls_.back().arguments);
    }
    held_.clear();
    r.calls = calls_;
    r.cut = cut_;
    return r;
  }
  if (held_.empty()) return r;
  if (format_ == ToolCallFormat::kHermes) {
    std::string rest;
    parse_hermes(held_, max_calls_, r.calls, rest);
    r.content += r.calls.empty() ? held_ : rest;  // no call at all: the text exactly as written
  } else {
    std::string rest;
    if (parse_mistral(held_, max_calls_, r.calls, rest)) {
      r.content += rest;
    } else {
      r.calls.clear();
      r.content += held_;  // not calls after all: the user gets the text
    }
  }
  held_.clear();
  for (size_t i = 0; i < r.calls.size(); ++i) announce(i, r.calls[i].name, r.calls[i].arguments);
  return r;
}

ToolCallParse parse_tool_calls(ToolCallFormat format, std::string_view text, bool forced, size_t max_calls) {
  ToolCallStream s(format, forced, max_calls);
  std::string content = s.push(text);
  ToolCallParse r = s.finish();
  r.content = content + r.content;
  return r;
}

Result<std::string> tool_call_regex(ToolCallFormat format, const std::vector<ToolSpec>& tools, bool parallel) {
  if (format == ToolCallFormat::kNone) return invalid_argument("tool calls: the model has no tool call format");
  if (tools.empty()) return invalid_argument("tool calls: no tools to call");
  if (tools.size() > kMaxTools)
    return invalid_argument("tools: " + std::to_string(tools.size()) + " tools, at most " + std::to_string(kMaxTools));
  // The call object as json_schema_to_regex writes objects (an optional
  // space after `{`, `:` and `,` and before `}`), with the arguments' regex
  // made from the tool's own schema so that its $refs resolve.
  const std::string ws = "\\x20?";
  std::string alternatives;
  for (size_t i = 0; i < tools.size(); ++i) {
    const ToolSpec& t = tools[i];
    const std::string where = "tools[" + std::to_string(i) + "] (" + t.name + ")";
    json params = json{{"type", "object"}};
    if (!t.parameters.empty()) {
      params = json::parse(t.parameters, nullptr, /*allow_exceptions=*/false);
      if (params.is_discarded() || !params.is_object())
        return invalid_argument(where + ": parameters must be a JSON schema object");
      if (json_depth(params) > kMaxJsonInputDepth)
        return invalid_argument(where + ": parameters nest deeper than " + std::to_string(kMaxJsonInputDepth));
      // The arguments are an object: the schema's top level says so or leaves
      // the type open ({}); a top level the converter resolves before `type`
      // could let the model write something else.
      for (const char* key : {"$ref", "anyOf", "oneOf", "allOf", "enum", "const"})
        if (params.contains(key))
          return invalid_argument(where + ": a forced call needs an object schema at the parameters' top level, not '" +
                                  key + "'");
      if (!params.contains("type")) params["type"] = "object";
    }
    auto args = json_schema_to_regex(params.dump());
    if (!args.is_ok()) return invalid_argument(where + ": " + args.status().message());
    const std::string object = "\\{" + ws + regex_escape(R"("name":)") + ws + regex_escape(json(t.name).dump()) + "," +
                               ws + regex_escape(R"("arguments":)") + ws + *args + ws + "\\}";
    const std::string one = format == ToolCallFormat::kHermes
                                ? regex_escape(std::string(kHermesOpen) + "\n") + object +
                                      regex_escape("\n" + std::string(kHermesClose))
                                : object;
    alternatives += (i ? "|" : "") + one;
    if (alternatives.size() > kMaxToolRegexBytes)
      return invalid_argument("tools: the grammar of a forced call passes " + std::to_string(kMaxToolRegexBytes) +
                              " bytes at " + where + " (fewer or simpler tools)");
  }
  const std::string any = "(?:" + alternatives + ")";
  std::string out;
  if (format == ToolCallFormat::kHermes) {
    // Several calls: the alternatives once, repeated.
    out = parallel ? "(?:" + any + "\\n?)+" : any;
  } else {
    // Mistral: the marker is a special token a guide cannot write; the array follows it.
    out = "\\x20?\\[" + (parallel ? "(?:" + any + ",\\x20?)*" + any : any) + "\\]";
  }
  if (out.size() > kMaxToolRegexBytes)
    return invalid_argument("tools: the grammar of a forced call is " + std::to_string(out.size()) +
                            " bytes, the limit is " + std::to_string(kMaxToolRegexBytes) + " (fewer or simpler tools)");
  return out;
}

}  // namespace tandem::model
