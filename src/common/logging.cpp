#include "tandem/common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

namespace tandem {

void init_logging(std::string_view name, std::string_view level) {
  std::string lvl(level);
  if (lvl.empty()) {
    const char* env = std::getenv("TANDEM_LOG_LEVEL");
    lvl = env ? env : "warn";
  }
  auto logger = spdlog::stderr_color_mt(std::string(name));
  logger->set_pattern("[%H:%M:%S.%e] [%n] [%^%l%$] %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(lvl));
}

}  // namespace tandem
