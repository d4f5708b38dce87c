// `tandem plan`: chooses a disaggregated deployment of a model on given GPU
// kinds (docs/planner.md), prints the best plans and writes the best one as a
// deployment YAML that `tandem serve --config` reads.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "commands.h"
#include "tandem/api/deployment.h"
#include "tandem/planner/search.h"
#include "tandem/planner/simulator.h"

#ifndef TANDEM_DEFAULT_HARDWARE_DIR
#define TANDEM_DEFAULT_HARDWARE_DIR "configs/hardware"
#endif

namespace tandem::cli {

namespace {

struct PlanArgs {
  std::string model;
  std::string attention_hw = "H20";
  std::string expert_hw;  // default: attention_hw
  std::string hardware_dir;
  double tpot_slo_ms = 150;
  int gpus = 0;
  double budget = 0;
  std::string objective;  // gpu | dollar; default dollar with --budget, else gpu
  double context = 650;
  int max_micro_batches = 4;
  int top = 10;
  std::string out = "deployment.yaml";
  std::string trace;
  double hot_expert = 1;   // load factor of expert node 0 in the simulated check
  std::string model_path;  // written into the YAML; default: the model directory
  std::string evaluate;    // a deployment YAML to predict instead of searching
  int batch = 0;           // B for --evaluate: sequences decoding at once over all attention nodes
};

// --evaluate: the model's prediction for one given deployment (no search),
// to set beside what `tandem bench` measures on it.
int run_evaluate(const PlanArgs& a, const planner::ModelShape& model, const planner::HardwareProfile& ha,
                 const planner::HardwareProfile& he) {
  auto d = api::DeploymentConfig::from_file(a.evaluate);
  if (!d.is_ok()) {
    std::fprintf(stderr, "tandem plan: --evaluate: %s\n", d.status().to_string().c_str());
    return 2;
  }
  if (a.batch <= 0) {
    std::fprintf(stderr, "tandem plan: --evaluate needs --batch (sequences decoding at once in the whole cluster)\n");
    return 2;
  }
  planner::Plan p;
  p.n_a = d->attention_nodes;
  p.n_e = d->expert_nodes;
  p.m = d->micro_batches;
  p.tp_a = d->plan.present ? d->plan.attention_tp : 1;
  p.tp_e = d->plan.present ? d->plan.expert_tp : 1;
  const int64_t per_micro_batch = static_cast<int64_t>(p.n_a) * p.m;
  p.b_a = (a.batch + per_micro_batch - 1) / per_micro_batch;
  if (p.b_a * per_micro_batch != a.batch)
    std::printf("note: --batch %d does not split evenly into %d attention nodes x %d micro-batches; modelled as %lld\n",
                a.batch, p.n_a, p.m, static_cast<long long>(p.global_batch()));
  planner::Workload w;
  w.avg_context = a.context;
  const planner::Estimate e = planner::estimate(model, ha, he, p, w);
  const planner::SimResult sim = planner::simulate(p, e.t, model.layer_is_moe, {});
  std::printf("deployment %s: %s, B=%lld, context %.0f, attention on %s, experts on %s\n", a.evaluate.c_str(),
              p.to_string().c_str(), static_cast<long long>(p.global_batch()), a.context, ha.name.c_str(),
              he.name.c_str());
  std::printf("per layer and micro-batch: T_a %.3f ms, T_e %.3f ms, A2E %.3f ms, E2A %.3f ms (b_e %.1f tokens/expert)\n",
              e.t.attn * 1e3, e.t.expert * 1e3, e.t.a2e() * 1e3, e.t.e2a() * 1e3, e.t.b_e);
  std::printf("predicted TPOT %.2f ms (simulated %.2f ms), decode throughput %.1f tok/s\n", e.t_total * 1e3,
              sim.t_total * 1e3, e.tokens_per_s);
  return 0;
}

std::string hardware_dir(const PlanArgs& a) {
  if (!a.hardware_dir.empty()) return a.hardware_dir;
  if (const char* env = std::getenv("TANDEM_HARDWARE_DIR")) return env;
  if (std::filesystem::is_directory("configs/hardware")) return "configs/hardware";
  return TANDEM_DEFAULT_HARDWARE_DIR;
}

void print_table(const planner::SearchResult& r, const planner::HardwareProfile& ha,
                 const planner::HardwareProfile& he, int top) {
  std::printf("%-3s %-10s %-10s %5s %2s %5s %7s %8s %9s %9s %9s %7s %7s %6s %6s %5s\n", "#", "attention", "experts",
              "GPUs", "m", "b_a", "B", "TPOT ms", "tok/s", "tok/s/GPU", "tok/unit", "hdrm_a", "hdrm_e", "Ta/Te",
              "Tc/Tf", "m_min");
  int i = 0;
  for (const auto& c : r.plans) {
    if (++i > top) break;
    const auto& p = c.plan;
    const auto& e = c.est;
    const std::string att = std::to_string(p.n_a) + "x" + std::to_string(p.tp_a) + " " + ha.name;
    const std::string exp = std::to_string(p.n_e) + "x" + std::to_string(p.tp_e) + " " + he.name;
    std::printf("%-3d %-10s %-10s %5d %2d %5lld %7lld %8.1f %9.0f %9.1f %9.0f %6.1fG %6.1fG %6.2f %6.2f %5d\n", i,
                att.c_str(), exp.c_str(), p.gpus(), p.m, static_cast<long long>(p.b_a),
                static_cast<long long>(p.global_batch()), e.t_total * 1e3, e.tokens_per_s, e.per_gpu, e.per_dollar,
                e.attn_headroom() / 1e9, e.expert_headroom() / 1e9, e.t.attn / e.t.expert, e.t_c / e.t_f, e.min_m);
  }
}

int run_plan(const PlanArgs& a) {
  auto model = planner::ModelShape::load(a.model);
  if (!model.is_ok()) {
    std::fprintf(stderr, "tandem plan: %s\n", model.status().to_string().c_str());
    return 2;
  }
  const std::string dir = hardware_dir(a);
  auto ha = planner::HardwareProfile::find(a.attention_hw, dir);
  if (!ha.is_ok()) {
    std::fprintf(stderr, "tandem plan: --attention-hw: %s\n", ha.status().to_string().c_str());
    return 2;
  }
  auto he = planner::HardwareProfile::find(a.expert_hw.empty() ? a.attention_hw : a.expert_hw, dir);
  if (!he.is_ok()) {
    std::fprintf(stderr, "tandem plan: --expert-hw: %s\n", he.status().to_string().c_str());
    return 2;
  }
  planner::SearchOptions o;
  o.tpot_slo_ms = a.tpot_slo_ms;
  o.max_gpus = a.gpus;
  o.budget_per_hour = a.budget;
  o.max_micro_batches = a.max_micro_batches;
  o.workload.avg_context = a.context;
  o.keep = static_cast<size_t>(std::max(1, a.top));
  const std::string objective = a.objective.empty() ? (a.budget > 0 ? "dollar" : "gpu") : a.objective;
  o.objective = objective == "dollar" ? planner::Objective::kPerDollar : planner::Objective::kPerGpu;

  if (!a.evaluate.empty()) return run_evaluate(a, *model, *ha, *he);

  std::printf("model %s: %.1fB parameters (%.1fB outside the experts), %lld experts, top-%lld, %lld layers\n",
              model->name.c_str(), model->total_params() / 1e9, model->attention_params() / 1e9,
              static_cast<long long>(model->experts), static_cast<long long>(model->top_k),
              static_cast<long long>(model->layers));
  std::printf("attention on %s (%s), experts on %s (%s); TPOT SLO %.0f ms, context %.0f tokens, objective per %s\n",
              ha->name.c_str(), ha->kind.c_str(), he->name.c_str(), he->kind.c_str(), a.tpot_slo_ms, a.context,
              objective == "dollar" ? "price unit" : "GPU");
  auto r = planner::search(*model, *ha, *he, o);
  if (!r.is_ok()) {
    std::fprintf(stderr, "tandem plan: %s\n", r.status().message().c_str());
    return 1;
  }
  print_table(*r, *ha, *he, a.top);
  const planner::Candidate& best = r->plans.front();

  // The simulator replays the chosen plan as a check of the analytic numbers.
  planner::SimOptions so;
  so.record_trace = !a.trace.empty();
  if (a.hot_expert != 1) {
    so.expert_load.assign(static_cast<size_t>(best.plan.n_e), 1.0);
    so.expert_load[0] = a.hot_expert;
  }
  const planner::SimResult sim = planner::simulate(best.plan, best.est.t, model->layer_is_moe, so);
  char skew[64] = "";
  if (a.hot_expert != 1) std::snprintf(skew, sizeof skew, " with expert node 0 at %.2fx load", a.hot_expert);
  std::printf("simulated iteration of plan 1%s: %.2f ms (analytic %.2f ms, %+.1f%%); attention busy %.0f%%, experts "
              "busy %.0f%%\n",
              skew,
              sim.t_total * 1e3, best.est.t_total * 1e3, (best.est.t_total / sim.t_total - 1) * 100,
              sim.attention_busy * 100, sim.expert_busy * 100);
  if (!a.trace.empty()) {
    std::ofstream t(a.trace);
    t << sim.chrome_trace_json();
    if (!t) {
      std::fprintf(stderr, "tandem plan: cannot write %s\n", a.trace.c_str());
      return 1;
    }
    std::printf("wrote trace %s (open in ui.perfetto.dev or chrome://tracing)\n", a.trace.c_str());
  }
  for (const auto* hw : {&*ha, &*he}) {
    auto col = planner::best_colocated(*model, *hw, o);
    if (col.is_ok())
      std::printf("colocated on %s for comparison: tp=%d, batch %lld, TPOT %.1f ms, %.1f tok/s/GPU, %.0f tok/unit\n",
                  hw->name.c_str(), col->tp, static_cast<long long>(col->batch), col->t_total * 1e3, col->per_gpu,
                  col->per_dollar);
    else
      std::printf("colocated on %s: %s\n", hw->name.c_str(), col.status().message().c_str());
    if (hw == &*he || ha->name == he->name) break;
  }

  planner::DeploymentInputs in;
  namespace fs = std::filesystem;
  in.model_path = a.model_path;
  if (in.model_path.empty())
    in.model_path = fs::is_directory(a.model) ? a.model : fs::path(a.model).parent_path().string();
  in.attention_hw = ha->name;
  in.expert_hw = he->name;
  in.device = ha->device;
  api::DeploymentConfig d = planner::to_deployment(best, o, in);
  std::ofstream f(a.out);
  f << "# Written by `tandem plan`; every key is in docs/configuration.md.\n" << d.to_yaml();
  if (!f) {
    std::fprintf(stderr, "tandem plan: cannot write %s\n", a.out.c_str());
    return 1;
  }
  std::printf("wrote %s\n", a.out.c_str());
  return 0;
}

}  // namespace

void register_plan(CLI::App& app) {
  static PlanArgs a;
  auto* cmd = add_command(app, "plan", "Choose a disaggregated deployment and write it as a deployment YAML",
                          [] { return run_plan(a); });
  cmd->add_option("--model", a.model, "Model directory or its config.json")->required();
  cmd->add_option("--attention-hw", a.attention_hw, "GPU kind of attention nodes (configs/hardware/NAME.yaml or a path)")
      ->capture_default_str();
  cmd->add_option("--expert-hw", a.expert_hw, "GPU kind of expert nodes (default: the attention kind)");
  cmd->add_option("--hardware-dir", a.hardware_dir, "Directory of hardware profiles (default: configs/hardware)");
  cmd->add_option("--tpot-slo-ms", a.tpot_slo_ms, "Time-per-output-token target")->capture_default_str()
      ->check(CLI::PositiveNumber);
  auto* gpus = cmd->add_option("--gpus", a.gpus, "At most this many GPUs in all")->check(CLI::PositiveNumber);
  cmd->add_option("--budget", a.budget, "At most this price per hour (units of the hardware files' price)")
      ->check(CLI::PositiveNumber)
      ->excludes(gpus);
  cmd->add_option("--objective", a.objective, "Rank by throughput per GPU or per price unit (gpu|dollar)")
      ->check(CLI::IsMember({"gpu", "dollar"}));
  cmd->add_option("--context", a.context, "Average tokens in context during decode (s)")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-micro-batches", a.max_micro_batches, "N_m: largest m tried")->capture_default_str()
      ->check(CLI::Range(1, 16));
  cmd->add_option("--top", a.top, "Plans printed")->capture_default_str();
  cmd->add_option("--out", a.out, "Deployment YAML to write")->capture_default_str();
  cmd->add_option("--model-path", a.model_path, "model.path written into the YAML (default: the --model directory)");
  cmd->add_option("--trace", a.trace, "Write the simulated timeline of the best plan as Chrome/Perfetto trace JSON");
  cmd->add_option("--hot-expert", a.hot_expert,
                  "Simulate the best plan with expert node 0 at this multiple of the uniform load (routing skew)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--evaluate", a.evaluate,
                  "Predict this deployment YAML (its node counts and m) instead of searching; needs --batch");
  cmd->add_option("--batch", a.batch, "With --evaluate: sequences decoding at once in the whole cluster (B)")
      ->check(CLI::PositiveNumber);
}

}  // namespace tandem::cli
