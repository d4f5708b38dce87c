// Connections of the UCX transport: the smaller NodeId of a pair dials the
// other's listener and says HELLO; the acceptor learns who it is from that and
// answers HELLO_ACK. Both sides count the peer as connected from then on.
// A HELLO from a peer that is connected or failed already is a new incarnation
// of it (a restarted process, or a reconnect() after a lost link): the new
// connection replaces the old, whose queued and late traffic is dropped.
#include <algorithm>

#include "tandem/common/logging.h"
#include "ucx_transport_impl.h"

namespace tandem::transport::ucx {

Status UcxTransport::connect(std::span<const PeerAddress> peers, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  TANDEM_RETURN_IF_ERROR(set_peers(peers));
  std::set<NodeId> ids;
  std::vector<std::pair<PeerAddress, SockAddr>> dials;
  for (const PeerAddress& p : peers) {
    ids.insert(p.id);
    // The smaller id of a pair dials, so each pair gets exactly one connection.
    if (self() < p.id) {
      auto addr = resolve(p.host, p.port);
      if (!addr.is_ok()) return addr.status().with_context("peer " + to_string(p));
      dials.emplace_back(p, *addr);
    }
  }
  post([this, ids, dials, deadline] {
    set_expected(ids);
    dial_deadline_ = deadline;
    for (const auto& [peer, addr] : dials) {
      dial_addrs_[peer.id] = addr;
      dial(peer, addr);
    }
  });

  std::unique_lock lock(conn_mu_);
  auto all_up = [&] {
    return std::all_of(ids.begin(), ids.end(), [&](const NodeId& id) { return established_.count(id) > 0; });
  };
  if (conn_cv_.wait_until(lock, deadline, all_up)) return Status::ok();
  std::string missing;
  std::vector<NodeId> missing_ids;
  for (const PeerAddress& p : peers) {
    if (established_.count(p.id)) continue;
    missing_ids.push_back(p.id);
    missing += (missing.empty() ? "" : ", ") + to_string(p);
    if (auto it = dial_errors_.find(p.id); it != dial_errors_.end()) missing += " (" + it->second + ")";
  }
  lock.unlock();
  Status st{StatusCode::kDeadlineExceeded,
            to_string(self()) + " connect: no " + missing + " within " + std::to_string(timeout.count()) + " ms"};
  // Operations on the missing peers fail fast from now on instead of timing out.
  for (const NodeId& id : missing_ids) fail_link(id, unavailable("never connected: " + st.message()));
  return st;
}

Status UcxTransport::expect(std::span<const NodeId> peers) {
  TANDEM_RETURN_IF_ERROR(set_peers(peers));
  std::set<NodeId> ids(peers.begin(), peers.end());
  // Unusable until they connect: callers ask peer_status() whether to reconnect.
  for (const NodeId& id : ids) fail_link(id, unavailable(to_string(id) + " has not connected to " + to_string(self()) + " yet"));
  post([this, ids] { set_expected(ids); });
  return Status::ok();
}

Status UcxTransport::reconnect(const PeerAddress& peer, std::chrono::milliseconds timeout) {
  if (!is_peer(peer.id)) return invalid_argument(to_string(peer.id) + " is not a peer of " + to_string(self()));
  auto addr = resolve(peer.host, peer.port);
  if (!addr.is_ok()) return addr.status().with_context("reconnect to " + to_string(peer));
  const auto deadline = Clock::now() + timeout;
  {
    std::lock_guard lock(conn_mu_);
    established_.erase(peer.id);
    dial_errors_.erase(peer.id);
  }
  post([this, peer, addr = *addr, deadline] {
    if (auto it = by_peer_.find(peer.id); it != by_peer_.end()) close_connection(it->second, /*force=*/true);
    // Here, not at HELLO_ACK: the peer may send right after its ACK, and that
    // can arrive before the ACK is handled.
    forget_traffic(peer.id);
    std::erase_if(redials_, [&](const auto& r) { return r.second.id == peer.id; });
    dial_addrs_[peer.id] = addr;
    dial_deadline_ = std::max(dial_deadline_, deadline);
    dial(peer, addr);
  });
  std::unique_lock lock(conn_mu_);
  if (conn_cv_.wait_until(lock, deadline, [&] { return established_.count(peer.id) > 0; })) return Status::ok();
  std::string why;
  if (auto it = dial_errors_.find(peer.id); it != dial_errors_.end()) why = " (" + it->second + ")";
  return {StatusCode::kDeadlineExceeded, to_string(self()) + " reconnect: no " + to_string(peer) + why + " within " +
                                             std::to_string(timeout.count()) + " ms"};
}

void UcxTransport::set_expected(const std::set<NodeId>& ids) {
  expected_ = ids;
  have_expected_ = true;
  // Peers that connected before we knew the peer list but do not belong.
  for (auto& c : conns_) {
    if (c->peer && !ids.count(*c->peer) && !c->failed) {
      TANDEM_LOG_WARN("{}: dropping connection from {}, not a peer", to_string(self()), to_string(*c->peer));
      close_connection(c.get(), /*force=*/true);
    }
  }
}

void UcxTransport::dial(const PeerAddress& peer, const SockAddr& addr) {
  auto owned = std::make_unique<Connection>();
  Connection* c = owned.get();
  c->owner = this;
  c->peer = peer.id;
  c->dialed = peer;
  conns_.push_back(std::move(owned));

  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  p.sockaddr.addr = addr.get();
  p.sockaddr.addrlen = addr.length;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = &UcxTransport::on_ep_error;
  p.err_handler.arg = c;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t st = ucp_ep_create(worker_.get(), &p, &ep); st != UCS_OK) {
    deferred_.push_back([this, c, st] { connection_failed(c, st); });
    return;
  }
  c->ep = Endpoint(ep);
  by_ep_[ep] = c;
  send_handshake(c, MessageKind::kHello);
}

void UcxTransport::accept(ucp_conn_request_h request) {
  if (stop_ || !listener_) {
    if (listener_) ucp_listener_reject(listener_.get(), request);
    return;
  }
  auto owned = std::make_unique<Connection>();
  Connection* c = owned.get();
  c->owner = this;
  conns_.push_back(std::move(owned));
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.conn_request = request;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = &UcxTransport::on_ep_error;
  p.err_handler.arg = c;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t st = ucp_ep_create(worker_.get(), &p, &ep); st != UCS_OK) {
    TANDEM_LOG_WARN("{}: cannot accept a connection: {}", to_string(self()), ucs_status_string(st));
    c->failed = true;
    return;
  }
  c->ep = Endpoint(ep);
  by_ep_[ep] = c;
}

void UcxTransport::close_connection(Connection* c, bool force) {
  if (c->ep.get()) by_ep_.erase(c->ep.get());
  if (void* r = c->ep.close(force)) closing_.push_back(r);
  if (c->peer) {
    auto it = by_peer_.find(*c->peer);
    if (it != by_peer_.end() && it->second == c) by_peer_.erase(it);
  }
  c->failed = true;
}

void UcxTransport::connection_failed(Connection* c, ucs_status_t status) {
  if (c->failed) return;
  close_connection(c, /*force=*/true);
  const std::string why = ucs_status_string(status);
  if (c->dialed && !c->established) {
    {
      std::lock_guard lock(conn_mu_);
      dial_errors_[c->dialed->id] = why;
    }
    // The peer may not be listening yet: keep dialing until connect()'s deadline.
    if (!stop_ && Clock::now() + kRedialDelay < dial_deadline_) {
      redials_.emplace_back(Clock::now() + kRedialDelay, *c->dialed);
      return;
    }
  }
  if (!c->peer) return;  // an accepted connection that never said HELLO
  std::string where = c->dialed ? " at " + c->dialed->host + ":" + std::to_string(c->dialed->port) : "";
  Status st = unavailable(to_string(*c->peer) + where + (c->established ? " disconnected: " : " unreachable: ") + why);
  // A peer that goes away is routine (restarts, orderly shutdowns) and the
  // callers say what it cost them; one that never answered is not.
  if (c->established)
    TANDEM_LOG_INFO("{}: {}", to_string(self()), st.message());
  else
    TANDEM_LOG_WARN("{}: {}", to_string(self()), st.message());
  fail_link(*c->peer, st);
}

void UcxTransport::send_handshake(Connection* c, MessageKind kind) {
  MessageHeader h;
  h.kind = kind;
  h.sender = self();
  auto wire = encode_header(h);
  auto op = std::make_shared<detail::SendState>(c->peer.value_or(self()), h, *wire, nullptr, nullptr, 0);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = &UcxTransport::on_send_done;
  p.user_data = this;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  ucs_status_ptr_t r = ucp_am_send_nbx(c->ep.get(), kAmId, op->wire().data(), op->wire_bytes(), nullptr, 0, &p);
  if (UCS_PTR_IS_PTR(r)) {
    sends_.emplace(r, std::move(op));
  } else if (UCS_PTR_IS_ERR(r)) {
    deferred_.push_back([this, c, st = UCS_PTR_STATUS(r)] { connection_failed(c, st); });
  }
}

void UcxTransport::on_handshake(Connection* c, const MessageHeader& h) {
  if (c->failed) return;
  const NodeId from = h.sender;
  if (h.kind == MessageKind::kHelloAck && c->dialed && c->peer == from && !c->established) {
    adopt(c, from);
    mark_established(from);
    return;
  }
  if (h.kind == MessageKind::kHello && !c->dialed && !c->peer) {
    const char* refuse = from == self()                             ? "it claims to be this node"
                         : have_expected_ && !expected_.count(from) ? "not a peer"
                                                                    : nullptr;
    if (refuse) {
      TANDEM_LOG_WARN("{}: refusing connection from {} ({})", to_string(self()), to_string(from), refuse);
      close_connection(c, /*force=*/true);
      return;
    }
    if (by_peer_.count(from) || !link_status(from).is_ok())
      TANDEM_LOG_INFO("{}: {} connected again; its old connection is replaced", to_string(self()), to_string(from));
    // Whatever the old connection left queued or in flight is not the new one's.
    forget_traffic(from);
    adopt(c, from);
    send_handshake(c, MessageKind::kHelloAck);
    mark_established(from);
    return;
  }
  TANDEM_LOG_WARN("{}: unexpected {} from {}", to_string(self()), kind_name(h.kind), to_string(from));
}

void UcxTransport::adopt(Connection* c, const NodeId& peer) {
  if (auto it = by_peer_.find(peer); it != by_peer_.end() && it->second != c) close_connection(it->second, true);
  c->peer = peer;
  c->established = true;
  by_peer_[peer] = c;
  clear_failure(peer);
}

void UcxTransport::mark_established(const NodeId& id) {
  {
    std::lock_guard lock(conn_mu_);
    established_.insert(id);
  }
  conn_cv_.notify_all();
}

void UcxTransport::on_conn_request(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<UcxTransport*>(arg);
  if (self->stop_) {
    ucp_listener_reject(self->listener_.get(), request);
    return;
  }
  self->deferred_.push_back([self, request] { self->accept(request); });
}

void UcxTransport::on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* c = static_cast<Connection*>(arg);
  c->owner->deferred_.push_back([c, status] { c->owner->connection_failed(c, status); });
}

}  // namespace tandem::transport::ucx
