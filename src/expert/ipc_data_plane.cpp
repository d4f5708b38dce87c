#include "ipc_data_plane.h"

#if TANDEM_HAVE_CUDA

#include <chrono>

#include "tandem/kernels/cuda.h"
#include "tandem/transport/moe_payload.h"

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

Status IpcDataPlane::attach(const internal::v1::DataPlaneRequest& request, internal::v1::DataPlaneReply& reply) {
  const int attention_rank = request.attention_rank();
  const std::string& their_handle = request.ipc_handle();
  if (their_handle.empty())
    return invalid_argument("attention node " + std::to_string(attention_rank) +
                            " sent no IPC handle: is it running with transport.backend: cuda_ipc?");
  std::lock_guard<std::mutex> l(mu_);
  TANDEM_RETURN_IF_ERROR(on_device());
  Peer& p = peers_[attention_rank];
  if (!p.tx || !p.rx || p.tx_blob != their_handle) {
    // A new attention node (or a restarted one): its old memory goes away with
    // it, and its sequence numbers start again at 1, so our slots' flags must
    // too: a fresh receiver. Sends into the old mapping were waited for (serve
    // synchronises), so it can be unmapped. Nothing is kept until all of it
    // worked, so a failure here leaves the peer unattached, not half-attached.
    p = Peer{};
    TANDEM_ASSIGN_OR_RETURN(auto tx, transport::CudaIpcSender::open(their_handle));
    if (tx->slots() < static_cast<size_t>(cfg_.micro_batches) || tx->slot_bytes() < slot_bytes_)
      return failed_precondition("attention node " + std::to_string(attention_rank) + " has " +
                                 std::to_string(tx->slots()) + " slots of " + std::to_string(tx->slot_bytes()) +
                                 " bytes, this node sends up to " + std::to_string(slot_bytes_));
    TANDEM_ASSIGN_OR_RETURN(auto rx, transport::CudaIpcReceiver::create(static_cast<size_t>(cfg_.micro_batches),
                                                                       slot_bytes_));
    p.rx = std::move(rx);
    p.tx = std::move(tx);
    p.tx_blob = their_handle;
  }
  reply.set_ipc_handle(p.rx->export_handle());
  return Status::ok();
}

Status IpcDataPlane::serve(int attention_rank, const transport::MessageHeader& h, std::span<const std::byte> control,
                           std::span<std::byte> combine) {
  const size_t K = static_cast<size_t>(model_.moe.top_k), H = static_cast<size_t>(model_.hidden_size);
  if (combine.size() != IpcControlLayout::kCombineBytes)
    return invalid_argument("IPC combine buffer of " + std::to_string(combine.size()) + " bytes");
  TANDEM_ASSIGN_OR_RETURN(const DeviceDispatch d, parse_device_dispatch(control, K, model_.moe.num_experts,
                                                                         slot_bytes_ / (H * sizeof(float))));
  const uint64_t seq = d.seq, tokens = d.tokens;
  std::lock_guard<std::mutex> l(mu_);
  auto it = peers_.find(attention_rank);
  if (it == peers_.end() || !it->second.tx || !it->second.rx)
    return failed_precondition("attention node " + std::to_string(attention_rank) + " has not attached");
  Peer& p = it->second;
  const size_t slot = h.micro_batch;
  if (slot >= p.rx->slots()) return invalid_argument("micro-batch " + std::to_string(slot) + " has no slot");
  TANDEM_RETURN_IF_ERROR(on_device());
  // Half the attention side's wait for our answer: a sender that stalls fails
  // its own dispatch here while others queued behind it (mu_) still make theirs.
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms / 2);
  TANDEM_RETURN_IF_ERROR(p.rx->wait(slot, seq, kc::current_stream(), timeout));
  TANDEM_ASSIGN_OR_RETURN(const float* sum, gpu_.experts_device(h.layer, static_cast<const float*>(p.rx->slot(slot)),
                                                                 static_cast<int64_t>(tokens), d.ids, d.weights));
  TANDEM_RETURN_IF_ERROR(p.tx->send(slot, sum, tokens * H * sizeof(float), seq, kc::current_stream()));
  // The slot may be written again, and the sum buffer reused, once this is done.
  TANDEM_RETURN_IF_ERROR(kc::synchronize());
  TANDEM_RETURN_IF_ERROR(p.rx->check().with_context("activations from attention node " +
                                                    std::to_string(attention_rank)));
  write_device_combine(combine, d);
  return Status::ok();
}

}  // namespace tandem::expert

#endif  // TANDEM_HAVE_CUDA
