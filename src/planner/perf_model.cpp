#include "tandem/planner/perf_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>

namespace tandem::planner {

ModelShape ModelShape::from_config(const model::ModelConfig& c, const std::string& name) {
  ModelShape g;
  g.name = name;
  g.hidden = c.hidden_size;
  g.expert_ffn = c.moe.expert_intermediate;
  g.layers = c.num_layers;
  g.experts = c.moe.num_experts;
  g.top_k = c.moe.top_k;
  g.heads = c.num_heads;
  g.kv_heads = c.num_kv_heads;
  g.head_dim = c.head_dim;
  g.vocab = c.vocab_size;
  g.dense_ffn = c.dense_intermediate;
  g.shared_ffn = c.moe.shared_expert_intermediate;
  g.tied_embeddings = c.tie_word_embeddings;
  g.layer_is_moe = c.layer_is_moe;
  return g;
}

Result<ModelShape> ModelShape::load(const std::string& dir_or_config) {
  namespace fs = std::filesystem;
  fs::path p(dir_or_config);
  if (fs::is_directory(p)) p /= "config.json";
  TANDEM_ASSIGN_OR_RETURN(model::ModelConfig c, model::ModelConfig::from_file(p.string()));
  fs::path dir = p.parent_path();
  std::string name = dir.filename().string();
  if (name.empty() || name == ".") name = fs::absolute(dir).filename().string();
  return from_config(c, name);
}

int64_t ModelShape::moe_layers() const {
  return static_cast<int64_t>(std::count(layer_is_moe.begin(), layer_is_moe.end(), true));
}

double ModelShape::attention_params() const {
  const double h = static_cast<double>(hidden);
  const double per_layer = h * static_cast<double>(q_dim() + 2 * kv_dim())  // QKV
                           + static_cast<double>(q_dim()) * h                // output projection
                           + 2 * h;                                           // norms
  double total = per_layer * static_cast<double>(layers);
  for (bool moe : layer_is_moe) {
    if (moe) {
      total += h * static_cast<double>(experts);  // router gate
      if (shared_ffn > 0) total += 3 * h * static_cast<double>(shared_ffn) + h;
    } else {
      total += 3 * h * static_cast<double>(dense_ffn);
    }
  }
  const double embed = static_cast<double>(vocab) * h;
  return total + embed * (tied_embeddings ? 1 : 2) + h;
}

std::string Plan::to_string() const {
  return "n_a=" + std::to_string(n_a) + " tp_a=" + std::to_string(tp_a) + " n_e=" + std::to_string(n_e) +
         " tp_e=" + std::to_string(tp_e) + " m=" + std::to_string(m) + " b_a=" + std::to_string(b_a);
}

int min_micro_batches(double t_c, double t_f) {
  if (t_f <= 0) return 1;
  // Eq. 3; the epsilon keeps m = 3 when T_c / T_f is exactly 1/2.
  return static_cast<int>(std::ceil(2.0 * (1.0 + t_c / t_f) - 1e-9));
}

namespace {

// One kernel on the roofline: as slow as its FLOPs or its bytes make it.
double roofline(const HardwareProfile& hw, double flops, double bytes) {
  return std::max(flops / hw.flops(), bytes / hw.mem_bw());
}

// Ring all-reduce of `bytes` across tp GPUs of one server.
double all_reduce(const HardwareProfile& hw, int tp, double bytes) {
  if (tp <= 1) return 0;
  return 2.0 * (tp - 1) / tp * bytes / hw.interconnect_bw() + 2 * hw.interconnect_latency_us * 1e-6;
}

// A dense SwiGLU MLP of width f over b tokens, sharded over tp GPUs.
double mlp_time(const HardwareProfile& hw, const ModelShape& g, double b, double f, int tp, const Workload& w) {
  const double h = static_cast<double>(g.hidden);
  const double params = 3 * h * f / tp;
  return roofline(hw, 2 * b * params, params * w.weight_bytes + b * (2 * h + 3 * f / tp) * w.act_bytes);
}

// Attention-side work of one layer for b sequences at tp: norms, QKV, attention
// over the KV cache, output projection and its all-reduce (Table 2's first two
// rows plus the KV read of section 4.2).
double attention_core(const HardwareProfile& hw, const ModelShape& g, double b, int tp, const Workload& w) {
  const double h = static_cast<double>(g.hidden), q = static_cast<double>(g.q_dim()),
               kv = static_cast<double>(g.kv_dim()), s = w.avg_context;
  // KV heads are split across TP ranks; beyond kv_heads ranks they are replicated.
  const double kv_shard = static_cast<double>(std::min<int64_t>(tp, g.kv_heads));
  const double qkv_params = h * (q + 2 * kv) / tp, o_params = q * h / tp;
  double t = roofline(hw, 2 * b * qkv_params, qkv_params * w.weight_bytes + b * (h + (q + 2 * kv) / tp) * w.act_bytes);
  t += roofline(hw, 4 * b * s * q / tp, b * s * 2 * kv / kv_shard * w.kv_bytes);
  t += roofline(hw, 2 * b * o_params, o_params * w.weight_bytes + b * (q / tp + h) * w.act_bytes);
  t += roofline(hw, 0, 4 * b * h * w.act_bytes);  // two RMSNorms, residual adds
  t += all_reduce(hw, tp, b * h * w.act_bytes);
  return t;
}

// Piecewise-linear through (xs, ys), sorted by x, extended past the ends along
// the end segments (a measured profile covers the batch sizes it tried; the
// planner may ask for more) and kept positive.
double interpolate(const std::vector<std::pair<double, double>>& pts, double x) {
  if (pts.size() == 1) return pts.front().second;
  size_t i = 1;
  while (i + 1 < pts.size() && x > pts[i].first) ++i;
  const auto [x0, y0] = pts[i - 1];
  const auto [x1, y1] = pts[i];
  const double y = x1 == x0 ? y1 : y0 + (y1 - y0) * (x - x0) / (x1 - x0);
  return std::max(y, 0.01 * std::min(y0, y1));
}

// The measured points of `what` on the model being planned, as {x: {y: seconds}}.
std::map<double, std::vector<std::pair<double, double>>> measured(const HardwareProfile& hw, const ModelShape& g,
                                                                   const std::string& what) {
  std::map<double, std::vector<std::pair<double, double>>> by_y;
  if (hw.kind != "measured" || hw.measured_model != g.name) return by_y;
  for (const auto& p : hw.measurements)
    if (p.what == what) by_y[p.y].emplace_back(p.x, p.us * 1e-6);
  for (auto& [y, pts] : by_y) std::sort(pts.begin(), pts.end());
  return by_y;
}

// Attention + router of one layer for `batch` decode tokens at `context`:
// along batch within each measured context, then across contexts.
std::optional<double> measured_attention(const HardwareProfile& hw, const ModelShape& g, double batch,
                                         double context) {
  const auto by_context = measured(hw, g, "attention");
  if (by_context.empty()) return std::nullopt;
  std::vector<std::pair<double, double>> across;
  for (const auto& [ctx, pts] : by_context) across.emplace_back(ctx, interpolate(pts, batch));
  return interpolate(across, context);
}

// All experts of one layer, each with `tokens` tokens (what the profile times).
std::optional<double> measured_experts(const HardwareProfile& hw, const ModelShape& g, double tokens) {
  const auto by_y = measured(hw, g, "experts");
  if (by_y.empty()) return std::nullopt;
  return interpolate(by_y.begin()->second, tokens);
}

}  // namespace

StageTimes stage_times(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he, const Plan& p,
                       const Workload& w) {
  StageTimes t;
  const double h = static_cast<double>(g.hidden), hp = static_cast<double>(g.expert_ffn);
  const double b = static_cast<double>(p.b_a);
  const double E = static_cast<double>(g.experts), K = static_cast<double>(g.top_k);
  const double overhead_a = ha.layer_overhead_us * 1e-6, overhead_e = he.layer_overhead_us * 1e-6;

  // Attention node, MoE layer: attention, router gate (replicated, it is tiny),
  // and a shared expert if the model has one.
  const double core = attention_core(ha, g, b, p.tp_a, w);
  t.attn = core + roofline(ha, 2 * b * h * E, h * E * w.weight_bytes) + overhead_a;
  // A profile measured on this very model knows T_a better than any rate: the
  // paper's planner, too, works from profiled times (section 4.2).
  const auto attn_measured = p.tp_a == 1 ? measured_attention(ha, g, b, w.avg_context) : std::nullopt;
  if (attn_measured) t.attn = *attn_measured;
  if (g.shared_ffn > 0)
    t.attn += mlp_time(ha, g, b, static_cast<double>(g.shared_ffn), p.tp_a, w) +
              all_reduce(ha, p.tp_a, b * h * w.act_bytes);
  t.dense_attn = attn_measured ? *attn_measured : core + overhead_a;
  if (g.dense_ffn > 0)
    t.dense_attn += mlp_time(ha, g, b, static_cast<double>(g.dense_ffn), p.tp_a, w) +
                    all_reduce(ha, p.tp_a, b * h * w.act_bytes);

  // Expert node: E / n_e experts, each seeing b_e = n_a b_a K / E tokens of the
  // micro-batch (batch conservation of section 4.2, uniform routing); Table 2's
  // FFN rows per expert, then the TP reduction of the expert outputs.
  const double experts_per_node = E / p.n_e;
  t.b_e = static_cast<double>(p.n_a) * b * K / E;
  const double expert_params = 3 * h * hp / p.tp_e;
  const double one_expert = roofline(he, 2 * t.b_e * expert_params,
                                     expert_params * w.weight_bytes + t.b_e * (2 * h + 3 * hp / p.tp_e) * w.act_bytes);
  t.expert = experts_per_node * one_expert + all_reduce(he, p.tp_e, experts_per_node * t.b_e * h * w.act_bytes) +
             overhead_e;
  if (p.tp_e == 1)
    if (auto all = measured_experts(he, g, t.b_e)) t.expert = *all * experts_per_node / E;

  // M2N (Eq. 6): an attention GPU sends its b_a K token copies (its 1/tp_a
  // slice) to n_e expert nodes; an expert GPU returns its tokens to n_a
  // attention nodes. Util() of Eq. 6 becomes a per-destination cost plus the
  // NIC efficiency of the profile.
  const double a2e_bytes = b * K * h * w.act_bytes / p.tp_a;
  const double e2a_bytes = experts_per_node * t.b_e * h * w.act_bytes / p.tp_e;
  t.a2e_busy = p.n_e * ha.nic_per_message_us * 1e-6 + a2e_bytes / ha.nic_bw();
  t.e2a_busy = p.n_a * he.nic_per_message_us * 1e-6 + e2a_bytes / he.nic_bw();
  // The slower of the two ends sets when the data has landed.
  t.a2e_latency = std::max(ha.nic_latency_us, he.nic_latency_us) * 1e-6;
  t.e2a_latency = t.a2e_latency;

  const double head_params = h * static_cast<double>(g.vocab) / p.tp_a;
  t.head = roofline(ha, 2 * b * head_params, head_params * w.weight_bytes + b * h * w.act_bytes) + overhead_a;
  if (p.tp_a == 1)
    if (auto head = measured(ha, g, "head"); !head.empty()) t.head = interpolate(head.begin()->second, b);
  return t;
}

double iteration_time(const StageTimes& t, const Plan& p, const std::vector<bool>& layer_is_moe) {
  const double m = p.m;
  const double bottleneck = std::max({t.attn, t.expert, t.a2e_busy, t.e2a_busy});
  const double round_trip = t.attn + t.a2e() + t.expert + t.e2a();
  const double cycle = std::max(m * bottleneck, round_trip);
  int64_t moe = 0, dense = 0;
  for (bool x : layer_is_moe) (x ? moe : dense) += 1;
  // Eq. 5, T_total = (T_a + T_e + 2 T_c) + T_f (m L - 1), written as
  // (L - 1) cycles + the last layer of the last micro-batch, so that it also
  // holds when the round trip, not a resource, sets the cycle. Dense layers
  // stay on the attention node; the engine runs the LM heads after the last
  // layer of every micro-batch has landed (src/engine/pipeline.cpp).
  double t_total = m * dense * t.dense_attn + m * t.head;
  if (moe > 0) t_total += static_cast<double>(moe - 1) * cycle + round_trip + (m - 1) * bottleneck;
  return t_total;
}

Estimate estimate(const ModelShape& g, const HardwareProfile& ha, const HardwareProfile& he, const Plan& p,
                  const Workload& w) {
  Estimate e;
  e.t = stage_times(g, ha, he, p, w);
  e.t_f = std::max(e.t.attn, e.t.expert);
  e.t_c = std::max(e.t.a2e(), e.t.e2a());
  e.bottleneck = std::max({e.t.attn, e.t.expert, e.t.a2e_busy, e.t.e2a_busy});
  e.round_trip = e.t.attn + e.t.a2e() + e.t.expert + e.t.e2a();
  e.cycle = std::max(p.m * e.bottleneck, e.round_trip);
  e.comm_hidden = p.m * e.bottleneck >= e.round_trip;
  e.min_m = min_micro_batches(e.t_c, e.t_f);
  e.t_total = iteration_time(e.t, p, g.layer_is_moe);
  e.tokens_per_s = static_cast<double>(p.global_batch()) / e.t_total;
  e.cost_per_hour = p.attention_gpus() * ha.price_per_hour + p.expert_gpus() * he.price_per_hour;
  e.per_gpu = e.tokens_per_s / p.gpus();
  e.per_dollar = e.cost_per_hour > 0 ? e.tokens_per_s * 3600 / e.cost_per_hour : 0;

  // Eq. 8: 4 m b_a s h L / g + 2 P_a < tp_a C_a, per GPU here, with the KV
  // width taken from the config (kv_dim = h / g when head_dim = h / heads).
  const double kv_shard = static_cast<double>(std::min<int64_t>(p.tp_a, g.kv_heads));
  e.attn_weights = g.attention_params() * w.weight_bytes / p.tp_a;
  e.attn_kv = static_cast<double>(p.m) * p.b_a * w.avg_context * 2 * static_cast<double>(g.layers) *
              static_cast<double>(g.kv_dim()) * w.kv_bytes / kv_shard;
  e.attn_capacity = ha.usable_bytes();
  e.expert_weights = static_cast<double>(g.experts) / p.n_e * static_cast<double>(g.moe_layers()) *
                     g.expert_params() * w.weight_bytes / p.tp_e;
  e.expert_capacity = he.usable_bytes();
  return e;
}

ColocatedEstimate estimate_colocated(const ModelShape& g, const HardwareProfile& hw, int tp, int64_t batch,
                                     const Workload& w) {
  ColocatedEstimate c;
  c.tp = tp;
  c.batch = batch;
  const double b = static_cast<double>(batch), h = static_cast<double>(g.hidden),
               hp = static_cast<double>(g.expert_ffn), E = static_cast<double>(g.experts),
               K = static_cast<double>(g.top_k);
  const double overhead = hw.layer_overhead_us * 1e-6;
  const double core = attention_core(hw, g, b, tp, w);
  // Experts sharded over the tp GPUs (each GPU holds 1/tp of every expert),
  // each expert seeing b K / E tokens; no other nodes, so no M2N.
  const double b_e = b * K / E;
  const double expert_params = 3 * h * hp / tp;
  const double experts = E * roofline(hw, 2 * b_e * expert_params,
                                      expert_params * w.weight_bytes + b_e * (2 * h + 3 * hp / tp) * w.act_bytes) +
                         all_reduce(hw, tp, b * h * w.act_bytes);
  double t = 0;
  for (bool moe : g.layer_is_moe) {
    t += core + 2 * overhead;
    if (moe) {
      t += experts + roofline(hw, 2 * b * h * E, h * E * w.weight_bytes);
      if (g.shared_ffn > 0) t += mlp_time(hw, g, b, static_cast<double>(g.shared_ffn), tp, w);
    } else if (g.dense_ffn > 0) {
      t += mlp_time(hw, g, b, static_cast<double>(g.dense_ffn), tp, w) + all_reduce(hw, tp, b * h * w.act_bytes);
    }
  }
  const double head_params = h * static_cast<double>(g.vocab) / tp;
  t += roofline(hw, 2 * b * head_params, head_params * w.weight_bytes) + overhead;
  c.t_total = t;
  c.tokens_per_s = b / t;
  c.per_gpu = c.tokens_per_s / tp;
  c.per_dollar = hw.price_per_hour > 0 ? c.tokens_per_s * 3600 / (tp * hw.price_per_hour) : 0;
  const double kv_shard = static_cast<double>(std::min<int64_t>(tp, g.kv_heads));
  c.weights = g.total_params() * w.weight_bytes / tp;
  c.kv = b * w.avg_context * 2 * static_cast<double>(g.layers) * static_cast<double>(g.kv_dim()) * w.kv_bytes / kv_shard;
  c.capacity = hw.usable_bytes();
  return c;
}

}  // namespace tandem::planner
