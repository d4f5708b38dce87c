#include "stop_strings.h"

#include <algorithm>

namespace tandem::router {

StopStringFilter::StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
  for (const auto& s : stops_) hold_ = std::max(hold_, s.size() - 1);
}

std::string StopStringFilter::push(const std::string& text, bool& stopped) {
  stopped = false;
  pending_ += text;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  if (pending_.size() <= hold_) return {};
  size_t cut = pending_.size() - hold_;
  // Never split a UTF-8 character: back up to a lead byte.
  while (cut > 0 && cut < pending_.size() && (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) --cut;
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string StopStringFilter::pass(const std::string& text) {
  std::string out = flush();
  return out + text;
}

std::string StopStringFilter::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace tandem::router
