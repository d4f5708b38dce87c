// `tandem router`, `tandem attention --rank I`, `tandem expert --rank J`: one cluster role per process,
// configured by the deployment YAML; SIGINT/SIGTERM drain and stop it.
#include <cstdio>
#include <string>

#include "commands.h"
#include "signals.h"
#include "tandem/api/deployment.h"
#include "tandem/attention/attention_node.h"
#include "tandem/common/logging.h"
#include "tandem/expert/expert_node.h"
#include "tandem/router/router.h"

namespace tandem::cli {

namespace {
struct RoleArgs {
  std::string config;
  int rank = 0;
};

template <typename Start>
int run_role(const char* name, const std::string& config_path, Start start) {
  sigset_t sigs = block_termination_signals();
  auto cfg = api::DeploymentConfig::from_file(config_path);
  if (!cfg.is_ok()) {
    std::fprintf(stderr, "tandem %s: %s\n", name, cfg.status().to_string().c_str());
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(cfg->log_level));
  auto role = start(*cfg);
  if (!role.is_ok()) {
    std::fprintf(stderr, "tandem %s: %s\n", name, role.status().to_string().c_str());
    return 1;
  }
  const int sig = wait_for_termination(sigs);
  TANDEM_LOG_INFO("{}: signal {}, draining", name, sig);
  (*role)->shutdown();
  (*role)->wait();
  return 0;
}
}  // namespace

void register_roles(CLI::App& app) {
  static RoleArgs router_args, attention_args, expert_args;
  auto* r = add_command(app, "router", "Run the router (public gRPC API) of a cluster", [] {
    return run_role("router", router_args.config, [](const api::DeploymentConfig& c) { return router::Router::start(c); });
  });
  r->add_option("--config", router_args.config, "Deployment YAML")->required();
  auto* a = add_command(app, "attention", "Run attention node --rank of a cluster", [] {
    return run_role("attention", attention_args.config, [](const api::DeploymentConfig& c) {
      return attention::AttentionNode::start(c, attention_args.rank);
    });
  });
  a->add_option("--config", attention_args.config, "Deployment YAML")->required();
  a->add_option("--rank", attention_args.rank, "Attention node index")->required()->check(CLI::NonNegativeNumber);
  auto* e = add_command(app, "expert", "Run expert node --rank of a cluster", [] {
    return run_role("expert", expert_args.config, [](const api::DeploymentConfig& c) {
      return expert::ExpertNode::start(c, expert_args.rank);
    });
  });
  e->add_option("--config", expert_args.config, "Deployment YAML")->required();
  e->add_option("--rank", expert_args.rank, "Expert node index")->required()->check(CLI::NonNegativeNumber);
}

}  // namespace tandem::cli
