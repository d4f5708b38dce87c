#include "device_experts.h"

#if TANDEM_HAVE_CUDA

#include <chrono>
#include <string>

namespace tandem::attention {

namespace kc = tandem::kernels::cuda;

DeviceExpertExecutor::DeviceExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model,
                                           int rank)
    : cfg_(cfg),
      model_(model),
      rank_(rank),
      slot_bytes_(static_cast<size_t>(cfg.max_batch_tokens) * static_cast<size_t>(model.hidden_size) *
                  sizeof(float)) {}

Status DeviceExpertExecutor::init_common() {
  const size_t m = static_cast<size_t>(cfg_.micro_batches), max_rows = static_cast<size_t>(cfg_.max_batch_tokens);
  for (auto& link : links_) {
    link->seq.assign(m, 0);
    link->control.resize(m);
  }
  TANDEM_ASSIGN_OR_RETURN(transport_, open_data_plane(cfg_, rank_, links_));
  const std::vector<float> ones(max_rows, 1.0f);
  TANDEM_ASSIGN_OR_RETURN(unit_weights_, kc::DeviceBuffer::allocate(max_rows * sizeof(float), "unit weights"));
  TANDEM_RETURN_IF_ERROR(kc::copy_to_device(unit_weights_.data(), ones.data(), max_rows * sizeof(float)));
  return kc::synchronize();
}

Status DeviceExpertExecutor::scatter_answer(const float* sums, const int32_t* device_rows, int64_t n,
                                            float* out) const {
  return kc::scatter_add_weighted(sums, device_rows, unit_weights_.as<float>(), out, n, model_.hidden_size);
}

Status DeviceExpertExecutor::dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                                      const float* topk_w, float* out) {
  const int64_t K = model_.moe.top_k, H = model_.hidden_size;
  if (static_cast<size_t>(n * H) * sizeof(float) > slot_bytes_)
    return invalid_argument("micro-batch of " + std::to_string(n) + " tokens exceeds attention.max_batch_tokens");
  for (size_t i = 0; i < links_.size(); ++i) TANDEM_RETURN_IF_ERROR(connected(i));
  Pending& p = pending_[{layer, mb}];
  p = Pending{out, next_step_++, {}};
  const auto slot = static_cast<size_t>(mb);
  for (size_t i = 0; i < links_.size(); ++i) {
    Link& link = *links_[i];
    const std::vector<int32_t> rows = engine::rows_routed_to(topk_idx, n, K, link.first, link.last);
    if (rows.empty()) continue;  // no token of this micro-batch goes there
    const uint64_t seq = ++link.seq[slot];
    Status st = send_rows(i, slot, moe_in, rows, seq).with_context(link.who());
    // The routing, over UCX. The buffer's previous message is long delivered
    // (its combine came back) unless a step was aborted.
    if (st.is_ok())
      st = send_device_dispatch(*transport_, link, link.control[slot], layer, mb, p.step, seq, rows, topk_idx,
                                topk_w, K, H, std::chrono::milliseconds(cfg_.transport_timeout_ms));
    if (!st.is_ok()) {
      on_link_error(i);
      return st;
    }
    p.sent.push_back({i, seq, static_cast<int64_t>(rows.size())});
  }
  return Status::ok();
}

Status DeviceExpertExecutor::wait(int64_t layer, int mb) {
  auto it = pending_.find({layer, mb});
  if (it == pending_.end()) return Status::ok();
  const Pending p = std::move(it->second);
  pending_.erase(it);
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  for (const Sent& o : p.sent) {
    Link& link = *links_[o.link];
    Status st = await_device_combine(*transport_, link, layer, mb, p.step, o.seq, o.rows, timeout);
    if (st.is_ok()) st = add_answer(o.link, static_cast<size_t>(mb), o, p.out).with_context(link.who());
    if (!st.is_ok()) {
      on_link_error(o.link);
      return st;
    }
  }
  return finish_wait(p);
}

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
