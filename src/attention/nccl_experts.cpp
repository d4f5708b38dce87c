#include "nccl_experts.h"

#if TANDEM_HAVE_CUDA

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "tandem/common/logging.h"
#include "tandem/internal/v1/node.grpc.pb.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;
namespace kc = tandem::kernels::cuda;

struct NcclExpertExecutor::NcclLink : DeviceExpertExecutor::Link {
  kc::Stream send_stream, recv_stream;        // declared first: the pairs' operations run on them
  std::unique_ptr<transport::NcclPair> out;   // activations to the node (this node is rank 0)
  std::unique_ptr<transport::NcclPair> back;  // its sums back
  uint64_t generation = 0;                    // of out/back: a re-dial makes new ones
  struct Slot {
    kc::DeviceBuffer rows;    // the routed rows of this micro-batch (device), for the gather and the scatter
    kc::DeviceBuffer packed;  // those rows' activations, being sent
    kc::DeviceBuffer sums;    // the node's answer, received
    kc::Event gathered;       // packed is filled (this thread's stream)
    kc::Event sent;           // packed may be refilled (send stream)
    kc::Event received;       // sums is filled (receive stream)
    kc::Event consumed;       // sums may be received into again (this thread's stream)
    uint64_t generation = 0;  // of the pairs the last dispatch from this slot went over
  };
  std::vector<Slot> slots;    // per micro-batch

  void drop() {
    if (out || back) ++generation;
    out.reset();  // aborts: operations still queued end without data
    back.reset();
  }
};

NcclExpertExecutor::~NcclExpertExecutor() {
  for (size_t i = 0; i < links(); ++i) link_as<NcclLink>(i).drop();
}

Result<std::unique_ptr<NcclExpertExecutor>> NcclExpertExecutor::create(const api::DeploymentConfig& cfg,
                                                                       const model::ModelConfig& model, int rank) {
  TANDEM_RETURN_IF_ERROR(transport::nccl_available().with_context(cfg.source + ": transport.backend: nccl"));
  std::unique_ptr<NcclExpertExecutor> x(new NcclExpertExecutor(cfg, model, rank));
  const size_t max_rows = static_cast<size_t>(cfg.max_batch_tokens);
  auto links = make_expert_links<NcclLink>(cfg, model.moe.num_experts);
  for (auto& link : links) {
    TANDEM_ASSIGN_OR_RETURN(link->send_stream, kc::Stream::create("NCCL sends"));
    TANDEM_ASSIGN_OR_RETURN(link->recv_stream, kc::Stream::create("NCCL receives"));
    link->slots.resize(static_cast<size_t>(cfg.micro_batches));
    for (auto& s : link->slots) {
      TANDEM_ASSIGN_OR_RETURN(s.rows, kc::DeviceBuffer::allocate(max_rows * sizeof(int32_t), "routed rows"));
      TANDEM_ASSIGN_OR_RETURN(s.packed, kc::DeviceBuffer::allocate(x->slot_bytes_, "routed activations"));
      TANDEM_ASSIGN_OR_RETURN(s.sums, kc::DeviceBuffer::allocate(x->slot_bytes_, "expert sums"));
      TANDEM_ASSIGN_OR_RETURN(s.gathered, kc::Event::create("gathered activations"));
      TANDEM_ASSIGN_OR_RETURN(s.sent, kc::Event::create("sent activations"));
      TANDEM_ASSIGN_OR_RETURN(s.received, kc::Event::create("received sums"));
      TANDEM_ASSIGN_OR_RETURN(s.consumed, kc::Event::create("consumed sums"));
    }
  }
  TANDEM_RETURN_IF_ERROR(x->init(std::move(links)));
  TANDEM_LOG_INFO("attention[{}] data plane over NCCL {}", rank, transport::nccl_version());
  return x;
}

void NcclExpertExecutor::on_link_error(size_t i) { link_as<NcclLink>(i).drop(); }

Status NcclExpertExecutor::connected(size_t i) {
  NcclLink& link = link_as<NcclLink>(i);
  if (link.out && link.out->is_ready() && link.back && link.back->is_ready() &&
      transport_->peer_status(link.id).is_ok())
    return Status::ok();
  link.drop();
  // The expert node makes and joins two communicators (behind another node's
  // dispatch, possibly): the full transport timeout.
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  pb::DataPlaneRequest req;
  req.set_attention_rank(rank_);
  req.set_nccl(true);
  req.set_next_step(next_step());
  TANDEM_ASSIGN_OR_RETURN(const pb::DataPlaneReply reply, dial(*transport_, link, req, "nccl", timeout));
  const std::string& ids = reply.nccl_ids();
  if (ids.size() % 2 != 0 || ids.empty())
    return data_loss(link.who() + " answered with " + std::to_string(ids.size()) + " bytes of NCCL ids");
  const size_t half = ids.size() / 2;
  TANDEM_ASSIGN_OR_RETURN(link.out, transport::NcclPair::join(ids.substr(0, half), 0));
  TANDEM_ASSIGN_OR_RETURN(link.back, transport::NcclPair::join(ids.substr(half), 0));
  // Both sides joined without waiting; this waits for the pairs to meet and
  // connect (NCCL connects on the first operation, which waits for the other
  // rank's): both tokens posted before either is waited for, in the order the
  // expert node connects them (activations, then sums).
  Status st = link.out->ready(timeout);
  if (st.is_ok()) st = link.back->ready(timeout);
  if (st.is_ok()) st = link.out->start_connect(link.send_stream.get());
  if (st.is_ok()) st = link.back->start_connect(link.recv_stream.get());
  if (st.is_ok()) st = link.out->finish_connect(timeout);
  if (st.is_ok()) st = link.back->finish_connect(timeout);
  if (!st.is_ok()) {
    link.drop();
    return unavailable(link.who() + ": NCCL set-up: " + st.message() +
                       " (NCCL needs the two nodes on different GPUs)");
  }
  return Status::ok();
}

Status NcclExpertExecutor::send_rows(size_t i, size_t slot, const float* moe_in, const std::vector<int32_t>& rows,
                                     uint64_t) {
  NcclLink& link = link_as<NcclLink>(i);
  const int64_t H = model_.hidden_size, r = static_cast<int64_t>(rows.size());
  const size_t bytes = static_cast<size_t>(r * H) * sizeof(float);
  NcclLink::Slot& s = link.slots[slot];
  // This thread's stream: the routed rows gathered once the previous send
  // from this slot has left.
  TANDEM_RETURN_IF_ERROR(s.sent.enqueue_wait());
  TANDEM_RETURN_IF_ERROR(kc::copy_to_device(s.rows.data(), rows.data(), rows.size() * sizeof(int32_t)));
  TANDEM_RETURN_IF_ERROR(kc::gather_rows(moe_in, s.rows.as<int32_t>(), s.packed.as<float>(), r, H));
  TANDEM_RETURN_IF_ERROR(s.gathered.record());
  // The send stream: after the gather.
  TANDEM_RETURN_IF_ERROR(s.gathered.enqueue_wait(link.send_stream.get()));
  TANDEM_RETURN_IF_ERROR(link.out->send(s.packed.data(), bytes, link.send_stream.get()));
  TANDEM_RETURN_IF_ERROR(s.sent.record(link.send_stream.get()));
  // The receive stream: the answer's receive is posted now, before the node
  // can send it, once the previous answer in this slot has been added up.
  TANDEM_RETURN_IF_ERROR(s.consumed.enqueue_wait(link.recv_stream.get()));
  TANDEM_RETURN_IF_ERROR(link.back->recv(s.sums.data(), bytes, link.recv_stream.get()));
  s.generation = link.generation;
  return s.received.record(link.recv_stream.get());
}

Status NcclExpertExecutor::add_answer(size_t i, size_t slot, const Sent& o, float* out) {
  NcclLink& link = link_as<NcclLink>(i);
  NcclLink::Slot& s = link.slots[slot];
  // Set up anew since this dispatch (a re-dial for a later micro-batch): its
  // receive was aborted, whatever the node announced.
  if (!link.back || s.generation != link.generation) return unavailable("NCCL link re-established during the step");
  // The node announces its sum once its send is done, so this is short; but
  // it is bounded, since a receive from a dead node never ends.
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  TANDEM_RETURN_IF_ERROR(s.received.wait_for(std::chrono::microseconds(timeout), "NCCL receive"));
  TANDEM_RETURN_IF_ERROR(link.back->check());
  TANDEM_RETURN_IF_ERROR(s.received.enqueue_wait());
  TANDEM_RETURN_IF_ERROR(scatter_answer(s.sums.as<float>(), s.rows.as<int32_t>(), o.rows, out));
  return s.consumed.record();
}

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
