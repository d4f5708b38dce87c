#include <set>

#include "safetensors/internal.h"

namespace tandem::model::safetensors_internal {

namespace {

// Tracks the keys of every open object so a repeated key is seen while parsing:
// after nlohmann builds the DOM the first occurrence is already gone.
class DuplicateKeyDetector {
 public:
  bool on_event(nlohmann::json::parse_event_t event, const nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
        levels_.emplace_back();
        break;
      case E::object_end:
        if (!levels_.empty()) levels_.pop_back();
        break;
      case E::key: {
        if (levels_.empty()) break;
        const auto& key = parsed.get_ref<const std::string&>();
        Level& top = levels_.back();
        if (!top.keys.insert(key).second && !found_) {
          found_ = true;
          duplicate_ = key;
          if (levels_.size() >= 2) parent_ = levels_[levels_.size() - 2].last_key;
        }
        top.last_key = key;
        break;
      }
      default:
        break;
    }
    return true;  // keep everything; the verdict is read after parsing
  }

  bool found() const { return found_; }
  std::string describe() const {
    std::string m = "duplicate key '" + duplicate_ + "'";
    if (!parent_.empty()) m += " inside '" + parent_ + "'";
    return m;
  }

 private:
  struct Level {
    std::set<std::string> keys;
    std::string last_key;
  };
  std::vector<Level> levels_;
  bool found_ = false;
  std::string duplicate_;
  std::string parent_;
};

}  // namespace

Result<nlohmann::json> parse_json_no_duplicates(std::string_view text, const std::string& what) {
  DuplicateKeyDetector detector;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(
        text.begin(), text.end(),
        [&detector](int, nlohmann::json::parse_event_t e, nlohmann::json& parsed) {
          return detector.on_event(e, parsed);
        });
  } catch (const nlohmann::json::exception& e) {
    return data_loss(what + ": invalid JSON: " + e.what());
  }
  if (detector.found()) return data_loss(what + ": " + detector.describe());
  return j;
}

}  // namespace tandem::model::safetensors_internal
