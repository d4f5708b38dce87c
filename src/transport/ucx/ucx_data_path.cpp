// Data path of the UCX transport: active-message sends, and receives either
// copied out of UCX's eager buffer or fetched by rendezvous straight into a
// registered slot of the receive pool.
#include <cstring>

#include "tandem/common/logging.h"
#include "ucx_transport_impl.h"

namespace tandem::transport::ucx {

Status UcxTransport::send_error(const NodeId& peer, ucs_status_t status) const {
  Status link = link_status(peer);
  if (!link.is_ok()) return link;
  return ucx_error(status, "send to " + to_string(peer));
}

void UcxTransport::do_send(const std::shared_ptr<detail::SendState>& op) {
  auto it = by_peer_.find(op->peer());
  if (it == by_peer_.end()) {
    Status link = link_status(op->peer());
    op->complete(link.is_ok() ? unavailable(to_string(op->peer()) + " is not connected to " + to_string(self()))
                              : link);
    return;
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS |
                   UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  p.cb.send = &UcxTransport::on_send_done;
  p.user_data = this;
  // REPLY: the receiver learns which endpoint (so which peer) a message came
  // on even when the header is garbage.
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  p.memory_type = UCS_MEMORY_TYPE_HOST;
  if (op->memory_handle()) {
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    p.memh = static_cast<ucp_mem_h>(op->memory_handle());
  }
  ucs_status_ptr_t r = ucp_am_send_nbx(it->second->ep.get(), kAmId, op->wire().data(), op->wire_bytes(), op->data(),
                                       op->bytes(), &p);
  if (r == nullptr) {
    op->complete(Status::ok());
  } else if (UCS_PTR_IS_ERR(r)) {
    op->complete(send_error(op->peer(), UCS_PTR_STATUS(r)));
  } else {
    sends_.emplace(r, op);
  }
}

void UcxTransport::start_rndv(PendingRndv p) {
  ucp_request_param_t prm{};
  prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  prm.cb.recv_am = &UcxTransport::on_rndv_done;
  prm.user_data = this;
  prm.memory_type = UCS_MEMORY_TYPE_HOST;
  if (void* memh = p.recv.slot->handle()) {
    prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    prm.memh = static_cast<ucp_mem_h>(memh);
  }
  ucs_status_ptr_t r =
      ucp_am_recv_data_nbx(worker_.get(), p.desc, p.recv.slot->data(), p.recv.header.payload_bytes, &prm);
  if (r == nullptr) {
    finish_rndv(std::move(p.recv), UCS_OK);
  } else if (UCS_PTR_IS_ERR(r)) {
    finish_rndv(std::move(p.recv), UCS_PTR_STATUS(r));
  } else {
    recvs_.emplace(r, std::move(p.recv));
  }
}

void UcxTransport::finish_rndv(RndvRecv r, ucs_status_t status) {
  // The sender reconnected meanwhile: this belongs to its old connection.
  if (incarnation(r.from) != r.incarnation) return;
  if (status == UCS_OK) {
    deliver(r.header, std::move(r.slot));
    return;
  }
  // Usually the peer died, which its endpoint reports as well; without that
  // the message is lost, which must not pass silently either.
  Status link = link_status(r.from);
  poison(r.from, link.is_ok() ? ucx_error(status, "receive from " + to_string(r.from) + " failed") : link);
}

void UcxTransport::on_send_done(void* request, ucs_status_t status, void* user_data) {
  auto* self = static_cast<UcxTransport*>(user_data);
  auto it = self->sends_.find(request);
  if (it != self->sends_.end()) {
    it->second->complete(status == UCS_OK ? Status::ok() : self->send_error(it->second->peer(), status));
    self->sends_.erase(it);
  }
  ucp_request_free(request);
}

void UcxTransport::on_rndv_done(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* self = static_cast<UcxTransport*>(user_data);
  auto it = self->recvs_.find(request);
  if (it != self->recvs_.end()) {
    RndvRecv r = std::move(it->second);
    self->recvs_.erase(it);
    self->finish_rndv(std::move(r), status);
  }
  ucp_request_free(request);
}

ucs_status_t UcxTransport::on_am(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                 const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxTransport*>(arg);
  Connection* c = nullptr;
  if (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) {
    auto it = self->by_ep_.find(param->reply_ep);
    if (it != self->by_ep_.end()) c = it->second;
  }
  if (!c || c->failed) return UCS_OK;  // late traffic on a closed connection: dropped
  const std::span<const std::byte> wire(static_cast<const std::byte*>(header), header_length);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;

  if (auto h = decode_header(wire);
      h.is_ok() && (h->kind == MessageKind::kHello || h->kind == MessageKind::kHelloAck) && length == 0) {
    self->deferred_.push_back([self, c, hdr = *h] { self->on_handshake(c, hdr); });
    return UCS_OK;
  }
  if (!c->peer) {
    TANDEM_LOG_WARN("{}: data before HELLO on a connection; closing it", to_string(self->self()));
    self->deferred_.push_back([self, c] { self->close_connection(c, /*force=*/true); });
    return UCS_OK;
  }
  const NodeId from = *c->peer;
  auto h = self->accept_header(from, wire, length);
  if (!h.is_ok()) {
    TANDEM_LOG_WARN("{}: {}", to_string(self->self()), h.status().message());
    return UCS_OK;  // a rendezvous descriptor is dropped by UCX on UCS_OK
  }
  auto slot = self->acquire_slot(length);
  if (!slot.is_ok()) {
    self->poison(from, slot.status());
    return UCS_OK;
  }
  if (!rndv) {
    // Eager data lives in UCX's buffer only during this callback: the one copy.
    if (length > 0) std::memcpy((*slot)->data(), data, length);
    self->deliver(*h, std::move(*slot));
    return UCS_OK;
  }
  // Rendezvous: UCX fetches straight into the registered slot, after progress returns.
  self->pending_rndv_.push_back({data, RndvRecv{from, self->incarnation(from), *h, std::move(*slot)}});
  return UCS_INPROGRESS;
}

}  // namespace tandem::transport::ucx
