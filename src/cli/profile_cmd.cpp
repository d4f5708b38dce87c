// `tandem profile --config DEPLOYMENT`: measures this machine through the
// project's own kernels (ModelRunner on the deployment's model) and transport
// (the in-process M2N transport), and writes a measured hardware profile that
// `tandem plan --attention-hw FILE` accepts in place of a spec-derived one.
// The measurement is short (a few reps per point) so it can share a machine.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "commands.h"
#include "tandem/api/deployment.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_runner.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/weights.h"
#include "tandem/planner/profile_fit.h"
#include "tandem/transport/inproc_transport.h"

namespace tandem::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct ProfileArgs {
  std::string config;
  std::string out = "measured-profile.yaml";
  std::string name = "measured";
  double price = 1.0;
  int reps = 5;
  int threads = 0;  // 0: the OpenMP default (all cores)
};

// Fastest of `reps` calls after one warm-up, in microseconds: on a machine
// shared with other work the minimum is the estimate of what it can do.
template <typename F>
double time_us(int reps, F&& f) {
  f();
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return best;
}

Status measure_attention(const model::ModelConfig& c, const model::ModelWeights& w, int reps,
                         planner::ProfilePoints& pts) {
  const std::vector<int64_t> batches{1, 4, 16, 48, 64};
  const std::vector<int64_t> contexts{32, 128, 512};
  constexpr int64_t kBlock = 16;
  const int64_t max_seqs = batches.back(), max_blocks = (contexts.back() + kBlock - 1) / kBlock;
  engine::KvCacheShape shape{c.num_layers, max_seqs * max_blocks, kBlock, c.num_kv_heads, c.head_dim};
  TANDEM_ASSIGN_OR_RETURN(auto cache, engine::KvCache::create(shape, shape.bytes()));
  engine::ModelRunner runner(c, w, cache.get());
  const int64_t H = c.hidden_size, K = c.moe.top_k;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  for (int64_t b : batches) {
    for (int64_t s : contexts) {
      const int64_t blocks = (s + kBlock - 1) / kBlock;
      engine::ForwardBatch fb;
      fb.max_blocks_per_seq = blocks;
      std::vector<std::vector<int32_t>> owned;
      for (int64_t i = 0; i < b; ++i) {
        TANDEM_ASSIGN_OR_RETURN(std::vector<int32_t> bl, cache->allocator().allocate(blocks));
        fb.block_tables.insert(fb.block_tables.end(), bl.begin(), bl.end());
        fb.tokens.push_back(1);
        fb.positions.push_back(static_cast<int32_t>(s - 1));
        fb.seq_of_token.push_back(static_cast<int32_t>(i));
        fb.slots.push_back(static_cast<int64_t>(bl[static_cast<size_t>((s - 1) / kBlock)]) * kBlock + (s - 1) % kBlock);
        fb.ctx_len.push_back(static_cast<int32_t>(s));
        owned.push_back(std::move(bl));
      }
      std::vector<float> hidden(static_cast<size_t>(b * H)), moe_in(hidden.size()), topk_w(static_cast<size_t>(b * K));
      std::vector<int32_t> topk_idx(topk_w.size());
      for (auto& x : hidden) x = u(rng);
      const std::vector<float> start = hidden;
      // The planner's T_a is attention plus the router gate of one layer. Every
      // layer in turn, so the weights stream from memory as in a real step
      // rather than sitting in the last-level cache.
      const double us = time_us(reps, [&] {
        hidden = start;
        for (int64_t l = 0; l < c.num_layers; ++l) {
          runner.attention(l, fb, hidden.data(), moe_in.data());
          if (runner.layer_is_moe(l)) runner.route(l, moe_in.data(), b, topk_idx.data(), topk_w.data());
        }
      });
      pts.attention.push_back({b, static_cast<double>(s), us / static_cast<double>(c.num_layers)});
      if (s == contexts.front()) {
        // What a step costs besides its layers: embedding in, final norm and
        // LM head out (the planner's per-micro-batch head time).
        std::vector<int32_t> rows(static_cast<size_t>(b));
        for (int64_t i = 0; i < b; ++i) rows[static_cast<size_t>(i)] = static_cast<int32_t>(i);
        std::vector<float> logits(static_cast<size_t>(b * c.vocab_size));
        const double head_us = time_us(reps, [&] {
          runner.embed(fb, hidden.data());
          runner.lm_head(hidden.data(), rows, logits.data());
        });
        pts.head.push_back({b, head_us});
      }
      for (const auto& bl : owned) cache->allocator().free(bl);
    }
  }
  return Status::ok();
}

Status measure_experts(const model::ModelConfig& c, const model::ModelWeights& w, int reps,
                       planner::ProfilePoints& pts) {
  engine::ModelRunner runner(c, w, nullptr);
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < c.num_layers; ++l)
    if (runner.layer_is_moe(l)) moe_layers.push_back(l);
  if (moe_layers.empty()) return failed_precondition("profile: the model has no MoE layer");
  const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  for (int64_t t : {1, 2, 4, 8, 12, 16, 32, 64}) {
    // Token i picks experts (iK + j) mod E: every expert gets t tokens, each token K distinct experts.
    const int64_t n = (t * E + K - 1) / K;
    std::vector<float> x(static_cast<size_t>(n * H)), out(x.size()), wts(static_cast<size_t>(n * K), 1.0f / K);
    std::vector<int32_t> idx(wts.size());
    for (auto& v : x) v = u(rng);
    for (int64_t i = 0; i < n * K; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i % E);
    // Every MoE layer in turn, for the same reason as attention.
    const double us = time_us(reps, [&] {
      for (int64_t l : moe_layers) runner.experts(l, x.data(), n, idx.data(), wts.data(), out.data());
    });
    pts.experts.push_back({static_cast<double>(n * K) / E, us / static_cast<double>(moe_layers.size())});
  }
  return Status::ok();
}

Status measure_m2n(int reps, planner::ProfilePoints& pts) {
  using namespace transport;
  using namespace std::chrono_literals;
  for (int fanout : {1, 2, 4}) {
    auto fabric = create_inproc_fabric();
    TANDEM_ASSIGN_OR_RETURN(auto sender, create_inproc_transport(fabric, attention_node(0)));
    std::vector<std::unique_ptr<Transport>> receivers;
    std::vector<PeerAddress> receiver_addresses;
    std::vector<NodeId> receiver_ids;
    for (int j = 0; j < fanout; ++j) {
      TANDEM_ASSIGN_OR_RETURN(auto r, create_inproc_transport(fabric, expert_node(static_cast<uint32_t>(j))));
      receiver_addresses.push_back(r->address());
      receiver_ids.push_back(r->self());
      receivers.push_back(std::move(r));
    }
    std::vector<std::future<Status>> connecting;
    connecting.push_back(std::async(std::launch::async, [&] { return sender->connect(receiver_addresses, 5s); }));
    for (auto& r : receivers) {
      connecting.push_back(std::async(std::launch::async, [&, t = r.get()] {
        std::vector<PeerAddress> a{sender->address()};
        return t->connect(a, 5s);
      }));
    }
    for (auto& f : connecting) TANDEM_RETURN_IF_ERROR(f.get());
    for (size_t bytes : {size_t{16} << 10, size_t{256} << 10, size_t{2} << 20}) {
      std::vector<Buffer> bufs;
      for (int j = 0; j < fanout; ++j) {
        TANDEM_ASSIGN_OR_RETURN(Buffer b, sender->allocate(bytes));
        std::fill(b.data(), b.data() + bytes, std::byte{1});
        bufs.push_back(std::move(b));
      }
      uint32_t round = 0;
      Status failed;
      const double us = time_us(reps, [&] {
        MessageHeader h;
        h.kind = MessageKind::kDispatch;
        h.layer = round++;
        h.num_tokens = static_cast<uint32_t>(bytes);
        h.hidden_size = 1;
        h.dtype = DType::kU8;
        std::vector<SendHandle> sends;
        for (int j = 0; j < fanout; ++j) {
          auto s = sender->send(receiver_ids[static_cast<size_t>(j)], h, bufs[static_cast<size_t>(j)], bytes);
          if (!s.is_ok()) return void(failed = s.status());
          sends.push_back(*s);
        }
        for (auto& r : receivers) {
          auto m = r->recv(TagFilter::exact(h.layer, 0, sender->self()), 5s);
          if (!m.is_ok()) return void(failed = m.status());
        }
        for (auto& s : sends)
          if (Status st = s.wait(5s); !st.is_ok()) return void(failed = st);
      });
      TANDEM_RETURN_IF_ERROR(failed);
      pts.m2n.push_back({static_cast<double>(bytes), fanout, us});
    }
  }
  return Status::ok();
}

int run_profile(const ProfileArgs& a) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "tandem profile: %s\n", st.to_string().c_str());
    return 1;
  };
  // As `tandem serve` does for its roles: idle OpenMP workers that spin steal
  // the cores from whatever else runs (measured: medians 100x slower under load).
  setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0);
  // Before anything starts the OpenMP runtime, which reads it once.
  if (a.threads > 0) setenv("OMP_NUM_THREADS", std::to_string(a.threads).c_str(), /*overwrite=*/1);
  auto cfg = api::DeploymentConfig::from_file(a.config);
  if (!cfg.is_ok()) return fail(cfg.status());
  auto ck = model::Checkpoint::open(cfg->model_path);
  if (!ck.is_ok()) return fail(ck.status());
  auto weights = model::ModelWeights::load(ck->config, *ck->weights);
  if (!weights.is_ok()) return fail(weights.status());
  if (cfg->device != "cpu")
    std::fprintf(stderr, "tandem profile: cluster.device is %s; only the CPU backend is profiled so far\n",
                 cfg->device.c_str());

  planner::ProfilePoints pts;
  const auto t0 = Clock::now();
  Status st = measure_attention(ck->config, **weights, a.reps, pts);
  if (st.is_ok()) st = measure_experts(ck->config, **weights, a.reps, pts);
  if (st.is_ok()) st = measure_m2n(a.reps, pts);
  if (!st.is_ok()) return fail(st);
  std::printf("measured %zu points in %.1f s on the CPU backend with %s\n",
              pts.attention.size() + pts.experts.size() + pts.m2n.size(),
              std::chrono::duration<double>(Clock::now() - t0).count(), cfg->model_path.c_str());
  for (const auto& p : pts.attention)
    std::printf("  attention  batch %3lld  context %4.0f  %9.1f us\n", static_cast<long long>(p.batch), p.context, p.us);
  for (const auto& p : pts.experts) std::printf("  experts    %5.1f tokens/expert  %9.1f us\n", p.tokens_per_expert, p.us);
  for (const auto& p : pts.head) std::printf("  head       batch %3lld  %9.1f us\n", static_cast<long long>(p.batch), p.us);
  for (const auto& p : pts.m2n) std::printf("  m2n        %7.0f bytes x %d  %9.1f us\n", p.bytes, p.fanout, p.us);

  planner::HardwareProfile base;
  base.name = a.name;
  base.device = "cpu";
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  base.source = std::string("tandem profile on ") + host + ": CPU backend, model " + cfg->model_path +
                ", in-process M2N transport; rates fitted so the planner's formulas reproduce the measured times";
  base.memory_gb = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1e9;
  base.memory_usable_fraction = 0.5;  // the machine is shared with the OS and the other roles
  base.interconnect = "none (one socket)";
  base.gpus_per_node = 1;
  base.price_per_hour = a.price;
  base.price_source = "assumed: --price " + std::to_string(a.price);
  // Named as `tandem plan --model DIR` names it, so plans of this model use the points.
  const auto g = planner::ModelShape::from_config(
      ck->config, (std::filesystem::path(cfg->model_path) / "config.json").parent_path().filename().string());
  base.measured_model = g.name;
  auto h = planner::fit_profile(g, pts, base);
  if (!h.is_ok()) return fail(h.status());
  std::printf("fitted: %.3f TFLOP/s, %.1f GB/s (planner bytes), %.1f us per layer, M2N %.1f GB/s + %.1f us\n",
              h->peak_tflops, h->memory_bw_gbps, h->layer_overhead_us, h->nic_gbps, h->nic_latency_us);
  // How well the planner's formulas on the fitted profile reproduce the points.
  double worst = 0;
  // Judged without the points themselves (which plans of this model use as
  // they are): how well the fitted rates stand in for them on other models.
  planner::HardwareProfile rates = *h;
  rates.measured_model.clear();
  for (const auto& p : pts.attention) {
    planner::Workload w;
    w.avg_context = p.context;
    planner::Plan plan;
    plan.b_a = p.batch;
    worst = std::max(worst, std::abs(planner::stage_times(g, rates, rates, plan, w).attn * 1e6 / p.us - 1));
  }
  for (const auto& p : pts.experts) {
    planner::Plan plan;
    plan.b_a = std::max<int64_t>(1, std::llround(p.tokens_per_expert * g.experts / g.top_k));
    worst = std::max(worst,
                     std::abs(planner::stage_times(g, rates, rates, plan, planner::Workload{}).expert * 1e6 / p.us - 1));
  }
  std::printf("the fitted rates reproduce the attention and expert points within %.0f%%; plans of %s interpolate "
              "the points themselves\n",
              worst * 100, g.name.c_str());
  std::ofstream f(a.out);
  f << "# Written by `tandem profile`; see docs/planner.md, \"Measured profiles\".\n" << h->to_yaml();
  if (!f) return fail(internal_error("cannot write " + a.out));
  std::printf("wrote %s\n", a.out.c_str());
  return 0;
}

}  // namespace

void register_profile(CLI::App& app) {
  static ProfileArgs a;
  auto* cmd = add_command(app, "profile", "Measure this machine and write a hardware profile for `tandem plan`",
                          [] { return run_profile(a); });
  cmd->add_option("--config", a.config, "Deployment YAML (its model is the one measured)")->required();
  cmd->add_option("--out", a.out, "Profile YAML to write")->capture_default_str();
  cmd->add_option("--name", a.name, "Name of the profile")->capture_default_str();
  cmd->add_option("--price", a.price, "Price per hour of one such machine")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--reps", a.reps, "Timed repetitions per point (the fastest counts)")->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--threads", a.threads,
                  "CPU threads of the kernels (default: all cores; 1 gives steadier numbers on a shared machine)")
      ->check(CLI::Range(0, 1024));
}

}  // namespace tandem::cli
