// Chat templates: a Jinja2 subset interpreter, enough for HuggingFace chat
// templates, rendering the way transformers does (trim_blocks, lstrip_blocks,
// loop controls, raise_exception, a tojson that does not escape HTML).
// Values are nlohmann::ordered_json. Errors are INVALID_ARGUMENT with the line.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem::model {

class JinjaTemplate {
 public:
  ~JinjaTemplate();
  JinjaTemplate(JinjaTemplate&&) noexcept;
  JinjaTemplate& operator=(JinjaTemplate&&) noexcept;

  static Result<JinjaTemplate> parse(std::string_view source);
  // Renders with `context` as the global variables (an object).
  Result<std::string> render(const nlohmann::ordered_json& context) const;

  struct Node;

 private:
  JinjaTemplate();
  std::shared_ptr<Node> root_;
};

// Renders a chat template as transformers' apply_chat_template(tokenize=False) does.
Result<std::string> render_chat(const std::string& template_source, const nlohmann::ordered_json& messages,
                                bool add_generation_prompt, const std::string& bos_token,
                                const std::string& eos_token, const nlohmann::ordered_json& extra = nlohmann::ordered_json::object());

}  // namespace tandem::model
