#include "ipc_experts.h"

#if TANDEM_HAVE_CUDA

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/transport/moe_payload.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;
namespace kc = tandem::kernels::cuda;
using transport::IpcControlLayout;

struct CudaIpcExpertExecutor::Link : ExpertLink {
  std::unique_ptr<transport::CudaIpcReceiver> rx;  // ours: the expert node's sums land here, slot = micro-batch
  std::unique_ptr<transport::CudaIpcSender> tx;    // into the expert node's slots for this node
  std::string tx_blob;                             // what tx was opened from
  std::vector<uint64_t> seq;                       // last sequence number sent, per micro-batch
  std::vector<transport::SendSlot> control;        // registered UCX buffers, per micro-batch
  std::vector<kc::DeviceBuffer> rows;              // device row list sent, per micro-batch (for the scatter back)
  kc::DeviceBuffer packed;                         // the rows gathered for the IPC send
};

CudaIpcExpertExecutor::CudaIpcExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model,
                                             int rank)
    : cfg_(cfg), model_(model), rank_(rank) {}

CudaIpcExpertExecutor::~CudaIpcExpertExecutor() = default;

Result<std::unique_ptr<CudaIpcExpertExecutor>> CudaIpcExpertExecutor::create(const api::DeploymentConfig& cfg,
                                                                             const model::ModelConfig& model,
                                                                             int rank) {
  std::unique_ptr<CudaIpcExpertExecutor> x(new CudaIpcExpertExecutor(cfg, model, rank));
  const size_t max_rows = static_cast<size_t>(cfg.max_batch_tokens);
  x->slot_bytes_ = max_rows * static_cast<size_t>(model.hidden_size) * sizeof(float);
  const size_t m = static_cast<size_t>(cfg.micro_batches);
  x->links_ = make_expert_links<Link>(cfg, model.moe.num_experts);
  for (auto& link : x->links_) {
    TANDEM_ASSIGN_OR_RETURN(link->rx, transport::CudaIpcReceiver::create(m, x->slot_bytes_));
    link->seq.assign(m, 0);
    link->control.resize(m);
    link->rows.resize(m);
    for (auto& r : link->rows) {
      TANDEM_ASSIGN_OR_RETURN(r, kc::DeviceBuffer::allocate(max_rows * sizeof(int32_t), "routed rows"));
    }
    TANDEM_ASSIGN_OR_RETURN(link->packed, kc::DeviceBuffer::allocate(x->slot_bytes_, "routed activations"));
  }
  TANDEM_ASSIGN_OR_RETURN(x->transport_, open_data_plane(cfg, rank, x->links_));
  const std::vector<float> ones(max_rows, 1.0f);
  TANDEM_ASSIGN_OR_RETURN(x->unit_weights_, kc::DeviceBuffer::allocate(max_rows * sizeof(float), "unit weights"));
  TANDEM_RETURN_IF_ERROR(kc::copy_to_device(x->unit_weights_.data(), ones.data(), max_rows * sizeof(float)));
  TANDEM_RETURN_IF_ERROR(kc::synchronize());
  return x;
}

Status CudaIpcExpertExecutor::connected(Link& link) {
  if (link.tx && transport_->peer_status(link.id).is_ok()) return Status::ok();
  const auto budget = std::chrono::milliseconds(std::min(cfg_.transport_timeout_ms, 500));
  pb::DataPlaneRequest req;
  req.set_attention_rank(rank_);
  req.set_ipc_handle(link.rx->export_handle());
  TANDEM_ASSIGN_OR_RETURN(const pb::DataPlaneReply reply, dial(*transport_, link, req, "cuda_ipc", budget));
  // A restarted expert node exports new memory: map it (CUDA maps a handle
  // once per process, so an unchanged one is kept).
  if (link.tx && link.tx_blob == reply.ipc_handle()) return Status::ok();
  TANDEM_RETURN_IF_ERROR(kc::synchronize());  // sends into the old mapping have completed
  link.tx.reset();
  TANDEM_ASSIGN_OR_RETURN(link.tx, transport::CudaIpcSender::open(reply.ipc_handle()));
  link.tx_blob = reply.ipc_handle();
  if (link.tx->slot_bytes() < slot_bytes_ || link.tx->slots() < link.seq.size())
    return failed_precondition(link.who() + " has " + std::to_string(link.tx->slots()) + " slots of " +
                               std::to_string(link.tx->slot_bytes()) + " bytes, this node needs " +
                               std::to_string(link.seq.size()) + " of " + std::to_string(slot_bytes_));
  return Status::ok();
}

Status CudaIpcExpertExecutor::dispatch(int64_t layer, int mb, const float* moe_in, int64_t n,
                                       const int32_t* topk_idx, const float* topk_w, float* out) {
  const int64_t K = model_.moe.top_k, H = model_.hidden_size;
  if (static_cast<size_t>(n * H) * sizeof(float) > slot_bytes_)
    return invalid_argument("micro-batch of " + std::to_string(n) + " tokens exceeds attention.max_batch_tokens");
  for (auto& link : links_) TANDEM_RETURN_IF_ERROR(connected(*link));
  Pending& p = pending_[{layer, mb}];
  p = Pending{out, next_step_++, {}};
  const auto slot = static_cast<size_t>(mb);
  for (size_t li = 0; li < links_.size(); ++li) {
    Link& link = *links_[li];
    const std::vector<int32_t> rows = engine::rows_routed_to(topk_idx, n, K, link.first, link.last);
    if (rows.empty()) continue;  // no token of this micro-batch goes there
    const int64_t r = static_cast<int64_t>(rows.size());
    // The activations of those rows, device to device on this thread's
    // stream, after the attention that produced them.
    TANDEM_RETURN_IF_ERROR(kc::copy_to_device(link.rows[slot].data(), rows.data(), rows.size() * sizeof(int32_t)));
    TANDEM_RETURN_IF_ERROR(kc::gather_rows(moe_in, link.rows[slot].as<int32_t>(), link.packed.as<float>(), r, H));
    const uint64_t seq = ++link.seq[slot];
    TANDEM_RETURN_IF_ERROR(link.tx->send(slot, link.packed.data(), static_cast<size_t>(r * H) * sizeof(float), seq,
                                         kc::current_stream())
                               .with_context(link.who()));
    // Their routing, over UCX. The buffer's previous message is long
    // delivered (its combine came back) unless a step was aborted.
    const IpcControlLayout lay{rows.size(), static_cast<size_t>(K)};
    transport::SendSlot& control = link.control[slot];
    TANDEM_RETURN_IF_ERROR(
        control.ready(*transport_, lay.dispatch_bytes(), std::chrono::milliseconds(cfg_.transport_timeout_ms)));
    std::byte* c = control.buffer.data();
    const uint64_t tokens = rows.size();
    std::memcpy(c + IpcControlLayout::kStepOffset, &p.step, sizeof(uint64_t));
    std::memcpy(c + IpcControlLayout::kSeqOffset, &seq, sizeof(uint64_t));
    std::memcpy(c + IpcControlLayout::kTokensOffset, &tokens, sizeof(uint64_t));
    auto* ids = reinterpret_cast<int32_t*>(c + lay.ids_offset());
    auto* weights = reinterpret_cast<float*>(c + lay.weights_offset());
    for (size_t i = 0; i < rows.size(); ++i) {
      std::memcpy(ids + i * K, topk_idx + rows[i] * K, static_cast<size_t>(K) * sizeof(int32_t));
      std::memcpy(weights + i * K, topk_w + rows[i] * K, static_cast<size_t>(K) * sizeof(float));
    }
    transport::MessageHeader h;
    h.kind = transport::MessageKind::kDispatch;
    h.layer = static_cast<uint32_t>(layer);
    h.micro_batch = static_cast<uint32_t>(mb);
    h.num_tokens = 0;  // the activations travel by IPC
    h.hidden_size = static_cast<uint32_t>(H);
    h.dtype = DType::kF32;
    auto sent = transport_->send(link.id, h, control.buffer, lay.dispatch_bytes());
    if (!sent.is_ok()) return sent.status().with_context("dispatch to " + link.who());
    control.last = *sent;
    p.sent.push_back({li, seq, r});
  }
  return Status::ok();
}

Status CudaIpcExpertExecutor::wait(int64_t layer, int mb) {
  auto it = pending_.find({layer, mb});
  if (it == pending_.end()) return Status::ok();
  const Pending p = std::move(it->second);
  pending_.erase(it);
  const int64_t H = model_.hidden_size;
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  const auto slot = static_cast<size_t>(mb);
  for (const Sent& o : p.sent) {
    Link& link = *links_[o.link];
    const uint64_t seq = o.seq;
    while (true) {
      TANDEM_ASSIGN_OR_RETURN(auto msg, recv_combine(*transport_, link, layer, mb, timeout));
      const auto data = msg.data();
      if (data.size() != IpcControlLayout::kCombineBytes)
        return data_loss(link.who() + ": IPC combine of " + std::to_string(data.size()) + " bytes");
      uint64_t step = 0, echoed = 0, tokens = 0;
      std::memcpy(&step, data.data() + IpcControlLayout::kStepOffset, sizeof step);
      std::memcpy(&echoed, data.data() + IpcControlLayout::kSeqOffset, sizeof echoed);
      std::memcpy(&tokens, data.data() + IpcControlLayout::kTokensOffset, sizeof tokens);
      if (step < p.step) continue;  // the late answer to a dispatch of an aborted step
      if (step != p.step || echoed != seq || tokens != static_cast<uint64_t>(o.rows))
        return data_loss(link.who() + ": IPC combine (step " + std::to_string(step) + ", seq " +
                         std::to_string(echoed) + ", " + std::to_string(tokens) +
                         " tokens) does not answer the dispatch (step " + std::to_string(p.step) + ", seq " +
                         std::to_string(seq) + ", " + std::to_string(o.rows) + " tokens)");
      break;
    }
    // The sum is in our slot once its flag reaches seq; the wait and the
    // accumulation run on this thread's stream, in order.
    TANDEM_RETURN_IF_ERROR(link.rx->wait(slot, seq, kc::current_stream(), std::chrono::microseconds(timeout)));
    TANDEM_RETURN_IF_ERROR(kc::scatter_add_weighted(static_cast<const float*>(link.rx->slot(slot)),
                                                    link.rows[slot].as<int32_t>(), unit_weights_.as<float>(), p.out,
                                                    o.rows, H));
  }
  // One host wait per micro-batch: a device-side wait that timed out is
  // reported here (the expert node died between its message and its data).
  TANDEM_RETURN_IF_ERROR(kc::synchronize());
  for (const Sent& o : p.sent) TANDEM_RETURN_IF_ERROR(links_[o.link]->rx->check().with_context(links_[o.link]->who()));
  return Status::ok();
}

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
