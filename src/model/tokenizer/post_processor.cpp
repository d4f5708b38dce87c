#include "tokenizer/post_processor.h"

#include <map>
#include <sstream>

namespace tandem::model::tok {
namespace {

class NoopPostProcessor final : public PostProcessor {
 public:
  void apply(std::vector<int32_t>&) const override {}
};

// The single-sequence template flattened to: ids before $A, ids after $A.
class TemplatePostProcessor final : public PostProcessor {
 public:
  TemplatePostProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  void apply(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_, after_;
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void apply(std::vector<int32_t>& ids) const override {
    for (const auto& s : steps_) s->apply(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

struct TemplateItem {
  bool is_sequence = false;
  std::string name;  // sequence id ("A"/"B") or special token name
};

// Items come as objects ({"SpecialToken": {"id": ...}} / {"Sequence": {"id": ...}})
// or, in hand-written files, as a "<s> $A" string.
Result<std::vector<TemplateItem>> parse_template(const Json& single, const std::string& where) {
  std::vector<TemplateItem> items;
  if (single.is_string()) {
    std::istringstream in(single.get<std::string>());
    std::string word;
    while (in >> word) {
      const size_t colon = word.rfind(':');
      if (word[0] == '$') {
        std::string id = word.substr(1, colon == std::string::npos ? std::string::npos : colon - 1);
        if (id.empty() || id == "0") id = "A";
        if (id == "1") id = "B";
        items.push_back({true, id});
      } else {
        items.push_back({false, colon == std::string::npos || colon == 0 ? word : word.substr(0, colon)});
      }
    }
    return items;
  }
  if (!single.is_array()) return invalid_argument(where + ": 'single' must be an array or a string");
  for (const Json& it : single) {
    if (auto s = it.find("Sequence"); it.is_object() && s != it.end() && s->is_object())
      items.push_back({true, s->value("id", "A")});
    else if (auto t = it.find("SpecialToken"); it.is_object() && t != it.end() && t->is_object() && (*t)["id"].is_string())
      items.push_back({false, (*t)["id"].get<std::string>()});
    else
      return invalid_argument(where + ": unknown template item " + it.dump());
  }
  return items;
}

Result<std::unique_ptr<PostProcessor>> parse_template_processing(const Json& j, const std::string& where) {
  if (!j.contains("single")) return invalid_argument(where + ": missing 'single'");
  TANDEM_ASSIGN_OR_RETURN(auto items, parse_template(j["single"], where));
  std::map<std::string, std::vector<int32_t>> specials;
  if (auto st = j.find("special_tokens"); st != j.end() && !st->is_null()) {
    if (!st->is_object()) return invalid_argument(where + ": 'special_tokens' must be an object");
    for (auto it = st->begin(); it != st->end(); ++it) {
      const Json& ids = it.value().contains("ids") ? it.value()["ids"] : Json();
      if (!ids.is_array()) return invalid_argument(where + ": special token '" + it.key() + "' has no 'ids' array");
      std::vector<int32_t> v;
      for (const Json& id : ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0)
          return invalid_argument(where + ": special token '" + it.key() + "' has a bad id");
        v.push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
      specials[it.key()] = std::move(v);
    }
  }
  std::vector<int32_t> before, after;
  bool seen_a = false;
  for (const auto& item : items) {
    if (item.is_sequence) {
      if (item.name != "A") return invalid_argument(where + ": single template uses sequence '" + item.name + "'");
      if (seen_a) return invalid_argument(where + ": single template uses $A twice");
      seen_a = true;
      continue;
    }
    auto it = specials.find(item.name);
    if (it == specials.end())
      return invalid_argument(where + ": template token '" + item.name + "' is missing from special_tokens");
    auto& dst = seen_a ? after : before;
    dst.insert(dst.end(), it->second.begin(), it->second.end());
  }
  if (!seen_a) return invalid_argument(where + ": single template has no $A");
  return std::unique_ptr<PostProcessor>(std::make_unique<TemplatePostProcessor>(std::move(before), std::move(after)));
}

// Bert/Roberta: {"cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}.
Result<int32_t> pair_id(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
    return invalid_argument(where + ": '" + key + "' must be [token, id]");
  return static_cast<int32_t>((*it)[1].get<int64_t>());
}

}  // namespace

Result<std::unique_ptr<PostProcessor>> parse_post_processor(const Json& j) {
  if (j.is_null()) return std::unique_ptr<PostProcessor>();
  const std::string where = "post_processor";
  TANDEM_ASSIGN_OR_RETURN(std::string type, json_type(j, where));
  const std::string here = where + "." + type;
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(std::make_unique<NoopPostProcessor>());
  if (type == "TemplateProcessing") return parse_template_processing(j, here);
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    TANDEM_ASSIGN_OR_RETURN(int32_t cls, pair_id(j, "cls", here));
    TANDEM_ASSIGN_OR_RETURN(int32_t sep, pair_id(j, "sep", here));
    return std::unique_ptr<PostProcessor>(
        std::make_unique<TemplatePostProcessor>(std::vector<int32_t>{cls}, std::vector<int32_t>{sep}));
  }
  if (type == "Sequence") {
    auto it = j.find("processors");
    if (it == j.end() || !it->is_array()) return invalid_argument(here + ": missing array 'processors'");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const Json& sub : *it) {
      TANDEM_ASSIGN_OR_RETURN(auto step, parse_post_processor(sub));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<PostProcessor>(std::make_unique<SequencePostProcessor>(std::move(steps)));
  }
  return unsupported_component(where, type);
}

}  // namespace tandem::model::tok
