// `tandem serve --config FILE`: runs every role of the deployment on this machine
// as child processes, waits until all serve, restarts any that dies, and on
// SIGINT/SIGTERM drains and stops them all (router first, so no new work
// arrives), leaving no orphans: children also get SIGTERM if serve itself dies.
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "device_check.h"
#include "signals.h"
#include "tandem/api/deployment.h"
#include "tandem/api/health.h"
#include "tandem/common/logging.h"
#include "tandem/model/checkpoint.h"

namespace tandem::cli {

namespace {

struct Child {
  std::string role;  // "router", "attention", "expert"
  int rank = -1;
  std::string address;
  pid_t pid = -1;
  int restarts = 0;
  std::string name() const { return rank < 0 ? role : role + "[" + std::to_string(rank) + "]"; }
};

// CPUs named in the YAML must be ones this process may run on; checked here
// once rather than by children that would fail and be restarted forever.
Status check_cpus(const std::vector<int>& cpus, const std::string& key) {
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (cpus.empty() || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return Status::ok();
  std::vector<int> have;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) have.push_back(c);
  for (int c : cpus)
    if (c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed))
      return invalid_argument(key + ": CPU " + std::to_string(c) + " is not available here (available: " +
                              api::format_cpu_list(have) + ")");
  return Status::ok();
}

pid_t spawn(const Child& c, const std::string& config) {
  std::vector<std::string> args{"/proc/self/exe", c.role, "--config", config};
  if (c.rank >= 0) args.insert(args.end(), {"--rank", std::to_string(c.rank)});
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  // Child: die with the supervisor; default signal handling again, but
  // SIGHUP stays blocked across exec (the role waits for it once it runs): a
  // reload sent right after a restart must not kill the new router.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  sigset_t hangup;
  sigemptyset(&hangup);
  sigaddset(&hangup, SIGHUP);
  pthread_sigmask(SIG_SETMASK, &hangup, nullptr);
  // Several roles share the cores: OpenMP workers that spin while idle steal
  // them from the other processes (measured: 3x slower decode), so they sleep.
  setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv("/proc/self/exe", argv.data());
  _exit(127);
}

int run_serve(const std::string& config_path) {
  sigset_t sigs = block_termination_signals();
  auto cfg = api::DeploymentConfig::from_file(config_path);
  if (!cfg.is_ok()) {
    std::fprintf(stderr, "tandem serve: %s\n", cfg.status().to_string().c_str());
    return 2;
  }
  {
    auto ck = model::Checkpoint::open(cfg->model_path);  // fail here, not in every child
    if (!ck.is_ok()) {
      std::fprintf(stderr, "tandem serve: %s\n", ck.status().to_string().c_str());
      return 2;
    }
    Status st = cfg->validate_against_model(ck->config.moe.num_experts,
                                            2 * ck->config.num_layers * ck->config.kv_dim() * 4, size_t{64} << 30);
    if (!st.is_ok()) {
      std::fprintf(stderr, "tandem serve: %s\n", st.to_string().c_str());
      return 2;
    }
  }
  // The router reads the keys file: a bad one stops the cluster here, not
  // the router in a restart loop.
  if (auto keys = cfg->accepted_api_keys(); !keys.is_ok()) {
    std::fprintf(stderr, "tandem serve: %s\n", keys.status().to_string().c_str());
    return 2;
  }
  if (!cfg->access_log.empty() && cfg->access_log != "-" && !std::ofstream(cfg->access_log, std::ios::app)) {
    std::fprintf(stderr, "tandem serve: %s: router.access_log: cannot open '%s' to append\n", cfg->source.c_str(),
                 cfg->access_log.c_str());
    return 2;
  }
  // With TLS the router's health is asked over TLS, trusting its own
  // certificate under the name it carries.
  api::ClientTls router_tls;
  if (cfg->tls()) {
    auto tls = cfg->server_tls();
    Status pair = tls.is_ok() ? api::check_server_tls(tls->cert_pem, tls->key_pem) : tls.status();
    auto name = pair.is_ok() ? api::certificate_name(tls->cert_pem) : Result<std::string>(pair);
    if (!name.is_ok()) {
      std::fprintf(stderr, "tandem serve: %s\n", name.status().to_string().c_str());
      return 2;
    }
    router_tls = {tls->cert_pem, *name};
  }
  if (Status st = check_device(*cfg, "serve"); !st.is_ok()) {
    std::fprintf(stderr, "tandem serve: %s\n", st.to_string().c_str());
    return 2;
  }
  for (auto [cpus, key] : {std::pair{&cfg->attention_cpus, "attention.cpus"}, std::pair{&cfg->expert_cpus, "expert.cpus"}}) {
    Status st = check_cpus(*cpus, cfg->source + ": " + key);
    if (!st.is_ok()) {
      std::fprintf(stderr, "tandem serve: %s\n", st.to_string().c_str());
      return 2;
    }
  }
  std::vector<Child> children;
  for (int j = 0; j < cfg->expert_nodes; ++j)
    children.push_back({"expert", j, cfg->expert_endpoint(j).to_string()});
  for (int i = 0; i < cfg->attention_nodes; ++i)
    children.push_back({"attention", i, cfg->attention_endpoint(i).to_string()});
  children.push_back({"router", -1, cfg->router.to_string()});
  for (auto& c : children) c.pid = spawn(c, config_path);

  // Readiness: every role answers its health check.
  for (auto& c : children) {
    Status st = api::wait_until_serving(c.address, std::chrono::seconds(120),
                                        c.role == "router" ? router_tls : api::ClientTls{});
    if (!st.is_ok()) {
      std::fprintf(stderr, "tandem serve: %s at %s did not come up: %s\n", c.name().c_str(), c.address.c_str(),
                   st.message().c_str());
      for (auto& k : children)
        if (k.pid > 0) kill(k.pid, SIGKILL);
      while (waitpid(-1, nullptr, 0) > 0) {
      }
      return 1;
    }
  }
  std::printf("tandem serve: cluster ready, router on %s (%d attention nodes, %d expert nodes, m=%d)\n",
              cfg->router.to_string().c_str(), cfg->attention_nodes, cfg->expert_nodes, cfg->micro_batches);
  std::fflush(stdout);

  // Supervise until a termination signal.
  const timespec tick{0, 100 * 1000 * 1000};
  while (true) {
    siginfo_t info;
    const int sig = sigtimedwait(&sigs, &info, &tick);
    if (sig == SIGINT || sig == SIGTERM) break;
    if (sig == SIGHUP)  // the router reloads its keys and reopens its access log
      for (auto& c : children)
        if (c.role == "router" && c.pid > 0) kill(c.pid, SIGHUP);  // never kill(-1, ...)
    int status = 0;
    pid_t dead;
    while ((dead = waitpid(-1, &status, WNOHANG)) > 0) {
      for (auto& c : children) {
        if (c.pid != dead) continue;
        TANDEM_LOG_WARN("{} exited ({}); restarting", c.name(),
                        WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                            : "status " + std::to_string(WEXITSTATUS(status)));
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        c.pid = spawn(c, config_path);
        ++c.restarts;
      }
    }
  }

  // Drain: the router first (no new work, in-flight streams end), then the
  // nodes; SIGKILL whatever is left after the grace period.
  std::fprintf(stderr, "tandem serve: stopping\n");
  auto stop = [](std::vector<Child*> group, std::chrono::seconds grace) {
    for (Child* c : group)
      if (c->pid > 0) kill(c->pid, SIGTERM);
    const auto end = std::chrono::steady_clock::now() + grace;
    size_t alive = group.size();
    while (alive > 0 && std::chrono::steady_clock::now() < end) {
      alive = 0;
      for (Child* c : group)
        if (c->pid > 0 && waitpid(c->pid, nullptr, WNOHANG) == 0) ++alive;
        else c->pid = -1;
      if (alive > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    for (Child* c : group)
      if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, nullptr, 0);
      }
  };
  std::vector<Child*> router, nodes;
  for (auto& c : children) (c.role == "router" ? router : nodes).push_back(&c);
  // The router drains its requests in flight first (router.drain_timeout_s).
  stop(router, std::chrono::seconds(cfg->drain_timeout_s + 10));
  stop(nodes, std::chrono::seconds(10));
  return 0;
}

}  // namespace

void register_serve(CLI::App& app) {
  static std::string config = "configs/local.yaml";
  auto* s = add_command(app, "serve", "Run a whole cluster on this machine as child processes",
                        [] { return run_serve(config); });
  s->add_option("--config", config, "Deployment YAML")->capture_default_str();
}

}  // namespace tandem::cli
