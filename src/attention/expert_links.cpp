#include "expert_links.h"

#include <grpcpp/grpcpp.h>

#include "tandem/common/logging.h"
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

}  // namespace tandem::attention
