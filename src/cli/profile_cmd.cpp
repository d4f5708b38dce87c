// `tandem profile --config DEPLOYMENT`: measures this machine through the
// project's own kernels (the CPU ModelRunner, or the GPU runner when the
// deployment puts nodes on cuda, on the deployment's model) and transport
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
#include <functional>
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
#if TANDEM_HAVE_CUDA
#include "tandem/engine/cuda_runner.h"
#include "tandem/kernels/cuda.h"
#endif

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

// What the profile times, on whichever device the nodes would run: the
// attention side (every layer's attention and router for a decode batch; the
// embedding and LM head) and the expert side (every MoE layer's experts for n
// routed tokens). Each call returns when its work is done.
struct ProfiledBackend {
  std::string name;             // "CPU backend", "CUDA backend (NVIDIA H200, f32)"
  engine::KvCache* cache;       // the attention side's block bookkeeping
  double memory_gb = 0;         // device memory of a GPU backend (0: the host's)
  std::function<Status(const engine::ForwardBatch&)> attention_layers;
  std::function<Status(const engine::ForwardBatch&)> head;
  std::function<Status(int64_t n, const float* x, const int32_t* ids, const float* w)> experts;
};

constexpr int64_t kProfileBlock = 16;
const std::vector<int64_t> kProfileBatches{1, 4, 16, 48, 64};
const std::vector<int64_t> kProfileContexts{32, 128, 512};

engine::KvCacheShape profile_cache_shape(const model::ModelConfig& c) {
  const int64_t max_blocks = (kProfileContexts.back() + kProfileBlock - 1) / kProfileBlock;
  return {c.num_layers, kProfileBatches.back() * max_blocks, kProfileBlock, c.num_kv_heads, c.head_dim};
}

// The MoE layers, in order: FAILED_PRECONDITION for a model without one.
Result<std::vector<int64_t>> moe_layers(const model::ModelConfig& c) {
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < c.num_layers; ++l)
    if (c.layer_is_moe[static_cast<size_t>(l)]) layers.push_back(l);
  if (layers.empty()) return failed_precondition("profile: the model has no MoE layer");
  return layers;
}

// The CPU backend: ModelRunner, as the CPU nodes run it.
struct CpuProfile {
  std::unique_ptr<engine::KvCache> cache;
  std::unique_ptr<engine::ModelRunner> runner;
  std::vector<float> hidden, moe_in, topk_w, logits, out;
  std::vector<int32_t> topk_idx;

  Result<ProfiledBackend> make(const model::ModelConfig& c, const model::ModelWeights& w) {
    const engine::KvCacheShape shape = profile_cache_shape(c);
    TANDEM_ASSIGN_OR_RETURN(cache, engine::KvCache::create(shape, shape.bytes()));
    runner = std::make_unique<engine::ModelRunner>(c, w, cache.get());
    TANDEM_ASSIGN_OR_RETURN(const std::vector<int64_t> moe, moe_layers(c));
    const int64_t H = c.hidden_size, K = c.moe.top_k;
    ProfiledBackend b;
    b.name = "CPU backend";
    b.cache = cache.get();
    b.attention_layers = [this, &c, H, K](const engine::ForwardBatch& fb) {
      const int64_t n = fb.num_tokens();
      hidden.assign(static_cast<size_t>(n * H), 0.01f);
      moe_in.resize(hidden.size());
      topk_idx.resize(static_cast<size_t>(n * K));
      topk_w.resize(topk_idx.size());
      // Every layer in turn, so the weights stream from memory as in a real
      // step rather than sitting in the last-level cache.
      for (int64_t l = 0; l < c.num_layers; ++l) {
        runner->attention(l, fb, hidden.data(), moe_in.data());
        if (runner->layer_is_moe(l)) runner->route(l, moe_in.data(), n, topk_idx.data(), topk_w.data());
      }
      return Status::ok();
    };
    b.head = [this, &c, H](const engine::ForwardBatch& fb) {
      hidden.resize(static_cast<size_t>(fb.num_tokens() * H));
      logits.resize(fb.logits_rows.size() * static_cast<size_t>(c.vocab_size));
      runner->embed(fb, hidden.data());
      runner->lm_head(hidden.data(), fb.logits_rows, logits.data());
      return Status::ok();
    };
    b.experts = [this, moe, H](int64_t n, const float* x, const int32_t* ids, const float* wts) {
      out.resize(static_cast<size_t>(n * H));
      for (int64_t l : moe) runner->experts(l, x, n, ids, wts, out.data());
      return Status::ok();
    };
    return b;
  }
};

#if TANDEM_HAVE_CUDA
// The CUDA backend: the GPU runner as the GPU nodes run it (the attention
// side's stages with a device-resident expert exchange; the experts on
// device-resident input).
struct CudaProfile {
  std::unique_ptr<engine::KvCache> cache;
  std::unique_ptr<engine::CudaModelRunner> gpu;
  std::vector<engine::ForwardBatch> one;
  std::vector<float> logits;
  kernels::cuda::DeviceBuffer x_dev;

  Result<ProfiledBackend> make(const model::ModelConfig& c, const model::ModelWeights& w, DType dtype) {
    const engine::KvCacheShape shape = profile_cache_shape(c);
    TANDEM_ASSIGN_OR_RETURN(cache, engine::KvCache::create_unbacked(shape));
    TANDEM_ASSIGN_OR_RETURN(gpu, engine::CudaModelRunner::create(c, w, shape, {.dtype = dtype}));
    TANDEM_ASSIGN_OR_RETURN(const std::vector<int64_t> moe, moe_layers(c));
    TANDEM_ASSIGN_OR_RETURN(const kernels::cuda::DeviceInfo info, kernels::cuda::device_info());
    ProfiledBackend b;
    b.name = "CUDA backend (" + info.name + ", " + (dtype == DType::kBF16 ? "bf16" : "f32") + ")";
    b.memory_gb = static_cast<double>(info.memory.total_bytes) / 1e9;
    b.cache = cache.get();
    b.attention_layers = [this, &c](const engine::ForwardBatch& fb) -> Status {
      one.assign(1, fb);
      engine::ForwardStages& st = gpu->stages();
      TANDEM_RETURN_IF_ERROR(st.begin(one, /*device_exchange=*/true));
      for (int64_t l = 0; l < c.num_layers; ++l) TANDEM_RETURN_IF_ERROR(st.attend(l, 0).status());
      return kernels::cuda::synchronize();
    };
    b.head = [this](const engine::ForwardBatch& fb) -> Status {
      one.assign(1, fb);
      engine::ForwardStages& st = gpu->stages();
      TANDEM_RETURN_IF_ERROR(st.begin(one, /*device_exchange=*/true));
      return st.logits(logits);
    };
    b.experts = [this, moe, &c](int64_t n, const float* x, const int32_t* ids, const float* wts) -> Status {
      const size_t bytes = static_cast<size_t>(n * c.hidden_size) * sizeof(float);
      if (x_dev.size() < bytes) {
        x_dev = kernels::cuda::DeviceBuffer();
        TANDEM_ASSIGN_OR_RETURN(x_dev, kernels::cuda::DeviceBuffer::allocate(bytes, "profile expert input"));
      }
      TANDEM_RETURN_IF_ERROR(kernels::cuda::copy_to_device(x_dev.data(), x, bytes));
      TANDEM_RETURN_IF_ERROR(kernels::cuda::synchronize());
      for (int64_t l : moe)
        TANDEM_RETURN_IF_ERROR(gpu->experts_device(l, x_dev.as<float>(), n, ids, wts).status());
      return kernels::cuda::synchronize();
    };
    return b;
  }
};
#endif

Status measure_attention(const model::ModelConfig& c, const ProfiledBackend& be, int reps,
                         planner::ProfilePoints& pts) {
  Status failed;
  auto timed = [&](const std::function<Status()>& f) {
    return time_us(reps, [&] {
      if (Status st = f(); !st.is_ok() && failed.is_ok()) failed = st;
    });
  };
  for (int64_t b : kProfileBatches) {
    for (int64_t s : kProfileContexts) {
      const int64_t blocks = (s + kProfileBlock - 1) / kProfileBlock;
      engine::ForwardBatch fb;
      fb.max_blocks_per_seq = blocks;
      std::vector<std::vector<int32_t>> owned;
      for (int64_t i = 0; i < b; ++i) {
        TANDEM_ASSIGN_OR_RETURN(std::vector<int32_t> bl, be.cache->allocator().allocate(blocks));
        fb.block_tables.insert(fb.block_tables.end(), bl.begin(), bl.end());
        fb.tokens.push_back(1);
        fb.positions.push_back(static_cast<int32_t>(s - 1));
        fb.seq_of_token.push_back(static_cast<int32_t>(i));
        fb.slots.push_back(static_cast<int64_t>(bl[static_cast<size_t>((s - 1) / kProfileBlock)]) * kProfileBlock +
                           (s - 1) % kProfileBlock);
        fb.ctx_len.push_back(static_cast<int32_t>(s));
        fb.logits_rows.push_back(static_cast<int32_t>(i));
        owned.push_back(std::move(bl));
      }
      // The planner's T_a is attention plus the router gate of one layer.
      const double us = timed([&] { return be.attention_layers(fb); });
      pts.attention.push_back({b, static_cast<double>(s), us / static_cast<double>(c.num_layers)});
      // What a step costs besides its layers: embedding in, final norm and
      // LM head out (the planner's per-micro-batch head time).
      if (s == kProfileContexts.front()) pts.head.push_back({b, timed([&] { return be.head(fb); })});
      for (const auto& bl : owned) be.cache->allocator().free(bl);
      TANDEM_RETURN_IF_ERROR(failed);
    }
  }
  return Status::ok();
}

Status measure_experts(const model::ModelConfig& c, const ProfiledBackend& be, int reps,
                       planner::ProfilePoints& pts) {
  TANDEM_ASSIGN_OR_RETURN(const std::vector<int64_t> moe, moe_layers(c));
  const int64_t H = c.hidden_size, E = c.moe.num_experts, K = c.moe.top_k;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  for (int64_t t : {1, 2, 4, 8, 12, 16, 32, 64}) {
    // Token i picks experts (iK + j) mod E: every expert gets t tokens, each token K distinct experts.
    const int64_t n = (t * E + K - 1) / K;
    std::vector<float> x(static_cast<size_t>(n * H)), wts(static_cast<size_t>(n * K), 1.0f / K);
    std::vector<int32_t> idx(wts.size());
    for (auto& v : x) v = u(rng);
    for (int64_t i = 0; i < n * K; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i % E);
    Status failed;
    // Every MoE layer in turn, for the same reason as attention.
    const double us = time_us(reps, [&] {
      if (Status st = be.experts(n, x.data(), idx.data(), wts.data()); !st.is_ok() && failed.is_ok()) failed = st;
    });
    TANDEM_RETURN_IF_ERROR(failed);
    pts.experts.push_back({static_cast<double>(n * K) / E, us / static_cast<double>(moe.size())});
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
  // The attention side's device is what a plan's attention GPUs are; a mixed
  // deployment (GPU attention, CPU experts) is profiled on the GPU.
  const bool on_gpu = cfg->uses_cuda();
  if (on_gpu && cfg->attention_on() != cfg->experts_on())
    std::fprintf(stderr, "tandem profile: attention on %s, experts on %s: both are profiled on cuda\n",
                 cfg->attention_on().c_str(), cfg->experts_on().c_str());
  // Both outlive the measurement: the backend's closures point into them.
  CpuProfile cpu;
#if TANDEM_HAVE_CUDA
  CudaProfile gpu;
#endif
  Result<ProfiledBackend> backend = internal_error("no backend");
  if (!on_gpu) {
    backend = cpu.make(ck->config, **weights);
  } else {
#if TANDEM_HAVE_CUDA
    backend = gpu.make(ck->config, **weights, cfg->gpu_dtype());
#else
    backend = unimplemented(cfg->source + ": cluster.device: cuda, but this tandem was built without CUDA");
#endif
  }
  if (!backend.is_ok()) return fail(backend.status());

  planner::ProfilePoints pts;
  const auto t0 = Clock::now();
  Status st = measure_attention(ck->config, *backend, a.reps, pts);
  if (st.is_ok()) st = measure_experts(ck->config, *backend, a.reps, pts);
  if (st.is_ok()) st = measure_m2n(a.reps, pts);
  if (!st.is_ok()) return fail(st);
  std::printf("measured %zu points in %.1f s on the %s with %s\n",
              pts.attention.size() + pts.experts.size() + pts.m2n.size(),
              std::chrono::duration<double>(Clock::now() - t0).count(), backend->name.c_str(),
              cfg->model_path.c_str());
  for (const auto& p : pts.attention)
    std::printf("  attention  batch %3lld  context %4.0f  %9.1f us\n", static_cast<long long>(p.batch), p.context, p.us);
  for (const auto& p : pts.experts) std::printf("  experts    %5.1f tokens/expert  %9.1f us\n", p.tokens_per_expert, p.us);
  for (const auto& p : pts.head) std::printf("  head       batch %3lld  %9.1f us\n", static_cast<long long>(p.batch), p.us);
  for (const auto& p : pts.m2n) std::printf("  m2n        %7.0f bytes x %d  %9.1f us\n", p.bytes, p.fanout, p.us);

  planner::HardwareProfile base;
  base.name = a.name;
  base.device = on_gpu ? "cuda" : "cpu";
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  base.source = std::string("tandem profile on ") + host + ": " + backend->name + ", model " + cfg->model_path +
                ", in-process M2N transport; rates fitted so the planner's formulas reproduce the measured times";
  if (backend->memory_gb > 0) {
    base.memory_gb = backend->memory_gb;
    base.memory_usable_fraction = 0.9;  // CUDA context and scratch take the rest
    base.interconnect = "PCIe/NVLink, not measured (in-process M2N)";
  } else {
    base.memory_gb = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1e9;
    base.memory_usable_fraction = 0.5;  // the machine is shared with the OS and the other roles
    base.interconnect = "none (one socket)";
  }
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
