#include "tandem/planner/profile_fit.h"

#include <algorithm>
#include <array>
#include <cmath>

namespace tandem::planner {

namespace {

// Least squares for y = a + b x; false when x does not vary.
bool fit_line(const std::vector<double>& x, const std::vector<double>& y, double& a, double& b) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) sx += x[i], sy += y[i], sxx += x[i] * x[i], sxy += x[i] * y[i];
  const double d = n * sxx - sx * sx;
  if (x.size() < 2 || std::abs(d) <= 1e-12 * std::max(1.0, sxx * n)) return false;
  b = (n * sxy - sx * sy) / d;
  a = (sy - b * sx) / n;
  return true;
}

// A profile on which stage_times() returns pure byte counts (/1e12) or pure
// FLOP counts (/1e12): the planner's own accounting of the measured work.
HardwareProfile counting(bool bytes) {
  HardwareProfile h;
  h.peak_tflops = bytes ? 1e12 : 1;
  h.memory_bw_gbps = bytes ? 1000 : 1e15;
  h.compute_efficiency = h.memory_efficiency = h.nic_efficiency = 1;
  h.layer_overhead_us = 0;
  h.interconnect_gbps = h.nic_gbps = 1e15;
  h.interconnect_latency_us = h.nic_latency_us = h.nic_per_message_us = 0;
  return h;
}

// Weighted least squares y ≈ X c over the columns in `use` (others stay 0),
// relative error (rows divided by y). False when singular.
bool solve(const std::vector<std::array<double, 3>>& X, const std::vector<double>& y, std::array<bool, 3> use,
           std::array<double, 3>& c) {
  double A[3][4] = {};
  for (size_t i = 0; i < X.size(); ++i) {
    const double wt = 1.0 / (y[i] * y[i]);
    for (int r = 0; r < 3; ++r)
      for (int k = 0; k < 3; ++k) A[r][k] += wt * X[i][r] * X[i][k];
    for (int r = 0; r < 3; ++r) A[r][3] += wt * X[i][r] * y[i];
  }
  for (int r = 0; r < 3; ++r)
    if (!use[r]) {
      for (int k = 0; k < 4; ++k) A[r][k] = 0;
      for (int k = 0; k < 3; ++k) A[k][r] = 0;
      A[r][r] = 1;
    }
  for (int col = 0; col < 3; ++col) {
    int piv = col;
    for (int r = col + 1; r < 3; ++r)
      if (std::abs(A[r][col]) > std::abs(A[piv][col])) piv = r;
    if (std::abs(A[piv][col]) < 1e-300) return false;
    std::swap(A[col], A[piv]);
    for (int r = 0; r < 3; ++r) {
      if (r == col) continue;
      const double f = A[r][col] / A[col][col];
      for (int k = col; k < 4; ++k) A[r][k] -= f * A[col][k];
    }
  }
  for (int r = 0; r < 3; ++r) c[r] = use[r] ? A[r][3] / A[r][r] : 0;
  return true;
}

}  // namespace

Result<HardwareProfile> fit_profile(const ModelShape& g, const ProfilePoints& pts, HardwareProfile h) {
  const Workload w_default;
  const HardwareProfile by_bytes = counting(true), by_flops = counting(false);

  // Attention and experts together: t = overhead + bytes / bandwidth + FLOPs / rate,
  // the work counted the way the planner counts it. A sum, not the planner's
  // max, because on a CPU neither term vanishes; the planner's max then errs
  // low where both matter, which `tandem profile` prints per point.
  std::vector<std::array<double, 3>> X;
  std::vector<double> y;
  for (const auto& p : pts.attention) {
    Workload w = w_default;
    w.avg_context = p.context;
    Plan plan;
    plan.b_a = p.batch;
    X.push_back({1.0, stage_times(g, by_bytes, by_bytes, plan, w).attn * 1e12,
                 stage_times(g, by_flops, by_flops, plan, w).attn * 1e12});
    y.push_back(p.us * 1e-6);
  }
  for (const auto& p : pts.experts) {
    Plan plan;
    plan.b_a = std::max<int64_t>(1, std::llround(p.tokens_per_expert * g.experts / g.top_k));
    X.push_back({1.0, stage_times(g, by_bytes, by_bytes, plan, w_default).expert * 1e12,
                 stage_times(g, by_flops, by_flops, plan, w_default).expert * 1e12});
    y.push_back(p.us * 1e-6);
  }
  if (pts.attention.size() < 2 || pts.experts.empty())
    return failed_precondition("profile: need at least two attention points and one expert point, got " +
                               std::to_string(pts.attention.size()) + " attention and " +
                               std::to_string(pts.experts.size()) + " expert points");
  // Every coefficient must be positive (the overhead may be zero): try the full
  // fit, then without the overhead.
  std::array<double, 3> c{};
  bool ok = false;
  for (std::array<bool, 3> use : {std::array<bool, 3>{true, true, true}, std::array<bool, 3>{false, true, true}}) {
    if (solve(X, y, use, c) && c[0] >= 0 && c[1] > 0 && c[2] > 0) {
      ok = true;
      break;
    }
  }
  // Noisy points can defeat the linear fit; the search below then starts from
  // a generic guess instead.
  h.layer_overhead_us = ok ? c[0] * 1e6 : 0;
  h.memory_bw_gbps = ok ? 1.0 / c[1] / 1e9 : 10;
  h.peak_tflops = ok ? 1.0 / c[2] / 1e12 : 0.1;
  h.compute_efficiency = h.memory_efficiency = 1;

  // Then refine on the planner's own formulas (a roofline max per kernel, not
  // the sum above) by a pattern search on the relative squared error.
  auto predict_error = [&](const HardwareProfile& cand) {
    double err = 0;
    size_t i = 0;
    for (const auto& p : pts.attention) {
      Workload w = w_default;
      w.avg_context = p.context;
      Plan plan;
      plan.b_a = p.batch;
      const double r = stage_times(g, cand, cand, plan, w).attn / y[i++] - 1;
      err += r * r;
    }
    for (const auto& p : pts.experts) {
      Plan plan;
      plan.b_a = std::max<int64_t>(1, std::llround(p.tokens_per_expert * g.experts / g.top_k));
      const double r = stage_times(g, cand, cand, plan, w_default).expert / y[i++] - 1;
      err += r * r;
    }
    return err;
  };
  double best = predict_error(h);
  double step = 0.5;  // relative, for the two rates; the overhead moves by step * max(it, 10 us)
  for (int iter = 0; iter < 1000 && step > 1e-4; ++iter) {
    bool improved = false;
    for (int k = 0; k < 3; ++k) {
      for (double dir : {1.0, -1.0}) {
        HardwareProfile cand = h;
        // Bounds keep a rate the points do not pin down from running off to infinity.
        if (k == 0) cand.memory_bw_gbps = std::clamp(cand.memory_bw_gbps * std::exp(dir * step), 0.01, 1e5);
        if (k == 1) cand.peak_tflops = std::clamp(cand.peak_tflops * std::exp(dir * step), 1e-5, 1e4);
        if (k == 2) cand.layer_overhead_us = std::max(0.0, h.layer_overhead_us + dir * step * std::max(h.layer_overhead_us, 10.0));
        const double e = predict_error(cand);
        if (e < best) best = e, h = cand, improved = true;
      }
    }
    if (!improved) step /= 2;
  }

  // M2N: t = latency + fanout * bytes / bandwidth; the per-destination cost
  // is folded into the latency.
  std::vector<double> bytes, us;
  for (const auto& p : pts.m2n) {
    bytes.push_back(p.bytes * p.fanout);
    us.push_back(p.us * 1e-6);
  }
  double lat = 0, inv_nic = 0;
  if (!fit_line(bytes, us, lat, inv_nic) || inv_nic <= 0)
    return failed_precondition("profile: M2N times do not grow with the bytes sent; measure more sizes");
  h.nic_gbps = 1.0 / inv_nic / 1e9;
  h.nic_latency_us = std::max(0.0, lat * 1e6);
  h.nic_per_message_us = 0;
  h.interconnect_gbps = h.nic_gbps;  // no tensor parallelism measured
  h.interconnect_latency_us = h.nic_latency_us;
  h.compute_efficiency = h.memory_efficiency = h.nic_efficiency = 1;
  h.kind = "measured";
  h.measurements.clear();
  for (const auto& p : pts.attention)
    h.measurements.push_back({"attention", static_cast<double>(p.batch), p.context, p.us});
  for (const auto& p : pts.experts) h.measurements.push_back({"experts", p.tokens_per_expert, 0, p.us});
  for (const auto& p : pts.head) h.measurements.push_back({"head", static_cast<double>(p.batch), 0, p.us});
  for (const auto& p : pts.m2n) h.measurements.push_back({"m2n", p.bytes, static_cast<double>(p.fanout), p.us});
  return h;
}

}  // namespace tandem::planner
