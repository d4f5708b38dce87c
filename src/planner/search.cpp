#include "tandem/planner/search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace tandem::planner {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string gb(double bytes) { return fmt("%.1f GB", bytes / 1e9); }
std::string ms(double s) { return fmt("%.1f ms", s * 1e3); }

std::vector<int> powers_of_two_dividing(int limit, int64_t must_divide) {
  std::vector<int> out;
  for (int tp = 1; tp <= limit; tp *= 2)
    if (must_divide % tp == 0) out.push_back(tp);
  return out;
}

// What was closest to working, for the explanation when nothing fits.
struct Diagnosis {
  double min_attn_weights = std::numeric_limits<double>::infinity();  // per GPU, best tp_a
  int min_attn_tp = 0;
  double min_expert_weights = std::numeric_limits<double>::infinity();  // per GPU, best (n_e, tp_e)
  int min_expert_tp = 0, min_expert_ne = 0;
  bool kv_fits = false;
  double kv_short = std::numeric_limits<double>::infinity();  // bytes missing for one sequence per micro-batch
  double min_tpot = std::numeric_limits<double>::infinity();
  Candidate fastest;
  int min_gpus = std::numeric_limits<int>::max();
  Candidate smallest;
  double min_cost = std::numeric_limits<double>::infinity();
  Candidate cheapest;
};

Status explain(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he, const SearchOptions& o,
               const Diagnosis& d) {
  const std::string head = "no deployment of " + g.name + " on " + ha.name + " attention + " + he.name +
                           " experts meets the constraints: ";
  if (d.min_attn_tp == 0 || d.min_attn_weights > ha.usable_bytes())
    return failed_precondition(
        head + "memory (attention side): the non-expert weights (" + fmt("%.2f", g.attention_params() / 1e9) +
        "B parameters) need " + gb(d.min_attn_weights) + " per GPU even at tp_a=" + std::to_string(d.min_attn_tp) +
        ", but a " + ha.name + " has " + gb(ha.usable_bytes()) + " usable (" + gb(ha.memory_gb * 1e9) + " x " +
        fmt("%.2f", ha.memory_usable_fraction) + ")");
  if (d.min_expert_tp == 0 || d.min_expert_weights > he.usable_bytes())
    return failed_precondition(
        head + "memory (expert side): with n_e=" + std::to_string(d.min_expert_ne) + " expert nodes at tp_e=" +
        std::to_string(d.min_expert_tp) + " each GPU holds " + gb(d.min_expert_weights) + " of expert weights, but a " +
        he.name + " has " + gb(he.usable_bytes()) + " usable");
  if (!d.kv_fits)
    return failed_precondition(head + "memory (KV cache): after the weights, one sequence of " +
                               fmt("%.0f", o.workload.avg_context) + " tokens per micro-batch does not fit on any " +
                               ha.name + " attention node (short by " + gb(d.kv_short) + " per GPU at best)");
  if (d.min_tpot > o.tpot_slo_ms * 1e-3) {
    const Estimate& e = d.fastest.est;
    return failed_precondition(
        head + "the TPOT SLO of " + fmt("%.1f", o.tpot_slo_ms) + " ms is unreachable: the fastest plan (" +
        d.fastest.plan.to_string() + ") already takes " + ms(d.min_tpot) + " per output token with one sequence per " +
        "micro-batch (per layer T_a " + fmt("%.0f", e.t.attn * 1e6) + " us, T_e " + fmt("%.0f", e.t.expert * 1e6) +
        " us, T_c " + fmt("%.0f", e.t_c * 1e6) + " us, " + std::to_string(g.layers) + " layers)");
  }
  if (o.max_gpus > 0 && d.min_gpus > o.max_gpus)
    return failed_precondition(head + "GPU count: the smallest plan that fits and meets the SLO (" +
                               d.smallest.plan.to_string() + ") needs " + std::to_string(d.min_gpus) +
                               " GPUs; --gpus allows " + std::to_string(o.max_gpus));
  if (o.budget_per_hour > 0 && d.min_cost > o.budget_per_hour)
    return failed_precondition(head + "budget: the cheapest plan that fits and meets the SLO (" +
                               d.cheapest.plan.to_string() + ") costs " + fmt("%.2f", d.min_cost) +
                               " per hour; --budget allows " + fmt("%.2f", o.budget_per_hour));
  return failed_precondition(head + "GPU count and budget together exclude every plan that fits and meets the SLO");
}

}  // namespace

double score(const Estimate& e, Objective o) { return o == Objective::kPerGpu ? e.per_gpu : e.per_dollar; }

Result<SearchResult> search(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he,
                            const SearchOptions& o) {
  if (g.experts <= 0 || g.top_k <= 0 || g.moe_layers() == 0)
    return invalid_argument("model " + g.name + " has no MoE layers: there is nothing to disaggregate");
  if (o.tpot_slo_ms <= 0) return invalid_argument("the TPOT SLO must be positive");
  if (o.min_micro_batches < 1 || o.max_micro_batches < o.min_micro_batches)
    return invalid_argument("micro-batch range [" + std::to_string(o.min_micro_batches) + ", " +
                            std::to_string(o.max_micro_batches) + "] is empty");
  const double slo = o.tpot_slo_ms * 1e-3;
  const auto tps_a = powers_of_two_dividing(ha.gpus_per_node, g.heads);
  const auto tps_e = powers_of_two_dividing(he.gpus_per_node, g.expert_ffn);
  std::vector<int> nes;
  for (int n = 1; n <= std::min<int64_t>(g.experts, o.max_expert_nodes); ++n)
    if (g.experts % n == 0) nes.push_back(n);

  SearchResult out;
  Diagnosis d;
  std::vector<Candidate> all;
  for (int tp_a : tps_a) {
    Plan probe;
    probe.tp_a = tp_a;
    const Estimate pa = estimate(g, ha, he, probe, o.workload);
    if (pa.attn_weights < d.min_attn_weights) d.min_attn_weights = pa.attn_weights, d.min_attn_tp = tp_a;
    if (pa.attn_weights > pa.attn_capacity) continue;
    for (int tp_e : tps_e) {
      for (int n_e : nes) {
        probe.tp_e = tp_e;
        probe.n_e = n_e;
        const Estimate pe = estimate(g, ha, he, probe, o.workload);
        if (pe.expert_weights < d.min_expert_weights)
          d.min_expert_weights = pe.expert_weights, d.min_expert_tp = tp_e, d.min_expert_ne = n_e;
        if (pe.expert_weights > pe.expert_capacity) continue;
        for (int m = o.min_micro_batches; m <= o.max_micro_batches; ++m) {
          for (int n_a = 1; n_a <= o.max_attention_nodes; ++n_a) {
            Plan p{tp_a, n_a, tp_e, n_e, m, 1};
            const Estimate e1 = estimate(g, ha, he, p, o.workload);
            const double kv_per_seq = e1.attn_kv / m;
            const double room = e1.attn_capacity - e1.attn_weights;
            const int64_t b_max = std::min<int64_t>(
                o.max_batch_per_micro_batch, static_cast<int64_t>(std::floor(room / (kv_per_seq * m))));
            if (b_max < 1) {
              d.kv_short = std::min(d.kv_short, kv_per_seq * m - room);
              continue;
            }
            d.kv_fits = true;
            if (e1.t_total < d.min_tpot) d.min_tpot = e1.t_total, d.fastest = {p, e1};
            if (e1.t_total > slo) continue;  // a larger batch is only slower
            if (p.gpus() < d.min_gpus) d.min_gpus = p.gpus(), d.smallest = {p, e1};
            if (e1.cost_per_hour < d.min_cost) d.min_cost = e1.cost_per_hour, d.cheapest = {p, e1};
            if ((o.max_gpus > 0 && p.gpus() > o.max_gpus) ||
                (o.budget_per_hour > 0 && e1.cost_per_hour > o.budget_per_hour))
              continue;
            // Largest b_a in [1, b_max] that meets the SLO: latency grows with b_a.
            int64_t lo = 1, hi = b_max;
            while (lo < hi) {
              const int64_t mid = lo + (hi - lo + 1) / 2;
              p.b_a = mid;
              if (estimate(g, ha, he, p, o.workload).t_total <= slo) lo = mid;
              else hi = mid - 1;
            }
            p.b_a = lo;
            ++out.evaluated;
            all.push_back({p, estimate(g, ha, he, p, o.workload)});
          }
        }
      }
    }
  }
  if (all.empty()) return explain(g, ha, he, o, d);
  std::sort(all.begin(), all.end(), [&](const Candidate& a, const Candidate& b) {
    const double sa = score(a.est, o.objective), sb = score(b.est, o.objective);
    if (sa != sb) return sa > sb;
    return a.plan.gpus() < b.plan.gpus();  // same score: the smaller deployment
  });
  if (all.size() > o.keep) all.resize(o.keep);
  out.plans = std::move(all);
  return out;
}

Result<ColocatedEstimate> best_colocated(const ModelShape& g, const HardwareProfile& hw, const SearchOptions& o) {
  const double slo = o.tpot_slo_ms * 1e-3;
  ColocatedEstimate best;
  bool found = false;
  for (int tp : powers_of_two_dividing(hw.gpus_per_node, g.heads)) {
    if (o.max_gpus > 0 && tp > o.max_gpus) continue;
    ColocatedEstimate c1 = estimate_colocated(g, hw, tp, 1, o.workload);
    if (!c1.fits_memory() || c1.t_total > slo) continue;
    const int64_t b_max = std::min<int64_t>(
        o.max_batch_per_micro_batch * o.max_micro_batches,
        static_cast<int64_t>(std::floor((c1.capacity - c1.weights) / c1.kv)));
    int64_t lo = 1, hi = b_max;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (estimate_colocated(g, hw, tp, mid, o.workload).t_total <= slo) lo = mid;
      else hi = mid - 1;
    }
    ColocatedEstimate c = estimate_colocated(g, hw, tp, lo, o.workload);
    const double s = o.objective == Objective::kPerGpu ? c.per_gpu : c.per_dollar;
    const double sb = o.objective == Objective::kPerGpu ? best.per_gpu : best.per_dollar;
    if (!found || s > sb) best = c, found = true;
  }
  if (!found)
    return failed_precondition("no colocated deployment of " + g.name + " on " + hw.name +
                               " fits in memory and meets the SLO at any tensor-parallel degree");
  return best;
}

api::DeploymentConfig to_deployment(const Candidate& c, const SearchOptions& o, const DeploymentInputs& in) {
  api::DeploymentConfig d;
  const Plan& p = c.plan;
  d.model_path = in.model_path;
  std::string path = in.model_path;
  while (!path.empty() && path.back() == '/') path.pop_back();
  d.served_name = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
  d.attention_nodes = p.n_a;
  d.expert_nodes = p.n_e;
  d.micro_batches = p.m;
  d.device = in.device;
  const int64_t seqs = p.b_a * p.m;  // per attention node
  d.max_running_sequences = static_cast<int>(seqs);
  d.max_batch_tokens = static_cast<int>(std::max<int64_t>(2048, seqs));
  d.kv_block_size = in.kv_block_size;
  // Every sequence's average context, plus the block it is writing into.
  const int64_t blocks_per_seq =
      static_cast<int64_t>(std::ceil(o.workload.avg_context / in.kv_block_size)) + 1;
  d.kv_blocks = static_cast<int>(seqs * blocks_per_seq);
  api::PlanInfo& info = d.plan;
  info.present = true;
  info.attention_hw = in.attention_hw;
  info.expert_hw = in.expert_hw;
  info.attention_tp = p.tp_a;
  info.expert_tp = p.tp_e;
  info.global_batch = static_cast<int>(p.global_batch());
  info.micro_batch_size = static_cast<int>(p.b_a);
  info.avg_context = o.workload.avg_context;
  info.tpot_slo_ms = o.tpot_slo_ms;
  info.predicted_tpot_ms = c.est.t_total * 1e3;
  info.predicted_tokens_per_s = c.est.tokens_per_s;
  info.predicted_tokens_per_s_per_gpu = c.est.per_gpu;
  info.predicted_tokens_per_dollar = c.est.per_dollar;
  return d;
}

}  // namespace tandem::planner
