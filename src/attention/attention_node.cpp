#include "tandem/attention/attention_node.h"

#include "ipc_experts.h"
#include "nccl_experts.h"
#include "remote_experts.h"
#include "ucx_experts.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iterator>
#include <thread>

#include "tandem/common/grpc_status.h"
#include "tandem/common/logging.h"
#include "tandem/engine/scheduler.h"
#if TANDEM_HAVE_CUDA
#include "tandem/engine/cuda_runner.h"
#include "tandem/kernels/cuda.h"
#endif
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/guided.h"
#include "tandem/model/weights.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;

namespace {

// Events of one sequence, handed from the scheduler thread to the RPC thread.
class EventQueue {
 public:
  void token(int32_t t) {
    std::lock_guard<std::mutex> l(mu_);
    tokens_.push_back(t);
    cv_.notify_one();
  }
  void logprobs(const engine::TokenLogprobs& lp) {  // before its token
    std::lock_guard<std::mutex> l(mu_);
    logprobs_.push_back(lp);
  }
  void prompt_logprobs(int64_t index, const engine::TokenLogprobs& lp) {  // in order, before any token
    std::lock_guard<std::mutex> l(mu_);
    if (prompt_.empty()) prompt_first_ = index;
    prompt_.push_back(lp);
    // No wake-up per row (a step may score hundreds): the next token, the
    // finish or the sender's 20 ms poll sends them together.
  }
  void finish(const Status& st, engine::FinishReason r) {
    std::lock_guard<std::mutex> l(mu_);
    done_ = true;
    status_ = st;
    reason_ = r;
    cv_.notify_one();
  }
  // Waits up to `timeout` for news; moves pending tokens (and their
  // log-probabilities) out, and the prompt's log-probabilities from prompt
  // token `prompt_first` on.
  bool wait(std::chrono::milliseconds timeout, std::vector<int32_t>& out, std::vector<engine::TokenLogprobs>& lps,
            std::vector<engine::TokenLogprobs>& prompt, int64_t& prompt_first, bool& done, Status& st,
            engine::FinishReason& r) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_for(l, timeout, [&] { return !tokens_.empty() || !prompt_.empty() || done_; });
    prompt.assign(std::make_move_iterator(prompt_.begin()), std::make_move_iterator(prompt_.end()));
    prompt_.clear();
    prompt_first = prompt_first_;
    out.assign(tokens_.begin(), tokens_.end());
    tokens_.clear();
    // A token's log-probabilities are pushed just before it: those of a token
    // not yet pushed stay for the next call, so the two always pair up.
    const auto paired = static_cast<std::ptrdiff_t>(std::min(logprobs_.size(), out.size()));
    lps.assign(std::make_move_iterator(logprobs_.begin()), std::make_move_iterator(logprobs_.begin() + paired));
    logprobs_.erase(logprobs_.begin(), logprobs_.begin() + paired);
    done = done_;
    st = status_;
    r = reason_;
    return !out.empty() || !prompt.empty() || done;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int32_t> tokens_;
  std::deque<engine::TokenLogprobs> logprobs_;
  std::vector<engine::TokenLogprobs> prompt_;
  int64_t prompt_first_ = 0;
  bool done_ = false;
  Status status_;
  engine::FinishReason reason_ = engine::FinishReason::kLength;
};

class Node final : public AttentionNode, public pb::AttentionNode::Service {
 public:
  Status init(const api::DeploymentConfig& cfg, int rank) {
    cfg_ = cfg;
    rank_ = rank;
    TANDEM_ASSIGN_OR_RETURN(ck_, model::Checkpoint::open(cfg.model_path));
    TANDEM_RETURN_IF_ERROR(cfg.validate_against_model(ck_.config.moe.num_experts,
                                                      2 * ck_.config.num_layers * ck_.config.kv_dim() * 4,
                                                      size_t{64} << 30));
    // The experts live on the expert nodes: load only the attention side here.
    TANDEM_ASSIGN_OR_RETURN(weights_, model::ModelWeights::load(ck_.config, *ck_.weights,
                                                                {.attention_side = true, .expert_begin = 0, .expert_end = 0}));
    const auto& c = ck_.config;
    guides_ = std::make_unique<model::GuideCache>(ck_.tokenizer.get(), c.vocab_size);
    const engine::KvCacheShape kv_shape{c.num_layers, cfg.kv_blocks, cfg.kv_block_size, c.num_kv_heads, c.head_dim};
    const int m = cfg.micro_batches;
    engine::ForwardFn forward;
    engine::SplitForwardFn forward_split;  // the GPU flavour: greedy rows' logits stay on the device
    const bool on_gpu = cfg.attention_on() == "cuda";
    // On the GPU the KV cache lives there; the engine keeps its block bookkeeping.
    TANDEM_ASSIGN_OR_RETURN(cache_, on_gpu ? engine::KvCache::create_unbacked(kv_shape)
                                           : engine::KvCache::create(kv_shape, size_t{64} << 30));
    runner_ = std::make_unique<engine::ModelRunner>(c, *weights_, cache_.get());
    if (on_gpu) {
      TANDEM_ASSIGN_OR_RETURN(forward_split, start_gpu(cfg, kv_shape));
    } else {
      cpu_stages_ = std::make_unique<engine::CpuForwardStages>(*runner_);
      forward = [this, m](const engine::ForwardBatch& b, std::vector<float>& logits) {
        return timed([&](engine::PipelineTimes* step) {
          return engine::forward_pipelined(*cpu_stages_, b, m, *remote_, logits, step);
        });
      };
      device_ = "cpu";
    }
    if (cfg.transport == "cuda_ipc" || cfg.transport == "nccl") {
#if TANDEM_HAVE_CUDA
      if (!gpu_)
        return failed_precondition(cfg.source + ": transport.backend: " + cfg.transport +
                                   " needs attention.device: cuda");
      if (cfg.transport == "cuda_ipc") {
        TANDEM_ASSIGN_OR_RETURN(remote_, CudaIpcExpertExecutor::create(cfg, c, rank));
      } else {
        TANDEM_ASSIGN_OR_RETURN(remote_, NcclExpertExecutor::create(cfg, c, rank));
      }
#else
      return unimplemented(cfg.source + ": transport.backend: " + cfg.transport +
                           ", but this tandem was built without CUDA");
#endif
    } else if (cfg.transport == "ucx") {
      TANDEM_ASSIGN_OR_RETURN(remote_, UcxExpertExecutor::create(cfg, c, rank));
    } else {
      remote_ = std::make_unique<RemoteExpertExecutor>(cfg, c, rank);
    }
    sched_ = std::make_unique<engine::Scheduler>(
        c, *runner_, *cache_, *remote_,
        engine::SchedulerOptions{.max_running_sequences = cfg.max_running_sequences,
                                 .max_batch_tokens = cfg.max_batch_tokens,
                                 .micro_batches = cfg.micro_batches,
                                 .prefix_caching = cfg.prefix_caching,
                                 .max_prompt_logprob_rows = cfg.max_prompt_logprob_rows,
                                 .forward = std::move(forward),
                                 .forward_split = std::move(forward_split)});

    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    const api::Endpoint ep = cfg.attention_endpoint(rank);
    int bound = 0;
    b.AddListeningPort(ep.to_string(), grpc::InsecureServerCredentials(), &bound);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
    if (!server_ || bound == 0)
      return unavailable("attention node " + std::to_string(rank) + ": cannot listen on " + ep.to_string());
    worker_ = std::thread([this] { loop(); });
    server_->GetHealthCheckService()->SetServingStatus(true);
    TANDEM_LOG_INFO("attention[{}] serving on {}", rank, ep.to_string());
    return Status::ok();
  }

  ~Node() override {
    shutdown();
    wait();
  }

  void shutdown() override {
    if (stopping_.exchange(true)) return;
    if (server_) {
      server_->GetHealthCheckService()->SetServingStatus(false);
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    }
    wake_.notify_all();
  }

  void wait() override {
    if (server_) server_->Wait();
    if (worker_.joinable()) worker_.join();
  }

  grpc::Status Run(grpc::ServerContext* ctx, const pb::RunRequest* req, grpc::ServerWriter<pb::RunEvent>* w) override {
    engine::GenerationRequest g;
    g.prompt.assign(req->prompt().begin(), req->prompt().end());
    g.max_tokens = static_cast<int32_t>(req->max_tokens());
    g.sampling = {req->temperature(), req->top_k(), req->top_p()};
    g.seed = req->seed();
    g.stop_token_ids.assign(req->stop_token_ids().begin(), req->stop_token_ids().end());
    if (req->has_logprobs()) g.logprobs = req->logprobs();
    if (req->has_prompt_logprobs()) g.prompt_logprobs = req->prompt_logprobs();
    if (req->has_presence_penalty()) g.adjust.presence_penalty = req->presence_penalty();
    if (req->has_frequency_penalty()) g.adjust.frequency_penalty = req->frequency_penalty();
    if (req->has_repetition_penalty()) g.adjust.repetition_penalty = req->repetition_penalty();
    for (const auto& [token, bias] : req->logit_bias()) g.adjust.logit_bias.emplace_back(token, bias);
    if (req->has_min_p()) g.adjust.min_p = req->min_p();
    if (req->has_min_tokens()) g.adjust.min_tokens = req->min_tokens();
    g.priority = req->priority();
    std::sort(g.adjust.logit_bias.begin(), g.adjust.logit_bias.end());  // a map's order is not fixed
    if (req->guide_json_object() || !req->guide_regex().empty()) {
      model::GuideSpec spec;
      spec.kind = req->guide_json_object() ? model::GuideSpec::Kind::kJsonObject : model::GuideSpec::Kind::kRegex;
      spec.regex = req->guide_regex();
      auto guide = guides_->get(spec);
      if (!guide.is_ok()) return to_grpc(guide.status().with_context("guide"));
      g.guide = std::move(guide).value();
    }
    auto q = std::make_shared<EventQueue>();
    engine::SequenceCallbacks cb{[q](int32_t t) { q->token(t); },
                                 [q](const Status& st, engine::FinishReason r) { q->finish(st, r); }};
    if (g.logprobs >= 0) cb.on_logprobs = [q](const engine::TokenLogprobs& lp) { q->logprobs(lp); };
    if (g.prompt_logprobs >= 0)
      cb.on_prompt_logprobs = [q](int64_t i, const engine::TokenLogprobs& lp) { q->prompt_logprobs(i, lp); };
    auto id = sched_->submit(std::move(g), std::move(cb));
    if (!id.is_ok()) return to_grpc(id.status());
    wake_.notify_all();
    std::vector<int32_t> toks;
    std::vector<engine::TokenLogprobs> lps, prompt_lps;
    int64_t prompt_first = 0;
    bool done = false, cancelled = false;
    Status st;
    engine::FinishReason reason;
    while (!done) {
      q->wait(std::chrono::milliseconds(20), toks, lps, prompt_lps, prompt_first, done, st, reason);
      if (!cancelled && (ctx->IsCancelled() || stopping_)) {
        sched_->cancel(*id);  // frees the sequence's KV blocks at the next step
        wake_.notify_all();
        cancelled = true;
      }
      if (cancelled) continue;
      if (!toks.empty() || !prompt_lps.empty() || (done && st.is_ok())) {
        pb::RunEvent ev;
        for (int32_t t : toks) ev.add_tokens(t);
        auto add = [](const engine::TokenLogprobs& lp, pb::TokenLogprob* e) {
          e->set_logprob(lp.logprob);
          for (const auto& [id, v] : lp.top) {
            e->add_top_ids(id);
            e->add_top_logprobs(v);
          }
        };
        for (const auto& lp : lps) add(lp, ev.add_logprobs());
        for (const auto& lp : prompt_lps) add(lp, ev.add_prompt_logprobs());
        if (!prompt_lps.empty()) ev.set_first_prompt_index(static_cast<uint32_t>(prompt_first));
        ev.set_finished(done && st.is_ok());
        ev.set_stopped(done && reason == engine::FinishReason::kStop);
        if (!w->Write(ev)) {
          sched_->cancel(*id);
          wake_.notify_all();
          cancelled = true;
        }
      }
    }
    if (cancelled) return grpc::Status(grpc::StatusCode::CANCELLED, "sequence cancelled");
    return to_grpc(st);
  }

  grpc::Status Load(grpc::ServerContext*, const pb::LoadRequest*, pb::LoadReply* r) override {
    auto s = sched_->stats();
    r->set_running(s.running);
    r->set_waiting(s.waiting);
    r->set_free_blocks(s.free_blocks);
    r->set_total_blocks(cache_->shape().num_blocks);
    r->set_cached_blocks(s.cached_blocks);
    r->set_prefix_lookup_tokens(s.prefix_lookup_tokens);
    r->set_prefix_hit_tokens(s.prefix_hit_tokens);
    r->set_preemptions(s.preemptions);
    r->set_device(device_);
    engine::PipelineTimes t;
    {
      std::lock_guard<std::mutex> l(times_mu_);
      t = times_;
    }
    auto* p = r->mutable_pipeline();
    p->set_steps(t.steps);
    p->set_attend_s(t.attend_s);
    p->set_dispatch_s(t.dispatch_s);
    p->set_wait_s(t.wait_s);
    p->set_land_s(t.land_s);
    p->set_head_s(t.head_s);
    p->set_total_s(t.total_s);
    return grpc::Status::OK;
  }

 private:
  // The GPU flavour: attention, router and KV cache on a GPU, the ping-pong
  // pipeline over the same expert executors as on the CPU.
  Result<engine::SplitForwardFn> start_gpu(const api::DeploymentConfig& cfg, const engine::KvCacheShape& kv_shape) {
#if TANDEM_HAVE_CUDA
    TANDEM_ASSIGN_OR_RETURN(const int ordinal, engine::use_cuda_device(cfg.attention_gpu_slot(rank_)));
    // The experts are elsewhere: only the graphs matter here.
    const engine::CudaRunnerOptions options{.dtype = cfg.gpu_dtype(), .cuda_graphs = cfg.cuda_graphs};
    TANDEM_ASSIGN_OR_RETURN(gpu_, engine::CudaModelRunner::create(ck_.config, *weights_, kv_shape, options));
    TANDEM_LOG_INFO("attention[{}] on GPU {} ({} MiB of weights and KV cache)", rank_, ordinal,
                    gpu_->device_bytes() >> 20);
    TANDEM_ASSIGN_OR_RETURN(const kernels::cuda::DeviceInfo info, kernels::cuda::device_info());
    device_ = "cuda:" + std::to_string(ordinal) + " " + info.name;
    const int m = cfg.micro_batches;
    // The scheduler thread makes the CUDA calls: it selects the device on its first step.
    return engine::SplitForwardFn([this, ordinal, m, selected = false](
                                      const engine::ForwardBatch& b, const std::vector<uint8_t>& greedy,
                                      std::vector<float>& logits, std::vector<int32_t>& tokens) mutable -> Status {
      if (!selected) {
        TANDEM_RETURN_IF_ERROR(kernels::cuda::set_device(ordinal));
        selected = true;
      }
      return timed([&](engine::PipelineTimes* step) {
        return engine::forward_pipelined_split(gpu_->stages(), b, m, *remote_, greedy, logits, tokens, step);
      });
    });
#else
    (void)kv_shape;
    return unimplemented(cfg.source + ": attention.device: cuda, but this tandem was built without CUDA");
#endif
  }

  // One step of the ping-pong pipeline (`run` fills the breakdown it is
  // given), its time breakdown added to times_.
  template <typename Run>
  Status timed(const Run& run) {
    engine::PipelineTimes step;
    Status st = run(&step);
    std::lock_guard<std::mutex> l(times_mu_);
    times_ += step;
    return st;
  }

  void loop() {
    while (!stopping_) {
      if (!sched_->step()) {
        std::unique_lock<std::mutex> l(wake_mu_);
        wake_.wait_for(l, std::chrono::milliseconds(5));
      }
    }
    // Let in-flight RPCs see their sequences end.
    while (sched_->step()) {
    }
  }

  api::DeploymentConfig cfg_;
  int rank_ = 0;
  model::Checkpoint ck_;
  std::unique_ptr<model::GuideCache> guides_;  // compiled grammars of guided requests
  std::unique_ptr<model::ModelWeights> weights_;
  std::unique_ptr<engine::KvCache> cache_;
  std::unique_ptr<engine::ModelRunner> runner_;
  std::unique_ptr<engine::CpuForwardStages> cpu_stages_;  // the CPU flavour
  std::string device_;
  std::mutex times_mu_;
  engine::PipelineTimes times_;  // guarded by times_mu_
#if TANDEM_HAVE_CUDA
  std::unique_ptr<engine::CudaModelRunner> gpu_;
#endif
  std::unique_ptr<engine::ExpertExecutor> remote_;
  std::unique_ptr<engine::Scheduler> sched_;
  std::unique_ptr<grpc::Server> server_;
  std::thread worker_;
  std::atomic<bool> stopping_{false};
  std::mutex wake_mu_;
  std::condition_variable wake_;
};

}  // namespace

Result<std::unique_ptr<AttentionNode>> AttentionNode::start(const api::DeploymentConfig& config, int rank) {
  if (rank < 0 || rank >= config.attention_nodes)
    return invalid_argument("--rank " + std::to_string(rank) + " is outside the " +
                            std::to_string(config.attention_nodes) + " attention nodes of " + config.source);
  auto node = std::make_unique<Node>();
  TANDEM_RETURN_IF_ERROR(node->init(config, rank).with_context("attention node " + std::to_string(rank)));
  return std::unique_ptr<AttentionNode>(std::move(node));
}

}  // namespace tandem::attention
