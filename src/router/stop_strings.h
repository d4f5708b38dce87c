// Applies stop strings to streamed text: text that could still turn out to be
// the start of a stop string is held back, so a client never sees any part of
// a stop string, and nothing else is delayed longer than needed.
#pragma once

#include <string>
#include <vector>

namespace tandem::router {

class StopStringFilter {
 public:
  // `keep_stop`: the answer ends with the stop string that ended it (vLLM's
  // include_stop_str_in_output) instead of right before it.
  explicit StopStringFilter(std::vector<std::string> stops, bool keep_stop = false);
  // Adds text; returns what can be released now. Sets `stopped` when a stop
  // string appeared (the returned text ends right before it, or with it):
  // the earliest one in the text, on a tie the first given.
  std::string push(const std::string& text, bool& stopped);
  // Text that may not end the answer (up to min_tokens): never matched on its
  // own, but its tail is held back as usual, so a stop string that starts in
  // it and ends in text pushed later still stops the answer.
  std::string pass(const std::string& text);
  // The held-back tail, at the end of generation.
  std::string flush();

 private:
  std::vector<std::string> stops_;
  bool keep_stop_ = false;
  size_t hold_ = 0;  // longest stop string - 1
  std::string pending_;
  size_t passed_ = 0;  // pending_[0, passed_) came through pass(): a match must end after it
  std::string release_all_but_hold();
};

}  // namespace tandem::router
