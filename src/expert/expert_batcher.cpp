#include "tandem/expert/expert_batcher.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace tandem::expert {

ExpertBatcher::ExpertBatcher(const model::ModelConfig& config, const model::ModelWeights& weights)
    : config_(config), expert_tokens_(static_cast<size_t>(config.moe.num_experts), 0), cpu_runner_(std::make_unique<engine::ModelRunner>(config, weights, nullptr)) {
  compute_ = [this](int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w, float* out) {
    std::fill(out, out + n * config_.hidden_size, 0.0f);
    cpu_runner_->experts(layer, x, n, ids, w, out);
    return Status::ok();
  };
  thread_ = std::thread([this] { loop(); });
}

ExpertBatcher::ExpertBatcher(const model::ModelConfig& config, ExpertCompute compute)
    : config_(config),
      expert_tokens_(static_cast<size_t>(config.moe.num_experts), 0),
      compute_(std::move(compute)),
      thread_([this] { loop(); }) {}

ExpertBatcher::~ExpertBatcher() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

Status ExpertBatcher::run(int64_t layer, const float* x, int64_t n, const int32_t* ids, const float* w, float* out) {
  Request r{layer, x, n, ids, w, out, false, Status::ok()};
  std::unique_lock<std::mutex> l(mu_);
  queue_.push_back(&r);
  work_cv_.notify_one();
  done_cv_.wait(l, [&] { return r.done; });
  return r.status;
}

ExpertBatcher::Stats ExpertBatcher::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  Stats s = stats_;
  s.expert_tokens = expert_tokens_;
  return s;
}

void ExpertBatcher::loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    work_cv_.wait(l, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to serve
    // The oldest request's layer goes first, with every waiting request of
    // that layer; requests of other layers stay queued in order.
    const int64_t layer = queue_.front()->layer;
    std::vector<Request*> group;
    std::erase_if(queue_, [&](Request* r) {
      if (r->layer != layer) return false;
      group.push_back(r);
      return true;
    });
    l.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    const Status st = run_group(group);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    l.lock();
    stats_.busy_s += took;
    for (const Request* r : group)  // before the callers, whose ids these are, are let go
      for (int64_t i = 0; i < r->n * config_.moe.top_k; ++i) {
        const int32_t e = r->ids[i];
        if (e >= 0 && static_cast<size_t>(e) < expert_tokens_.size()) ++expert_tokens_[static_cast<size_t>(e)];
      }
    for (Request* r : group) {
      r->status = st;
      r->done = true;
    }
    stats_.requests += group.size();
    stats_.launches += 1;
    done_cv_.notify_all();
  }
}

Status ExpertBatcher::run_group(const std::vector<Request*>& group) {
  const int64_t H = config_.hidden_size, K = config_.moe.top_k;
  if (group.size() == 1) {
    const Request& r = *group.front();
    return compute_(r.layer, r.x, r.n, r.ids, r.w, r.out);
  }
  int64_t total = 0;
  for (const Request* r : group) total += r->n;
  x_.resize(static_cast<size_t>(total * H));
  out_.resize(static_cast<size_t>(total * H));
  ids_.resize(static_cast<size_t>(total * K));
  w_.resize(static_cast<size_t>(total * K));
  int64_t at = 0;
  for (const Request* r : group) {
    std::memcpy(x_.data() + at * H, r->x, static_cast<size_t>(r->n * H) * sizeof(float));
    std::memcpy(ids_.data() + at * K, r->ids, static_cast<size_t>(r->n * K) * sizeof(int32_t));
    std::memcpy(w_.data() + at * K, r->w, static_cast<size_t>(r->n * K) * sizeof(float));
    at += r->n;
  }
  TANDEM_RETURN_IF_ERROR(compute_(group.front()->layer, x_.data(), total, ids_.data(), w_.data(), out_.data()));
  at = 0;
  for (const Request* r : group) {
    std::memcpy(r->out, out_.data() + at * H, static_cast<size_t>(r->n * H) * sizeof(float));
    at += r->n;
  }
  return Status::ok();
}

}  // namespace tandem::expert
