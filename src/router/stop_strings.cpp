#include "stop_strings.h"

#include <algorithm>

namespace tandem::router {

StopStringFilter::StopStringFilter(std::vector<std::string> stops, bool keep_stop)
    : stops_(std::move(stops)), keep_stop_(keep_stop) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
  for (const auto& s : stops_) hold_ = std::max(hold_, s.size() - 1);
}

std::string StopStringFilter::push(const std::string& text, bool& stopped) {
  stopped = false;
  pending_ += text;
  size_t first = std::string::npos, matched = 0;
  for (const auto& s : stops_) {
    // Only a match ending after the passed text counts.
    const size_t from = passed_ >= s.size() ? passed_ - s.size() + 1 : 0;
    if (const size_t at = pending_.find(s, from); at < first) {
      first = at;
      matched = s.size();
    }
  }
  if (first != std::string::npos) {
    stopped = true;
    std::string out = pending_.substr(0, keep_stop_ ? first + matched : first);
    pending_.clear();
    passed_ = 0;
    return out;
  }
  return release_all_but_hold();
}

std::string StopStringFilter::pass(const std::string& text) {
  pending_ += text;
  passed_ = pending_.size();
  return release_all_but_hold();
}

std::string StopStringFilter::release_all_but_hold() {
  if (pending_.size() <= hold_) return {};
  size_t cut = pending_.size() - hold_;
  // Never split a UTF-8 character: back up to a lead byte.
  while (cut > 0 && cut < pending_.size() && (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) --cut;
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  passed_ = passed_ > cut ? passed_ - cut : 0;
  return out;
}

std::string StopStringFilter::flush() {
  std::string out;
  out.swap(pending_);
  passed_ = 0;
  return out;
}

}  // namespace tandem::router
