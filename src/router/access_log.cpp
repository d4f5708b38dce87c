#include "access_log.h"

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

namespace tandem::router {

Result<std::unique_ptr<AccessLog>> AccessLog::open(const std::string& target) {
  if (target == "-") return std::unique_ptr<AccessLog>(new AccessLog(stderr, false, target));
  std::FILE* f = std::fopen(target.c_str(), "a");
  if (!f) return invalid_argument("router.access_log: cannot open '" + target + "' to append");
  return std::unique_ptr<AccessLog>(new AccessLog(f, true, target));
}

Status AccessLog::reopen() {
  if (!owned_) return Status::ok();
  std::FILE* f = std::fopen(target_.c_str(), "a");
  if (!f) return invalid_argument("router.access_log: cannot open '" + target_ + "' to append");
  std::lock_guard<std::mutex> lock(mu_);
  std::fclose(file_);
  file_ = f;
  return Status::ok();
}

AccessLog::~AccessLog() {
  if (owned_) std::fclose(file_);
}

std::string AccessLog::format(const AccessEntry& e, double unix_time_s) {
  // Milliseconds, rounded: a log line, not a benchmark.
  const auto ms = [](double s) { return std::round(s * 1e4) / 10; };
  nlohmann::ordered_json j = {{"time", std::round(unix_time_s * 1e3) / 1e3},
                              {"method", e.method},
                              {"peer", e.peer},
                              {"code", e.code},
                              {"prompt_tokens", e.prompt_tokens},
                              {"completion_tokens", e.completion_tokens},
                              {"finish_reason", e.finish_reason.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(e.finish_reason)},
                              {"ttft_ms", e.first_token_s < 0 ? nlohmann::ordered_json() : nlohmann::ordered_json(ms(e.first_token_s))},
                              {"latency_ms", ms(e.total_s)}};
  if (!e.request_id.empty()) j["request_id"] = e.request_id;
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

void AccessLog::write(const AccessEntry& e) {
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string line = format(e, now) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

}  // namespace tandem::router
