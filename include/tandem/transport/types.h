// Vocabulary of the M2N transport: who a node is, what a message says about its
// payload, and which messages a receive asks for.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <string>

#include "tandem/common/dtype.h"

namespace tandem::transport {

enum class Role : uint8_t { kAttention = 1, kExpert = 2 };

std::string_view role_name(Role role);

struct NodeId {
  Role role = Role::kAttention;
  uint32_t rank = 0;

  auto operator<=>(const NodeId&) const = default;
};

// "attention[0]", "expert[2]".
std::string to_string(const NodeId& id);

inline NodeId attention_node(uint32_t rank) { return {Role::kAttention, rank}; }
inline NodeId expert_node(uint32_t rank) { return {Role::kExpert, rank}; }

// Where a node listens. The control plane hands every node the addresses of its
// peers; port 0 in a node's own options asks for an ephemeral port.
struct PeerAddress {
  NodeId id;
  std::string host;
  uint16_t port = 0;
};

std::string to_string(const PeerAddress& address);  // "expert[1]@127.0.0.1:4242"

enum class MessageKind : uint8_t {
  kDispatch = 1,  // attention -> expert: token activations (+ caller-defined routing data)
  kCombine = 2,   // expert -> attention: expert outputs
  kHello = 3,     // connection handshake; never returned by recv()
  kHelloAck = 4,
};

std::string_view kind_name(MessageKind kind);

// What travels in front of every payload. The caller fills the first block;
// the transport fills the rest on send and returns all of it on receive.
struct MessageHeader {
  MessageKind kind = MessageKind::kDispatch;
  uint32_t layer = 0;
  uint32_t micro_batch = 0;
  // The payload starts with a [num_tokens, hidden_size] matrix of `dtype`; any
  // bytes after it are the caller's (e.g. routing indices), so the transport
  // only checks that the matrix fits in the payload.
  uint32_t num_tokens = 0;
  uint32_t hidden_size = 0;
  DType dtype = DType::kBF16;

  // Set by the transport.
  NodeId sender;
  uint64_t sequence = 0;       // per (sender, receiver), starting at 0
  uint64_t payload_bytes = 0;
};

// Selects received messages. Unset fields match anything; recv() returns the
// oldest matching message.
struct TagFilter {
  std::optional<uint32_t> layer;
  std::optional<uint32_t> micro_batch;
  std::optional<NodeId> sender;

  static TagFilter any() { return {}; }
  static TagFilter exact(uint32_t layer, uint32_t micro_batch, NodeId sender) {
    return {layer, micro_batch, sender};
  }
  bool matches(const MessageHeader& h) const {
    return (!layer || *layer == h.layer) && (!micro_batch || *micro_batch == h.micro_batch) &&
           (!sender || *sender == h.sender);
  }
};

// "layer=3 micro_batch=1 from expert[2]", "any layer any micro_batch from any peer".
std::string to_string(const TagFilter& filter);

}  // namespace tandem::transport
