#include "tandem/transport/types.h"

namespace tandem::transport {

std::string_view role_name(Role role) {
  switch (role) {
    case Role::kAttention: return "attention";
    case Role::kExpert: return "expert";
  }
  return "unknown-role";
}

std::string to_string(const NodeId& id) {
  std::string s(role_name(id.role));
  s += '[';
  s += std::to_string(id.rank);
  s += ']';
  return s;
}

std::string to_string(const PeerAddress& address) {
  return to_string(address.id) + "@" + address.host + ":" + std::to_string(address.port);
}

std::string_view kind_name(MessageKind kind) {
  switch (kind) {
    case MessageKind::kDispatch: return "dispatch";
    case MessageKind::kCombine: return "combine";
    case MessageKind::kHello: return "hello";
    case MessageKind::kHelloAck: return "hello-ack";
  }
  return "unknown-kind";
}

std::string to_string(const TagFilter& filter) {
  std::string s = filter.layer ? "layer=" + std::to_string(*filter.layer) : "any layer";
  s += filter.micro_batch ? " micro_batch=" + std::to_string(*filter.micro_batch) : " any micro_batch";
  s += filter.sender ? " from " + to_string(*filter.sender) : " from any peer";
  return s;
}

}  // namespace tandem::transport
