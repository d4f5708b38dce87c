#include "ipc_experts.h"

#if TANDEM_HAVE_CUDA

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>

#include "tandem/internal/v1/node.grpc.pb.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;
namespace kc = tandem::kernels::cuda;

struct CudaIpcExpertExecutor::IpcLink : DeviceExpertExecutor::Link {
  std::unique_ptr<transport::CudaIpcReceiver> rx;  // ours: the expert node's sums land here, slot = micro-batch
  std::unique_ptr<transport::CudaIpcSender> tx;    // into the expert node's slots for this node
  std::string tx_blob;                             // what tx was opened from
  std::vector<kc::DeviceBuffer> rows;              // device row list sent, per micro-batch (for the scatter back)
  kc::DeviceBuffer packed;                         // the rows gathered for the IPC send
};

CudaIpcExpertExecutor::~CudaIpcExpertExecutor() = default;

Result<std::unique_ptr<CudaIpcExpertExecutor>> CudaIpcExpertExecutor::create(const api::DeploymentConfig& cfg,
                                                                             const model::ModelConfig& model,
                                                                             int rank) {
  std::unique_ptr<CudaIpcExpertExecutor> x(new CudaIpcExpertExecutor(cfg, model, rank));
  const size_t max_rows = static_cast<size_t>(cfg.max_batch_tokens);
  const size_t m = static_cast<size_t>(cfg.micro_batches);
  auto links = make_expert_links<IpcLink>(cfg, model.moe.num_experts);
  for (auto& link : links) {
    TANDEM_ASSIGN_OR_RETURN(link->rx, transport::CudaIpcReceiver::create(m, x->slot_bytes_));
    link->rows.resize(m);
    for (auto& r : link->rows) {
      TANDEM_ASSIGN_OR_RETURN(r, kc::DeviceBuffer::allocate(max_rows * sizeof(int32_t), "routed rows"));
    }
    TANDEM_ASSIGN_OR_RETURN(link->packed, kc::DeviceBuffer::allocate(x->slot_bytes_, "routed activations"));
  }
  TANDEM_RETURN_IF_ERROR(x->init(std::move(links)));
  return x;
}

Status CudaIpcExpertExecutor::connected(size_t i) {
  IpcLink& link = link_as<IpcLink>(i);
  if (link.tx && transport_->peer_status(link.id).is_ok()) return Status::ok();
  // Attaching maps and allocates GPU memory on the expert node, possibly
  // behind another node's dispatch: the full transport timeout for that;
  // re-dialling a node already mapped is quick.
  const auto budget = link.tx ? std::chrono::milliseconds(std::min(cfg_.transport_timeout_ms, 500))
                              : std::chrono::milliseconds(cfg_.transport_timeout_ms);
  pb::DataPlaneRequest req;
  req.set_attention_rank(rank_);
  req.set_ipc_handle(link.rx->export_handle());
  TANDEM_ASSIGN_OR_RETURN(const pb::DataPlaneReply reply, dial(*transport_, link, req, "cuda_ipc", budget));
  // A restarted expert node exports new memory: map it (CUDA maps a handle
  // once per process, so an unchanged one is kept).
  if (link.tx && link.tx_blob == reply.ipc_handle()) return Status::ok();
  TANDEM_RETURN_IF_ERROR(kc::synchronize());  // sends into the old mapping have completed
  link.tx.reset();
  link.tx_blob.clear();
  TANDEM_ASSIGN_OR_RETURN(auto tx, transport::CudaIpcSender::open(reply.ipc_handle()));
  if (tx->slot_bytes() < slot_bytes_ || tx->slots() < link.seq.size())
    return failed_precondition(link.who() + " has " + std::to_string(tx->slots()) + " slots of " +
                               std::to_string(tx->slot_bytes()) + " bytes, this node needs " +
                               std::to_string(link.seq.size()) + " of " + std::to_string(slot_bytes_));
  link.tx = std::move(tx);
  link.tx_blob = reply.ipc_handle();
  return Status::ok();
}

Status CudaIpcExpertExecutor::send_rows(size_t i, size_t slot, const float* moe_in, const std::vector<int32_t>& rows,
                                        uint64_t seq) {
  IpcLink& link = link_as<IpcLink>(i);
  const int64_t H = model_.hidden_size, r = static_cast<int64_t>(rows.size());
  // The activations of those rows, device to device on this thread's stream,
  // after the attention that produced them.
  TANDEM_RETURN_IF_ERROR(kc::copy_to_device(link.rows[slot].data(), rows.data(), rows.size() * sizeof(int32_t)));
  TANDEM_RETURN_IF_ERROR(kc::gather_rows(moe_in, link.rows[slot].as<int32_t>(), link.packed.as<float>(), r, H));
  return link.tx->send(slot, link.packed.data(), static_cast<size_t>(r * H) * sizeof(float), seq,
                       kc::current_stream());
}

Status CudaIpcExpertExecutor::add_answer(size_t i, size_t slot, const Sent& o, float* out) {
  IpcLink& link = link_as<IpcLink>(i);
  // The sum is in our slot once its flag reaches seq; the wait and the
  // accumulation run on this thread's stream, in order.
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  TANDEM_RETURN_IF_ERROR(link.rx->wait(slot, o.seq, kc::current_stream(), std::chrono::microseconds(timeout)));
  return scatter_answer(static_cast<const float*>(link.rx->slot(slot)), link.rows[slot].as<int32_t>(), o.rows, out);
}

Status CudaIpcExpertExecutor::finish_wait(const Pending& p) {
  // One host wait per micro-batch: a device-side wait that timed out is
  // reported here (the expert node died between its message and its data).
  TANDEM_RETURN_IF_ERROR(kc::synchronize());
  for (const Sent& o : p.sent) {
    IpcLink& link = link_as<IpcLink>(o.link);
    TANDEM_RETURN_IF_ERROR(link.rx->check().with_context(link.who()));
  }
  return Status::ok();
}

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
