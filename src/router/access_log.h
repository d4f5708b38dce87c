// The router's access log (router.access_log): one JSON line per finished
// Generate or Chat call, for operators and log shippers. It says who asked,
// how it ended and how long it took; it never holds prompts or answers.
#pragma once

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem::router {

struct AccessEntry {
  std::string_view method;  // "Generate" | "Chat"
  std::string peer;         // the client's address (gRPC's peer, or "http:" and the HTTP client's)
  std::string request_id;   // the client's, when it set one
  std::string code;         // the call's gRPC status code name
  uint32_t prompt_tokens = 0, completion_tokens = 0;
  std::string_view finish_reason;  // "" when the call ended before a finish
  double first_token_s = -1;       // from admission to the first token; -1: none
  double total_s = 0;              // the whole call
};

class AccessLog {
 public:
  // `target`: "-" for stderr, else a file appended to. INVALID_ARGUMENT
  // naming router.access_log when the file cannot be opened.
  static Result<std::unique_ptr<AccessLog>> open(const std::string& target);
  ~AccessLog();
  void write(const AccessEntry& e);
  // Opens the file again (after logrotate moved it); the old one stays on
  // an error, which names router.access_log.
  Status reopen();
  // The line write() adds, without its newline (for tests).
  static std::string format(const AccessEntry& e, double unix_time_s);

 private:
  AccessLog(std::FILE* f, bool owned, std::string target) : file_(f), owned_(owned), target_(std::move(target)) {}
  std::mutex mu_;
  std::FILE* file_;
  bool owned_;
  std::string target_;
};

}  // namespace tandem::router
