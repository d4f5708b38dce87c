#include "commands.h"

#include <map>

namespace tandem::cli {
namespace {
std::map<CLI::App*, RunFn>& registry() {
  static std::map<CLI::App*, RunFn> r;
  return r;
}
}  // namespace

CLI::App* add_command(CLI::App& app, const std::string& name, const std::string& help, RunFn run) {
  CLI::App* sub = app.add_subcommand(name, help);
  registry()[sub] = std::move(run);
  return sub;
}

void register_commands(CLI::App& app) {
  register_make_model(app);
  register_generate(app);
  register_roles(app);
  register_serve(app);
  register_client(app);
  register_bench(app);
  register_plan(app);
  register_profile(app);
  register_status(app);
}

int run_selected(CLI::App& app) {
  for (auto& [sub, run] : registry()) {
    if (sub->parsed()) return run();
  }
  return 2;
}

}  // namespace tandem::cli
