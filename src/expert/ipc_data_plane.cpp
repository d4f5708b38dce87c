#include "ipc_data_plane.h"

#if TANDEM_HAVE_CUDA

#include <chrono>
#include <cstring>

#include "tandem/kernels/cuda.h"

namespace tandem::expert {

namespace kc = tandem::kernels::cuda;
using transport::IpcControlLayout;

IpcDataPlane::IpcDataPlane(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int ordinal,
                           engine::CudaModelRunner& gpu)
    : cfg_(cfg),
      model_(model),
      ordinal_(ordinal),
      gpu_(gpu),
      slot_bytes_(static_cast<size_t>(cfg.max_batch_tokens) * static_cast<size_t>(model.hidden_size) *
                  sizeof(float)) {}

IpcDataPlane::~IpcDataPlane() {
  std::lock_guard<std::mutex> l(mu_);
  if (on_device().is_ok()) (void)kc::synchronize();
  peers_.clear();
}

Status IpcDataPlane::on_device() {
  // Cheap, and the callers are gRPC and sender threads that change.
  return kc::set_device(ordinal_);
}

Result<std::string> IpcDataPlane::attach(int attention_rank, const std::string& their_handle) {
  std::lock_guard<std::mutex> l(mu_);
  TANDEM_RETURN_IF_ERROR(on_device());
  Peer& p = peers_[attention_rank];
  if (!p.tx || p.tx_blob != their_handle) {
    // A new attention node (or a restarted one): its old memory goes away with
    // it, and its sequence numbers start again at 1, so our slots' flags must
    // too: a fresh receiver. Sends into the old mapping were waited for (serve
    // synchronises), so it can be unmapped.
    p.rx.reset();
    TANDEM_ASSIGN_OR_RETURN(p.rx, transport::CudaIpcReceiver::create(static_cast<size_t>(cfg_.micro_batches),
                                                                     slot_bytes_));
    p.tx.reset();
    TANDEM_ASSIGN_OR_RETURN(p.tx, transport::CudaIpcSender::open(their_handle));
    p.tx_blob = their_handle;
    if (p.tx->slots() < static_cast<size_t>(cfg_.micro_batches) || p.tx->slot_bytes() < slot_bytes_)
      return failed_precondition("attention node " + std::to_string(attention_rank) + " has " +
                                 std::to_string(p.tx->slots()) + " slots of " + std::to_string(p.tx->slot_bytes()) +
                                 " bytes, this node sends up to " + std::to_string(slot_bytes_));
  }
  return p.rx->export_handle();
}

Status IpcDataPlane::serve(int attention_rank, const transport::MessageHeader& h, std::span<const std::byte> control,
                           std::span<std::byte> combine) {
  const size_t K = static_cast<size_t>(model_.moe.top_k), H = static_cast<size_t>(model_.hidden_size);
  uint64_t step = 0, seq = 0, tokens = 0;
  if (control.size() < IpcControlLayout::kCombineBytes || combine.size() != IpcControlLayout::kCombineBytes)
    return invalid_argument("IPC dispatch control of " + std::to_string(control.size()) + " bytes");
  std::memcpy(&step, control.data() + IpcControlLayout::kStepOffset, sizeof step);
  std::memcpy(&seq, control.data() + IpcControlLayout::kSeqOffset, sizeof seq);
  std::memcpy(&tokens, control.data() + IpcControlLayout::kTokensOffset, sizeof tokens);
  const IpcControlLayout lay{static_cast<size_t>(tokens), K};
  if (tokens * H * sizeof(float) > slot_bytes_ || control.size() != lay.dispatch_bytes())
    return invalid_argument("IPC dispatch of " + std::to_string(tokens) + " tokens in " +
                            std::to_string(control.size()) + " bytes (slots hold " + std::to_string(slot_bytes_) +
                            " bytes)");
  const auto* ids = reinterpret_cast<const int32_t*>(control.data() + lay.ids_offset());
  for (size_t i = 0; i < tokens * K; ++i)
    if (ids[i] < 0 || ids[i] >= model_.moe.num_experts)
      return invalid_argument("expert id " + std::to_string(ids[i]) + " out of range");
  std::lock_guard<std::mutex> l(mu_);
  auto it = peers_.find(attention_rank);
  if (it == peers_.end() || !it->second.tx)
    return failed_precondition("attention node " + std::to_string(attention_rank) + " has not attached");
  Peer& p = it->second;
  const size_t slot = h.micro_batch;
  if (slot >= p.rx->slots()) return invalid_argument("micro-batch " + std::to_string(slot) + " has no slot");
  TANDEM_RETURN_IF_ERROR(on_device());
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  TANDEM_RETURN_IF_ERROR(p.rx->wait(slot, seq, kc::current_stream(), timeout));
  TANDEM_ASSIGN_OR_RETURN(
      const float* sum,
      gpu_.experts_device(h.layer, static_cast<const float*>(p.rx->slot(slot)), static_cast<int64_t>(tokens), ids,
                          reinterpret_cast<const float*>(control.data() + lay.weights_offset())));
  TANDEM_RETURN_IF_ERROR(p.tx->send(slot, sum, tokens * H * sizeof(float), seq, kc::current_stream()));
  // The slot may be written again, and the sum buffer reused, once this is done.
  TANDEM_RETURN_IF_ERROR(kc::synchronize());
  TANDEM_RETURN_IF_ERROR(p.rx->check().with_context("activations from attention node " +
                                                    std::to_string(attention_rank)));
  std::memcpy(combine.data() + IpcControlLayout::kStepOffset, &step, sizeof step);
  std::memcpy(combine.data() + IpcControlLayout::kSeqOffset, &seq, sizeof seq);
  std::memcpy(combine.data() + IpcControlLayout::kTokensOffset, &tokens, sizeof tokens);
  return Status::ok();
}

}  // namespace tandem::expert

#endif  // TANDEM_HAVE_CUDA
