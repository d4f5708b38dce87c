// Logging goes through spdlog to stderr (stdout is reserved for program output
// that parents and users parse). Quiet by default: warnings and errors only,
// raised with TANDEM_LOG_LEVEL=debug|info|warn|error or --log-level.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace tandem {

// Installs the process-wide stderr logger named `name` (e.g. "router", "expert[2]").
void init_logging(std::string_view name, std::string_view level = "");

}  // namespace tandem

#define TANDEM_LOG_DEBUG(...) SPDLOG_DEBUG(__VA_ARGS__)
#define TANDEM_LOG_INFO(...) SPDLOG_INFO(__VA_ARGS__)
#define TANDEM_LOG_WARN(...) SPDLOG_WARN(__VA_ARGS__)
#define TANDEM_LOG_ERROR(...) SPDLOG_ERROR(__VA_ARGS__)
