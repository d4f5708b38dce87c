#include "expert_links.h"

#include <grpcpp/grpcpp.h>

#include <cstring>

#include "tandem/common/logging.h"
#include "tandem/transport/moe_payload.h"
#include "tandem/transport/ucx_transport.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;

void init_expert_link(ExpertLink& link, const api::DeploymentConfig& cfg, int64_t num_experts, int rank) {
  link.rank = rank;
  link.id = transport::expert_node(static_cast<uint32_t>(rank));
  link.control_address = cfg.expert_endpoint(rank).to_string();
  std::tie(link.first, link.last) = cfg.expert_range(num_experts, rank);
  link.stub = pb::ExpertNode::NewStub(grpc::CreateChannel(link.control_address, grpc::InsecureChannelCredentials()));
}

Result<std::unique_ptr<transport::Transport>> open_data_plane(const api::DeploymentConfig& cfg, int rank,
                                                              const std::vector<transport::NodeId>& peers) {
  const auto self = transport::attention_node(static_cast<uint32_t>(rank));
  TANDEM_ASSIGN_OR_RETURN(auto t, transport::create_ucx_transport(transport::ucx_node_options(
                                      self, cfg.attention_endpoint(rank).host, cfg.transport_shared_memory)));
  TANDEM_RETURN_IF_ERROR(t->expect(peers));
  return t;
}

Result<pb::DataPlaneReply> dial(transport::Transport& t, const ExpertLink& link, const pb::DataPlaneRequest& request,
                                const std::string& backend, std::chrono::milliseconds budget) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + budget);
  pb::DataPlaneReply reply;
  if (grpc::Status st = link.stub->DataPlane(&ctx, request, &reply); !st.ok())
    return unavailable(link.who() + " is unreachable: " + st.error_message());
  if (reply.backend() != backend)
    return failed_precondition(link.who() + " serves transport '" + reply.backend() + "', this attention node '" +
                               backend + "': the nodes run with different deployment files");
  if (reply.first_expert() != link.first || reply.last_expert() != link.last)
    return failed_precondition(link.who() + " holds experts [" + std::to_string(reply.first_expert()) + ", " +
                               std::to_string(reply.last_expert()) + "), this attention node expects [" +
                               std::to_string(link.first) + ", " + std::to_string(link.last) +
                               "): the nodes run with different deployment files");
  const transport::PeerAddress addr{link.id, reply.host(), static_cast<uint16_t>(reply.port())};
  if (Status st = t.reconnect(addr, budget); !st.is_ok())
    return unavailable(link.who() + ": data plane " + transport::to_string(addr) + " not reachable: " + st.message());
  TANDEM_LOG_INFO("data plane ({}) to {} up", backend, transport::to_string(addr));
  return reply;
}

Result<transport::Message> recv_combine(transport::Transport& t, const ExpertLink& link, int64_t layer, int mb,
                                        std::chrono::milliseconds timeout) {
  auto msg = t.recv(transport::TagFilter::exact(static_cast<uint32_t>(layer), static_cast<uint32_t>(mb), link.id),
                    timeout);
  if (msg.is_ok()) return msg;
  const Status& st = msg.status();
  if (st.code() == StatusCode::kDeadlineExceeded || st.code() == StatusCode::kDataLoss)
    return Status(st.code(), link.who() + ": " + st.message());
  return unavailable(link.who() + ": " + st.message());
}

Status send_device_dispatch(transport::Transport& t, const ExpertLink& link, transport::SendSlot& control,
                            int64_t layer, int mb, uint64_t step, uint64_t seq, const std::vector<int32_t>& rows,
                            const int32_t* topk_idx, const float* topk_w, int64_t top_k, int64_t hidden,
                            std::chrono::milliseconds timeout) {
  const auto K = static_cast<size_t>(top_k);
  const transport::IpcControlLayout lay{rows.size(), K};
  TANDEM_RETURN_IF_ERROR(control.ready(t, lay.dispatch_bytes(), timeout));
  std::byte* c = control.buffer.data();
  const uint64_t tokens = rows.size();
  std::memcpy(c + transport::IpcControlLayout::kStepOffset, &step, sizeof step);
  std::memcpy(c + transport::IpcControlLayout::kSeqOffset, &seq, sizeof seq);
  std::memcpy(c + transport::IpcControlLayout::kTokensOffset, &tokens, sizeof tokens);
  auto* ids = reinterpret_cast<int32_t*>(c + lay.ids_offset());
  auto* weights = reinterpret_cast<float*>(c + lay.weights_offset());
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(ids + i * K, topk_idx + static_cast<size_t>(rows[i]) * K, K * sizeof(int32_t));
    std::memcpy(weights + i * K, topk_w + static_cast<size_t>(rows[i]) * K, K * sizeof(float));
  }
  transport::MessageHeader h;
  h.kind = transport::MessageKind::kDispatch;
  h.layer = static_cast<uint32_t>(layer);
  h.micro_batch = static_cast<uint32_t>(mb);
  h.num_tokens = 0;  // the activations travel on the device
  h.hidden_size = static_cast<uint32_t>(hidden);
  h.dtype = DType::kF32;
  auto sent = t.send(link.id, h, control.buffer, lay.dispatch_bytes());
  if (!sent.is_ok()) return sent.status().with_context("dispatch to " + link.who());
  control.last = *sent;
  return Status::ok();
}

Status await_device_combine(transport::Transport& t, const ExpertLink& link, int64_t layer, int mb, uint64_t step,
                            uint64_t seq, int64_t tokens, std::chrono::milliseconds timeout) {
  using transport::IpcControlLayout;
  while (true) {
    TANDEM_ASSIGN_OR_RETURN(auto msg, recv_combine(t, link, layer, mb, timeout));
    const auto data = msg.data();
    if (data.size() != IpcControlLayout::kCombineBytes)
      return data_loss(link.who() + ": device combine of " + std::to_string(data.size()) + " bytes");
    uint64_t got_step = 0, echoed = 0, got_tokens = 0;
    std::memcpy(&got_step, data.data() + IpcControlLayout::kStepOffset, sizeof got_step);
    std::memcpy(&echoed, data.data() + IpcControlLayout::kSeqOffset, sizeof echoed);
    std::memcpy(&got_tokens, data.data() + IpcControlLayout::kTokensOffset, sizeof got_tokens);
    if (got_step < step) continue;  // the late answer to a dispatch of an aborted step
    if (got_step != step || echoed != seq || got_tokens != static_cast<uint64_t>(tokens))
      return data_loss(link.who() + ": device combine (step " + std::to_string(got_step) + ", seq " +
                       std::to_string(echoed) + ", " + std::to_string(got_tokens) +
                       " tokens) does not answer the dispatch (step " + std::to_string(step) + ", seq " +
                       std::to_string(seq) + ", " + std::to_string(tokens) + " tokens)");
    return Status::ok();
  }
}

}  // namespace tandem::attention
