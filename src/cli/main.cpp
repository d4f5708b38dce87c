// The `tandem` binary: one subcommand per role or tool.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "commands.h"
#include "tandem/common/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"tandem: disaggregated MoE inference serving"};
  app.require_subcommand(1);
  std::string log_level;
  app.add_option("--log-level", log_level, "debug|info|warn|error (default: $TANDEM_LOG_LEVEL or warn)");
  tandem::cli::register_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    tandem::init_logging("tandem", log_level);
    return tandem::cli::run_selected(app);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem: error: %s\n", e.what());
    return 1;
  }
}
