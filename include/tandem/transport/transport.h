// M2N transport: moves token activations between M attention nodes and N expert
// nodes, per MoE layer and micro-batch (MegaScale-Infer's M2N pattern).
//
// Usage, on every node (ASSIGN = TANDEM_ASSIGN_OR_RETURN):
//   ASSIGN(auto t, create_ucx_transport({.self = expert_node(0)}));  // listens
//   publish t->address(), learn the peers' addresses
//   RETURN_IF_ERROR(t->connect(peers, 10s));                       // all peers up
//   ASSIGN(Buffer b, t->allocate(bytes));                          // register once
//   fill b; ASSIGN(SendHandle h, t->send(peer, header, b, bytes));
//   ASSIGN(Message m, t->recv(TagFilter::exact(layer, mb, peer), 100ms));
//
// Errors: UNAVAILABLE once a peer disconnected or died (pending and later
// operations on it, promptly); DEADLINE_EXCEEDED when a wait runs out, naming
// the peer and tag; DATA_LOSS when a peer sent a malformed message (sticky for
// that peer: its stream cannot be trusted afterwards).
//
// Thread-safety: every method may be called from any thread concurrently.
// Lifetime: Buffers, Messages and SendHandles may outlive their transport;
// destroying a transport fails its own blocked receives with UNAVAILABLE and
// looks like a disconnect to its peers (after flushing what was sent).
//
// Restarts: a long-running node fixes its peer set with expect() and lets
// peers come and go. A peer that connects again (a restarted process, or the
// same one after a lost link) replaces its old connection: the old one is
// closed, messages still queued from it are dropped, and sequence numbers
// start again at 0. The dialing side does the same with reconnect().
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/transport/buffer.h"
#include "tandem/transport/types.h"
#include "tandem/transport/wire_header.h"

namespace tandem::transport {

namespace detail {
class SendState;
}

// Completion of one send. Copyable; all copies observe the same send.
class SendHandle {
 public:
  SendHandle() = default;
  explicit SendHandle(std::shared_ptr<detail::SendState> state);

  bool done() const;
  // OK once the payload was handed to the peer (UCX: the send request
  // completed, so the buffer may be reused); the send's error; or
  // DEADLINE_EXCEEDED naming the peer and tag if still in flight at the timeout.
  Status wait(std::chrono::milliseconds timeout) const;

 private:
  std::shared_ptr<detail::SendState> state_;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual NodeId self() const = 0;
  // Where peers reach this node (the port actually bound when 0 was asked for).
  virtual PeerAddress address() const = 0;

  // Connects to every peer (the smaller NodeId of a pair dials, the other
  // accepts) and returns once all are connected: DEADLINE_EXCEEDED listing the
  // missing ones otherwise. Call once.
  virtual Status connect(std::span<const PeerAddress> peers, std::chrono::milliseconds timeout) = 0;

  // Fixes the peer set without connecting or waiting: for a node that accepts
  // connections from peers whose lifetimes differ from its own. Instead of
  // connect(), once. UNIMPLEMENTED where the backend has fixed membership.
  virtual Status expect(std::span<const NodeId> peers) = 0;

  // Dials `peer` afresh, replacing any connection to it (healthy or failed),
  // and waits until it is up: DEADLINE_EXCEEDED with the last dial error
  // otherwise. After expect() or connect(); `peer` must be in the peer set.
  virtual Status reconnect(const PeerAddress& peer, std::chrono::milliseconds timeout) = 0;

  // OK while the link to `peer` is usable; else why not (UNAVAILABLE for a
  // lost or never-made link, DATA_LOSS after a malformed message).
  virtual Status peer_status(const NodeId& peer) const = 0;

  // Registered memory for send(); reuse it across sends.
  virtual Result<Buffer> allocate(size_t bytes) = 0;

  // Non-blocking send of buffer[offset, offset + bytes) to `peer` with the
  // caller's part of `header` (kind, layer, micro_batch, num_tokens,
  // hidden_size, dtype); sender, sequence and payload_bytes are filled in.
  // The buffer must come from this transport's allocate().
  virtual Result<SendHandle> send(const NodeId& peer, const MessageHeader& header, const Buffer& buffer,
                                  size_t bytes, size_t offset) = 0;
  Result<SendHandle> send(const NodeId& peer, const MessageHeader& header, const Buffer& buffer,
                          size_t bytes) {
    return send(peer, header, buffer, bytes, 0);
  }

  // Sends `wire_header` as it is, without encoding or checks: for fault
  // injection in tests (a peer must answer corrupt headers with DATA_LOSS).
  virtual Result<SendHandle> send_raw(const NodeId& peer, std::span<const std::byte> wire_header,
                                      const Buffer& buffer, size_t bytes) = 0;

  // The oldest received message matching `filter`, waiting up to `timeout`.
  // Messages already received are returned even if their sender has failed
  // since; otherwise a failed sender (any peer, for a filter without sender)
  // gives its UNAVAILABLE or DATA_LOSS status.
  virtual Result<Message> recv(const TagFilter& filter, std::chrono::milliseconds timeout) = 0;
};

// A registered buffer reused for one stream of messages, with the send that
// last used it. ready() makes it safe to overwrite with `bytes`: it waits for
// that send (normally long done); if the send is still in flight after
// `timeout` (an aborted step, a peer gone), the old buffer is left to it and a
// new one is taken. The buffer grows geometrically: registration is slow and
// message sizes vary.
struct SendSlot {
  Buffer buffer;
  SendHandle last;

  Status ready(Transport& transport, size_t bytes, std::chrono::milliseconds timeout);
};

}  // namespace tandem::transport
