// `tandem router`, `tandem attention --rank I`, `tandem expert --rank J`: one cluster role per process,
// configured by the deployment YAML; SIGINT/SIGTERM drain and stop it.
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "commands.h"
#include "device_check.h"
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

// Runs this process on `cpus` with one OpenMP thread per CPU. OpenMP reads its
// thread count once, when the runtime loads, so the process re-executes itself
// with OMP_NUM_THREADS set (once: the second time the count is already right).
Status pin_to_cpus(const std::vector<int>& cpus, const std::string& key) {
  if (cpus.empty()) return Status::ok();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  // Threads started later (gRPC, the scheduler, OpenMP workers) inherit it.
  if (sched_setaffinity(0, sizeof set, &set) != 0)
    return invalid_argument(key + ": cannot run on CPUs " + api::format_cpu_list(cpus) + ": " +
                            std::strerror(errno) + " (this machine has " + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) +
                            " online)");
  const std::string threads = std::to_string(cpus.size());
  const char* have = std::getenv("OMP_NUM_THREADS");
  if (have && threads == have) return Status::ok();
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string cmdline((std::istreambuf_iterator<char>(f)), {});
  std::vector<std::string> args;
  for (size_t at = 0; at < cmdline.size();) {
    const size_t end = cmdline.find('\0', at);
    args.push_back(cmdline.substr(at, end - at));
    at = end == std::string::npos ? cmdline.size() : end + 1;
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  setenv("OMP_NUM_THREADS", threads.c_str(), 1);
  execv("/proc/self/exe", argv.data());
  return internal_error(std::string("re-executing with OMP_NUM_THREADS=") + threads + ": " + std::strerror(errno));
}

template <typename Start>
int run_role(const char* name, const std::string& config_path, Start start) {
  sigset_t sigs = block_termination_signals();
  auto cfg = api::DeploymentConfig::from_file(config_path);
  if (!cfg.is_ok()) {
    std::fprintf(stderr, "tandem %s: %s\n", name, cfg.status().to_string().c_str());
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(cfg->log_level));
  const std::string role_name = name;
  if (Status st = check_device(*cfg, role_name); !st.is_ok() && role_name != "router") {
    std::fprintf(stderr, "tandem %s: %s\n", name, st.to_string().c_str());
    return 2;
  }
  if (role_name == "attention" || role_name == "expert") {
    Status pinned = pin_to_cpus(role_name == "attention" ? cfg->attention_cpus : cfg->expert_cpus,
                                cfg->source + ": " + role_name + ".cpus");
    if (!pinned.is_ok()) {
      std::fprintf(stderr, "tandem %s: %s\n", name, pinned.to_string().c_str());
      return 2;
    }
  }
  auto role = start(*cfg);
  if (!role.is_ok()) {
    std::fprintf(stderr, "tandem %s: %s\n", name, role.status().to_string().c_str());
    return 1;
  }
  const int sig = wait_for_termination(sigs, [&] {
    if constexpr (requires { (*role)->reload(); }) {
      TANDEM_LOG_INFO("{}: SIGHUP, reloading", name);
      (void)(*role)->reload();  // it logs what failed; the role serves on
    }
  });
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
