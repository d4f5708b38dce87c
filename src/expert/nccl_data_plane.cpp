#include "nccl_data_plane.h"

#if TANDEM_HAVE_CUDA

#include <chrono>
#include <string>

#include "tandem/common/logging.h"
#include "tandem/transport/moe_payload.h"

namespace tandem::expert {

namespace kc = tandem::kernels::cuda;
using Clock = std::chrono::steady_clock;

// One attention node's communicators. Connecting waits for the attention
// node, so it runs on a thread of its own; serve() waits (bounded) for it.
struct NcclDataPlane::Peer {
  kc::Stream connect_stream;                  // the connection tokens' operations (outlives the pairs)
  std::unique_ptr<transport::NcclPair> in;    // activations from the attention node
  std::unique_ptr<transport::NcclPair> out;   // sums to it
  uint64_t first_step = 0;                    // dispatches of earlier steps belong to replaced communicators
  std::atomic<int> state{0};                  // 0 connecting, 1 connected, -1 failed (see error)
  std::atomic<bool> cancel{false};            // the peer is being replaced: stop connecting
  Status error;                               // written before state becomes -1
  std::thread connector;

  ~Peer() {
    // Aborting ends a connection still waiting for a dead attention node.
    cancel.store(true, std::memory_order_release);
    if (in) in->abort();
    if (out) out->abort();
    if (connector.joinable()) connector.join();
  }

  // Connected, or why not, within `timeout`.
  Status wait_connected(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (state.load(std::memory_order_acquire) == 0) {
      if (Clock::now() > deadline)
        return {StatusCode::kDeadlineExceeded, "NCCL connection not up after " + std::to_string(timeout.count()) + " ms"};
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return state.load(std::memory_order_acquire) == 1 ? Status::ok() : error;
  }
};

NcclDataPlane::NcclDataPlane(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int ordinal,
                             engine::CudaModelRunner& gpu)
    : cfg_(cfg),
      model_(model),
      ordinal_(ordinal),
      gpu_(gpu),
      max_tokens_(static_cast<size_t>(cfg.max_batch_tokens)) {}

Result<std::unique_ptr<NcclDataPlane>> NcclDataPlane::create(const api::DeploymentConfig& cfg,
                                                             const model::ModelConfig& model, int ordinal,
                                                             engine::CudaModelRunner& gpu) {
  TANDEM_RETURN_IF_ERROR(transport::nccl_available().with_context(cfg.source + ": transport.backend: nccl"));
  std::unique_ptr<NcclDataPlane> p(new NcclDataPlane(cfg, model, ordinal, gpu));
  TANDEM_RETURN_IF_ERROR(kc::set_device(ordinal));
  TANDEM_ASSIGN_OR_RETURN(p->stream_, kc::Stream::create("NCCL data plane"));
  TANDEM_ASSIGN_OR_RETURN(p->activations_,
                          kc::DeviceBuffer::allocate(p->max_tokens_ * static_cast<size_t>(model.hidden_size) *
                                                         sizeof(float),
                                                     "NCCL activations"));
  TANDEM_ASSIGN_OR_RETURN(p->sent_, kc::Event::create("NCCL sends"));
  TANDEM_LOG_INFO("expert data plane over NCCL {}", transport::nccl_version());
  return p;
}

NcclDataPlane::~NcclDataPlane() {
  std::lock_guard<std::mutex> l(mu_);
  (void)kc::set_device(ordinal_);
  peers_.clear();  // aborts: nothing of ours waits on them any more
}

Status NcclDataPlane::attach(const internal::v1::DataPlaneRequest& request, internal::v1::DataPlaneReply& reply) {
  const int rank = request.attention_rank();
  if (!request.nccl())
    return invalid_argument("attention node " + std::to_string(rank) +
                            " did not ask for NCCL: is it running with transport.backend: nccl?");
  TANDEM_ASSIGN_OR_RETURN(const std::string in_id, transport::nccl_unique_id());
  TANDEM_ASSIGN_OR_RETURN(const std::string out_id, transport::nccl_unique_id());
  std::lock_guard<std::mutex> l(mu_);
  TANDEM_RETURN_IF_ERROR(kc::set_device(ordinal_));  // NCCL binds a communicator to the current device
  peers_.erase(rank);  // a restarted node's communicators: aborted
  auto p = std::make_unique<Peer>();
  p->first_step = request.next_step();
  TANDEM_ASSIGN_OR_RETURN(p->connect_stream, kc::Stream::create("NCCL connection"));
  TANDEM_ASSIGN_OR_RETURN(p->in, transport::NcclPair::join(in_id, 1));
  TANDEM_ASSIGN_OR_RETURN(p->out, transport::NcclPair::join(out_id, 1));
  // In the attention node's order: activations, then sums.
  p->connector = std::thread([peer = p.get(), ordinal = ordinal_,
                              timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms)] {
    Status st = kc::set_device(ordinal);
    if (st.is_ok()) st = peer->in->connect(peer->connect_stream.get(), timeout);
    if (st.is_ok() && peer->cancel.load(std::memory_order_acquire)) st = Status(StatusCode::kCancelled, "replaced");
    if (st.is_ok()) st = peer->out->connect(peer->connect_stream.get(), timeout);
    if (!st.is_ok()) peer->error = st;
    peer->state.store(st.is_ok() ? 1 : -1, std::memory_order_release);
  });
  peers_[rank] = std::move(p);
  reply.set_nccl_ids(in_id + out_id);
  return Status::ok();
}

void NcclDataPlane::dropped(int attention_rank) {
  std::lock_guard<std::mutex> l(mu_);
  (void)kc::set_device(ordinal_);
  if (peers_.erase(attention_rank) > 0)
    TANDEM_LOG_WARN("NCCL link of attention node {} dropped with a dispatch: it sets up a new one", attention_rank);
}

Status NcclDataPlane::serve(int attention_rank, const transport::MessageHeader& h, std::span<const std::byte> control,
                            std::span<std::byte> combine) {
  const size_t K = static_cast<size_t>(model_.moe.top_k);
  const std::string who = "attention node " + std::to_string(attention_rank);
  std::lock_guard<std::mutex> l(mu_);
  auto it = peers_.find(attention_rank);
  if (it == peers_.end()) return failed_precondition(who + " has no NCCL link (it sets one up when it dials again)");
  TANDEM_RETURN_IF_ERROR(kc::set_device(ordinal_));
  Status st = combine.size() == transport::IpcControlLayout::kCombineBytes
                  ? Status::ok()
                  : invalid_argument("NCCL combine buffer of " + std::to_string(combine.size()) + " bytes");
  auto d = st.is_ok() ? parse_device_dispatch(control, K, model_.moe.num_experts, max_tokens_) : Result<DeviceDispatch>(st);
  if (d.is_ok() && d->step < it->second->first_step) {
    // Queued before the attention node re-attached: its transfer went over
    // the communicators that were replaced, so nothing is matched here.
    return failed_precondition("stale dispatch of step " + std::to_string(d->step) + " from " + who);
  }
  st = d.is_ok() ? serve_locked(*it->second, h, *d) : d.status();
  if (!st.is_ok()) {
    // The attention node's transfer for this dispatch is unmatched now, or
    // the communicators' state is unknown: drop them rather than let a later
    // transfer pair with the wrong dispatch.
    peers_.erase(it);
    return st.with_context(who);
  }
  write_device_combine(combine, *d);
  return Status::ok();
}

Status NcclDataPlane::serve_locked(Peer& p, const transport::MessageHeader& h, const DeviceDispatch& d) {
  // Half the attention side's wait for our answer (see IpcDataPlane::serve).
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms / 2);
  TANDEM_RETURN_IF_ERROR(p.wait_connected(timeout));
  const size_t bytes = d.tokens * static_cast<size_t>(model_.hidden_size) * sizeof(float);
  // The experts run on the same explicit stream as the transfers, in order.
  kc::StreamGuard on_stream(stream_.get());
  TANDEM_RETURN_IF_ERROR(p.in->recv(activations_.data(), bytes, stream_.get()));
  TANDEM_ASSIGN_OR_RETURN(const float* sum, gpu_.experts_device(h.layer, activations_.as<float>(),
                                                                static_cast<int64_t>(d.tokens), d.ids, d.weights));
  TANDEM_RETURN_IF_ERROR(p.out->send(sum, bytes, stream_.get()));
  TANDEM_RETURN_IF_ERROR(sent_.record(stream_.get()));
  // Bounded: a dead attention node never takes our send, and
  // cudaStreamSynchronize would wait for ever.
  TANDEM_RETURN_IF_ERROR(sent_.wait_for(std::chrono::microseconds(timeout), "NCCL exchange"));
  TANDEM_RETURN_IF_ERROR(p.in->check());
  return p.out->check();
}

}  // namespace tandem::expert

#endif  // TANDEM_HAVE_CUDA
