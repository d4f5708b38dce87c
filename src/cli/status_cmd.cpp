// `tandem status --config FILE`: asks every node of a running cluster how it
// is doing (its control plane, not the router) and prints one line per node:
// where it runs, its load and, for attention nodes, where their forward time
// goes (attention, dispatch, idle waiting for experts, ...). The breakdown is
// what tells whether ping-pong hides the expert time: `wait` should be small.
// For expert nodes, how many token slots the gate sent each expert, and how
// far the hottest expert and the busiest node are above the mean.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "tandem/api/deployment.h"
#include "tandem/internal/v1/node.grpc.pb.h"

namespace tandem::cli {

namespace {
namespace pb = tandem::internal::v1;

struct StatusArgs {
  std::string config;
  int timeout_ms = 2000;
};

// Calls `rpc` on the node at `addr` with the deadline; an unreachable node is
// printed as such and counted.
template <typename Service, typename Request, typename Reply, typename Rpc>
bool ask(const std::string& name, const std::string& addr, int timeout_ms, Rpc rpc, Reply& reply, int& unreachable) {
  auto stub = Service::NewStub(grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  const grpc::Status st = ((*stub).*rpc)(&ctx, Request{}, &reply);
  if (st.ok()) return true;
  std::printf("%-10s %-21s unreachable: %s\n", name.c_str(), addr.c_str(), st.error_message().c_str());
  ++unreachable;
  return false;
}

double percent(double part, double whole) { return whole > 0 ? 100.0 * part / whole : 0.0; }

int run_status(const StatusArgs& a) {
  auto cfg = api::DeploymentConfig::from_file(a.config);
  if (!cfg.is_ok()) {
    std::fprintf(stderr, "tandem status: %s\n", cfg.status().to_string().c_str());
    return 2;
  }
  int unreachable = 0;
  std::printf("%-10s %-21s %-28s %7s %7s %13s %10s %7s %8s %7s %9s %6s %6s %6s\n", "node", "address", "device",
              "running", "waiting", "free blocks", "prefix hit", "steps", "step ms", "attend", "dispatch", "wait", "land", "head");
  for (int i = 0; i < cfg->attention_nodes; ++i) {
    const std::string addr = cfg->attention_endpoint(i).to_string();
    const std::string name = "attention" + std::to_string(i);
    pb::LoadReply r;
    if (!ask<pb::AttentionNode, pb::LoadRequest>(name, addr, a.timeout_ms, &pb::AttentionNode::Stub::Load, r,
                                                 unreachable))
      continue;
    const auto& p = r.pipeline();
    const std::string blocks = std::to_string(r.free_blocks()) + "/" + std::to_string(r.total_blocks());
    // Share of admitted prompt tokens whose K/V came from the prefix cache.
    char hit[16] = "-";
    if (r.prefix_lookup_tokens() > 0)
      std::snprintf(hit, sizeof hit, "%.1f%%",
                    percent(static_cast<double>(r.prefix_hit_tokens()), static_cast<double>(r.prefix_lookup_tokens())));
    std::printf("%-10s %-21s %-28s %7lld %7lld %13s %10s %7lld %8.2f %6.1f%% %8.1f%% %5.1f%% %5.1f%% %5.1f%%\n",
                name.c_str(), addr.c_str(), r.device().c_str(), static_cast<long long>(r.running()),
                static_cast<long long>(r.waiting()), blocks.c_str(), hit, static_cast<long long>(p.steps()),
                p.steps() > 0 ? 1e3 * p.total_s() / static_cast<double>(p.steps()) : 0.0,
                percent(p.attend_s(), p.total_s()), percent(p.dispatch_s(), p.total_s()),
                percent(p.wait_s(), p.total_s()), percent(p.land_s(), p.total_s()), percent(p.head_s(), p.total_s()));
  }
  // Expert parallelism is as fast as its busiest expert node: how evenly the
  // gate spread the token slots over experts and over nodes.
  std::vector<std::pair<int64_t, uint64_t>> expert_tokens;  // (expert, tokens)
  std::vector<uint64_t> node_tokens;
  for (int j = 0; j < cfg->expert_nodes; ++j) {
    const std::string addr = cfg->expert_endpoint(j).to_string();
    const std::string name = "expert" + std::to_string(j);
    pb::DataPlaneReply r;
    if (!ask<pb::ExpertNode, pb::DataPlaneRequest>(name, addr, a.timeout_ms, &pb::ExpertNode::Stub::DataPlane, r,
                                                   unreachable))
      continue;
    std::printf("%-10s %-21s %-28s experts [%lld, %lld), data plane %s", name.c_str(), addr.c_str(),
                r.device().c_str(), static_cast<long long>(r.first_expert()), static_cast<long long>(r.last_expert()),
                r.backend().c_str());
    // How well the node merges the attention nodes' work (more requests per
    // pass: each expert's weights read once for more tokens).
    if (r.passes() > 0)
      std::printf(", %llu requests in %llu passes (%.2f per pass), busy %.2f s", static_cast<unsigned long long>(r.requests()),
                  static_cast<unsigned long long>(r.passes()),
                  static_cast<double>(r.requests()) / static_cast<double>(r.passes()), r.busy_s());
    uint64_t mine = 0;
    for (int k = 0; k < r.expert_tokens_size(); ++k) {
      expert_tokens.emplace_back(r.first_expert() + k, r.expert_tokens(k));
      mine += r.expert_tokens(k);
    }
    if (r.expert_tokens_size() > 0) {
      node_tokens.push_back(mine);
      std::printf(", %llu token slots", static_cast<unsigned long long>(mine));
    }
    std::printf("\n");
  }
  std::printf("attend/dispatch/wait/land/head: shares of the attention nodes' step time (wait: idle for experts)\n");
  auto max_over_mean = [](const std::vector<uint64_t>& v) {
    double sum = 0, mx = 0;
    for (uint64_t x : v) {
      sum += static_cast<double>(x);
      mx = std::max(mx, static_cast<double>(x));
    }
    return sum > 0 ? mx * static_cast<double>(v.size()) / sum : 0.0;
  };
  std::vector<uint64_t> per_expert;
  for (const auto& [e, t] : expert_tokens) per_expert.push_back(t);
  if (!per_expert.empty() && max_over_mean(per_expert) > 0) {
    const auto hottest = *std::max_element(expert_tokens.begin(), expert_tokens.end(),
                                           [](const auto& a, const auto& b) { return a.second < b.second; });
    std::printf("expert load (token slots, all layers): hottest expert %lld at %.2fx the mean expert; busiest node "
                "at %.2fx the mean node\n",
                static_cast<long long>(hottest.first), max_over_mean(per_expert), max_over_mean(node_tokens));
  }
  return unreachable == 0 ? 0 : 1;
}
}  // namespace

void register_status(CLI::App& app) {
  static StatusArgs a;
  auto* s = add_command(app, "status", "Show every node of a running cluster: device, load, step-time breakdown",
                        [] { return run_status(a); });
  s->add_option("--config", a.config, "Deployment YAML of the running cluster")->required();
  s->add_option("--timeout-ms", a.timeout_ms, "Per-node deadline")->capture_default_str()->check(CLI::PositiveNumber);
}

}  // namespace tandem::cli
