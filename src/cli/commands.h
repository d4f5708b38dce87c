// Subcommand registry of the tandem binary. Each subcommand lives in its own
// file and registers a CLI11 sub-app plus the function that runs it.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

namespace tandem::cli {

using RunFn = std::function<int()>;

// Adds a subcommand; `run` is called when it was selected on the command line.
CLI::App* add_command(CLI::App& app, const std::string& name, const std::string& help, RunFn run);

void register_commands(CLI::App& app);
int run_selected(CLI::App& app);

// Per-command registration, one per file.
void register_make_model(CLI::App& app);
void register_generate(CLI::App& app);
void register_roles(CLI::App& app);
void register_serve(CLI::App& app);
void register_client(CLI::App& app);
void register_bench(CLI::App& app);
void register_plan(CLI::App& app);
void register_profile(CLI::App& app);
void register_status(CLI::App& app);

// --api-key (or TANDEM_API_KEY): the key a router with router.api_keys wants.
inline void add_api_key_option(CLI::App* cmd, std::string& key) {
  cmd->add_option("--api-key", key, "Key for a router with router.api_keys (sent as Authorization: Bearer)")
      ->envname("TANDEM_API_KEY");
}
// --tls-ca (and --tls-server-name): TLS to a router with router.tls_*.
inline void add_tls_options(CLI::App* cmd, std::string& ca_file, std::string& server_name) {
  cmd->add_option("--tls-ca", ca_file, "CA (or self-signed) certificate to trust: TLS to a router with router.tls_*")
      ->check(CLI::ExistingFile);
  cmd->add_option("--tls-server-name", server_name, "Name the router's certificate must carry (default: the host dialled)")
      ->needs("--tls-ca");
}
// The Authorization value for `key`; empty for none.
inline std::string bearer(const std::string& key) { return key.empty() ? std::string() : "Bearer " + key; }

}  // namespace tandem::cli
