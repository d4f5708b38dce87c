#include "transport_base.h"

#include <algorithm>
#include <string>
#include <vector>

namespace tandem::transport::detail {

TransportBase::TransportBase(NodeId self, std::shared_ptr<MemoryRegistrar> registrar)
    : self_(self),
      registrar_(registrar),
      pool_(std::make_shared<RecvPool>(std::move(registrar), kMaxCachedRecvBytes)),
      inbox_(self) {}

Result<Buffer> TransportBase::allocate(size_t bytes) {
  TANDEM_ASSIGN_OR_RETURN(auto region, MemoryRegion::create(registrar_, bytes));
  return Buffer(std::move(region), bytes);
}

Status TransportBase::set_peers(std::span<const PeerAddress> peers) {
  std::vector<NodeId> ids;
  for (const PeerAddress& p : peers) ids.push_back(p.id);
  return set_peers(ids);
}

Status TransportBase::set_peers(std::span<const NodeId> peers) {
  std::lock_guard lock(mu_);
  if (have_peers_) return failed_precondition("the peer set is fixed already (connect() or expect() called twice)");
  std::map<NodeId, PeerState> fresh;
  for (const NodeId& id : peers) {
    if (id == self_) return invalid_argument("peer list contains this node " + to_string(self_));
    if (!fresh.emplace(id, PeerState{}).second) return invalid_argument("duplicate peer " + to_string(id));
  }
  peers_ = std::move(fresh);
  have_peers_ = true;
  return Status::ok();
}

void TransportBase::forget_traffic(const NodeId& peer) {
  {
    std::lock_guard lock(mu_);
    auto it = peers_.find(peer);
    if (it != peers_.end()) {
      it->second.next_sequence = 0;
      ++it->second.incarnation;
    }
  }
  inbox_.drop_from(peer);
}

void TransportBase::clear_failure(const NodeId& peer) {
  {
    std::lock_guard lock(mu_);
    auto it = peers_.find(peer);
    if (it != peers_.end()) it->second.link_failure = Status::ok();
  }
  inbox_.clear_failure(peer);
}

uint64_t TransportBase::incarnation(const NodeId& peer) const {
  std::lock_guard lock(mu_);
  auto it = peers_.find(peer);
  return it == peers_.end() ? 0 : it->second.incarnation;
}

Status TransportBase::peer_status(const NodeId& peer) const {
  {
    std::lock_guard lock(mu_);
    if (!have_peers_) return failed_precondition("peer_status() before connect() or expect()");
    auto it = peers_.find(peer);
    if (it == peers_.end()) return invalid_argument(to_string(peer) + " is not a peer of " + to_string(self_));
    if (!it->second.link_failure.is_ok()) return it->second.link_failure;
  }
  if (auto poisoned = inbox_.peer_failure(peer)) return *poisoned;
  return Status::ok();
}

bool TransportBase::is_peer(const NodeId& id) const {
  std::lock_guard lock(mu_);
  return peers_.count(id) > 0;
}

void TransportBase::fail_link(const NodeId& peer, const Status& status) {
  {
    std::lock_guard lock(mu_);
    auto it = peers_.find(peer);
    if (it != peers_.end() && it->second.link_failure.is_ok()) it->second.link_failure = status;
  }
  inbox_.fail_peer(peer, status);
}

Status TransportBase::link_status(const NodeId& peer) const {
  std::lock_guard lock(mu_);
  auto it = peers_.find(peer);
  return it == peers_.end() ? Status::ok() : it->second.link_failure;
}

Result<const std::byte*> TransportBase::check_send(const NodeId& peer, const Buffer& buffer, size_t bytes,
                                                   size_t offset) {
  if (bytes > 0 || buffer.region()) {
    if (!buffer.region()) return invalid_argument("send from an empty Buffer");
    if (buffer.region()->registrar() != registrar_.get()) {
      return invalid_argument("Buffer was allocated by another transport");
    }
    if (offset > buffer.size() || bytes > buffer.size() - offset) {
      return invalid_argument("send of [" + std::to_string(offset) + ", +" + std::to_string(bytes) +
                              ") outside a Buffer of " + std::to_string(buffer.size()) + " bytes");
    }
  }
  std::lock_guard lock(mu_);
  if (!have_peers_) return failed_precondition("send before connect()");
  auto it = peers_.find(peer);
  if (it == peers_.end()) return invalid_argument(to_string(peer) + " is not a peer of " + to_string(self_));
  if (!it->second.link_failure.is_ok()) return it->second.link_failure;
  return buffer.data() ? buffer.data() + offset : nullptr;
}

Result<SendHandle> TransportBase::send(const NodeId& peer, const MessageHeader& header, const Buffer& buffer,
                                       size_t bytes, size_t offset) {
  if (header.kind != MessageKind::kDispatch && header.kind != MessageKind::kCombine) {
    return invalid_argument("send() carries dispatch or combine messages only");
  }
  TANDEM_ASSIGN_OR_RETURN(const std::byte* data, check_send(peer, buffer, bytes, offset));
  MessageHeader h = header;
  h.sender = self_;
  h.payload_bytes = bytes;
  {
    std::lock_guard lock(mu_);
    h.sequence = peers_[peer].next_sequence++;
  }
  TANDEM_ASSIGN_OR_RETURN(WireHeader wire, encode_header(h));
  auto op = std::make_shared<SendState>(peer, h, wire, buffer.region(), data, bytes);
  post_send(op);
  return SendHandle(std::move(op));
}

Result<SendHandle> TransportBase::send_raw(const NodeId& peer, std::span<const std::byte> wire_header,
                                           const Buffer& buffer, size_t bytes) {
  TANDEM_ASSIGN_OR_RETURN(const std::byte* data, check_send(peer, buffer, bytes, 0));
  if (wire_header.size() > kWireHeaderBytes) return invalid_argument("raw header longer than a wire header");
  // A shorter header must arrive truncated, so the op remembers its length.
  WireHeader wire{};
  std::copy(wire_header.begin(), wire_header.end(), wire.begin());
  MessageHeader h;
  h.sender = self_;
  h.payload_bytes = bytes;
  auto op = std::make_shared<SendState>(peer, h, wire, buffer.region(), data, bytes);
  op->set_wire_bytes(wire_header.size());
  post_send(op);
  return SendHandle(std::move(op));
}

Result<Message> TransportBase::recv(const TagFilter& filter, std::chrono::milliseconds timeout) {
  return inbox_.wait(filter, timeout);
}

Result<MessageHeader> TransportBase::accept_header(const NodeId& from, std::span<const std::byte> wire,
                                                   size_t payload_bytes) {
  auto header = decode_header(wire);
  Status bad;
  if (!header.is_ok()) {
    bad = header.status();
  } else if (header->kind != MessageKind::kDispatch && header->kind != MessageKind::kCombine) {
    bad = data_loss("unexpected " + std::string(kind_name(header->kind)) + " message");
  } else if (header->sender != from) {
    bad = data_loss("message claims to come from " + to_string(header->sender));
  } else if (header->payload_bytes != payload_bytes) {
    bad = data_loss("header announces " + std::to_string(header->payload_bytes) + " payload bytes, " +
                    std::to_string(payload_bytes) + " arrived");
  }
  if (bad.is_ok()) return header;
  Status st = bad.with_context("from " + to_string(from));
  poison(from, st);
  return st;
}

}  // namespace tandem::transport::detail
