#include "nccl_data_plane.h"

#if TANDEM_HAVE_CUDA

#include <chrono>
#include <string>

#include "tandem/common/logging.h"
#include "tandem/transport/moe_payload.h"

namespace tandem::expert {

namespace kc = tandem::kernels::cuda;

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
  Peer fresh;
  TANDEM_ASSIGN_OR_RETURN(fresh.in, transport::NcclPair::join(in_id, 1));
  TANDEM_ASSIGN_OR_RETURN(fresh.out, transport::NcclPair::join(out_id, 1));
  peers_[rank] = std::move(fresh);  // the old pair (a restarted node's) is aborted here
  reply.set_nccl_ids(in_id + out_id);
  return Status::ok();
}

Status NcclDataPlane::serve(int attention_rank, const transport::MessageHeader& h, std::span<const std::byte> control,
                            std::span<std::byte> combine) {
  const size_t K = static_cast<size_t>(model_.moe.top_k), H = static_cast<size_t>(model_.hidden_size);
  if (combine.size() != transport::IpcControlLayout::kCombineBytes)
    return invalid_argument("NCCL combine buffer of " + std::to_string(combine.size()) + " bytes");
  TANDEM_ASSIGN_OR_RETURN(const DeviceDispatch d,
                          parse_device_dispatch(control, K, model_.moe.num_experts, max_tokens_));
  const std::string who = "attention node " + std::to_string(attention_rank);
  std::lock_guard<std::mutex> l(mu_);
  auto it = peers_.find(attention_rank);
  if (it == peers_.end()) return failed_precondition(who + " has not attached");
  Peer& p = it->second;
  TANDEM_RETURN_IF_ERROR(kc::set_device(ordinal_));
  // Half the attention side's wait for our answer (see IpcDataPlane::serve).
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms / 2);
  const size_t bytes = d.tokens * H * sizeof(float);
  Status st = p.in->ready(timeout);
  if (st.is_ok()) st = p.out->ready(timeout);
  if (st.is_ok()) st = p.in->recv(activations_.data(), bytes, kc::current_stream());
  if (st.is_ok()) {
    auto sum = gpu_.experts_device(h.layer, activations_.as<float>(), static_cast<int64_t>(d.tokens), d.ids,
                                   d.weights);
    st = sum.is_ok() ? p.out->send(*sum, bytes, kc::current_stream()) : sum.status();
  }
  if (st.is_ok()) st = sent_.record();
  // Bounded: a dead attention node never takes our send, and cudaStreamSynchronize would wait for ever.
  if (st.is_ok()) st = sent_.wait_for(std::chrono::microseconds(timeout), "NCCL exchange with " + who);
  if (st.is_ok()) st = p.in->check();
  if (st.is_ok()) st = p.out->check();
  if (!st.is_ok()) {
    // The communicators' state is unknown now: drop them; the attention node
    // sets up new ones when it dials again.
    peers_.erase(it);
    return st.with_context(who);
  }
  write_device_combine(combine, d);
  return Status::ok();
}

}  // namespace tandem::expert

#endif  // TANDEM_HAVE_CUDA
