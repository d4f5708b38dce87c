#include "tandem/model/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace tandem::model {

using nlohmann::json;
namespace fs = std::filesystem;

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {
// tokenizer_config.json writes special tokens either as a string or as {"content": ...}.
std::string token_string(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null()) return {};
  const json& v = j.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  return {};
}
}  // namespace

Result<TokenizerConfig> parse_tokenizer_config(std::string_view text, const std::string& source) {
  json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(source + ": not a valid JSON object");
  TokenizerConfig tc;
  tc.bos_token = token_string(j, "bos_token");
  tc.eos_token = token_string(j, "eos_token");
  if (j.contains("add_bos_token") && j.at("add_bos_token").is_boolean()) tc.add_bos_token = j.at("add_bos_token");
  if (j.contains("chat_template")) {
    const json& t = j.at("chat_template");
    if (t.is_string()) {
      tc.chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // a list of {name, template}: "default", and "tool_use" for tools
      for (const json& e : t) {
        if (!e.is_object() || !e.contains("template") || !e.at("template").is_string()) continue;
        const std::string name = e.value("name", "");
        if (name == "default") tc.chat_template = e.at("template").get<std::string>();
        if (name == "tool_use") tc.tool_use_template = e.at("template").get<std::string>();
      }
    } else if (!t.is_null()) {
      return invalid_argument(source + ": key 'chat_template' must be a string or a list of {name, template}");
    }
  }
  return tc;
}

Result<Checkpoint> Checkpoint::open(const std::string& dir) {
  if (!fs::is_directory(dir)) return not_found(dir + ": not a model directory");
  Checkpoint ck;
  ck.dir = dir;
  TANDEM_ASSIGN_OR_RETURN(ck.config, ModelConfig::from_file((fs::path(dir) / "config.json").string()));
  TANDEM_ASSIGN_OR_RETURN(ck.weights, WeightStore::open_dir(dir));

  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  TANDEM_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::from_file(tok_path));
  ck.tokenizer = std::make_unique<Tokenizer>(std::move(tok));
  if (ck.tokenizer->vocab_size() > ck.config.vocab_size)
    return invalid_argument(tok_path + ": tokenizer has " + std::to_string(ck.tokenizer->vocab_size()) +
                            " tokens but config.json vocab_size is " + std::to_string(ck.config.vocab_size));

  const fs::path tc_path = fs::path(dir) / "tokenizer_config.json";
  if (fs::exists(tc_path)) {
    TANDEM_ASSIGN_OR_RETURN(std::string text, read_text_file(tc_path.string()));
    TANDEM_ASSIGN_OR_RETURN(ck.tokenizer_config, parse_tokenizer_config(text, tc_path.string()));
  }
  // Since transformers 4.47 a chat_template.jinja file wins over the inline template.
  const fs::path jinja = fs::path(dir) / "chat_template.jinja";
  if (fs::exists(jinja)) {
    TANDEM_ASSIGN_OR_RETURN(ck.tokenizer_config.chat_template, read_text_file(jinja.string()));
  }

  auto add_stop = [&](int32_t id) {
    if (id >= 0 && std::find(ck.stop_token_ids.begin(), ck.stop_token_ids.end(), id) == ck.stop_token_ids.end())
      ck.stop_token_ids.push_back(id);
  };
  for (int32_t id : ck.config.eos_token_ids) add_stop(id);
  const fs::path gen = fs::path(dir) / "generation_config.json";
  if (fs::exists(gen)) {
    TANDEM_ASSIGN_OR_RETURN(std::string text, read_text_file(gen.string()));
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded()) return invalid_argument(gen.string() + ": not valid JSON");
    if (j.contains("eos_token_id")) {
      const json& e = j.at("eos_token_id");
      if (e.is_number_integer()) add_stop(e.get<int32_t>());
      if (e.is_array())
        for (const json& x : e)
          if (x.is_number_integer()) add_stop(x.get<int32_t>());
    }
  }
  if (!ck.tokenizer_config.eos_token.empty())
    if (auto id = ck.tokenizer->token_to_id(ck.tokenizer_config.eos_token)) add_stop(*id);
  return ck;
}

}  // namespace tandem::model
