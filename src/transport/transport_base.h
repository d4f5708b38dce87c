// What every Transport implementation shares: argument checks, header
// encoding, sequence numbers, peer failure bookkeeping, the receive pool and
// the inbox. Implementations move bytes (post_send) and feed the receive path.
#pragma once

#include <map>
#include <memory>
#include <mutex>

#include "inbox.h"
#include "memory.h"
#include "send_state.h"
#include "tandem/transport/transport.h"

namespace tandem::transport::detail {

class TransportBase : public Transport {
 public:
  using Transport::send;

  NodeId self() const override { return self_; }
  Result<Buffer> allocate(size_t bytes) override;
  Result<SendHandle> send(const NodeId& peer, const MessageHeader& header, const Buffer& buffer, size_t bytes,
                          size_t offset) override;
  Result<SendHandle> send_raw(const NodeId& peer, std::span<const std::byte> wire_header, const Buffer& buffer,
                              size_t bytes) override;
  Result<Message> recv(const TagFilter& filter, std::chrono::milliseconds timeout) override;
  Status peer_status(const NodeId& peer) const override;

 protected:
  static constexpr size_t kMaxCachedRecvBytes = size_t{512} << 20;

  TransportBase(NodeId self, std::shared_ptr<MemoryRegistrar> registrar);

  // Fixes the peer set (from connect()); sends to anyone else are INVALID_ARGUMENT.
  Status set_peers(std::span<const PeerAddress> peers);
  Status set_peers(std::span<const NodeId> peers);
  bool is_peer(const NodeId& id) const;

  // Posts a checked send; the implementation completes `op` exactly once.
  virtual void post_send(std::shared_ptr<SendState> op) = 0;

  // The link to `peer` is gone: later sends fail fast and receives that find
  // nothing queued fail, both with `status`. In-flight sends are the
  // implementation's to complete. The first failure sticks.
  void fail_link(const NodeId& peer, const Status& status);
  // `peer` sent something we cannot trust: receives from it fail with `status`.
  void poison(const NodeId& peer, const Status& status) { inbox_.fail_peer(peer, status); }
  // OK, or the failure recorded by fail_link().
  Status link_status(const NodeId& peer) const;
  void close_inbox(Status status) { inbox_.close(std::move(status)); }
  // A new connection to `peer` replaces the old: messages still queued from
  // the old one are dropped, sequences restart and its incarnation advances
  // (receives begun on the old connection check it before delivering).
  void forget_traffic(const NodeId& peer);
  // The link to `peer` is up (again): its recorded failure is forgotten.
  void clear_failure(const NodeId& peer);
  uint64_t incarnation(const NodeId& peer) const;

  // Receive path. Checks the header of a data message from `from` carrying
  // `payload_bytes`; a bad one poisons `from` and comes back as DATA_LOSS.
  Result<MessageHeader> accept_header(const NodeId& from, std::span<const std::byte> wire, size_t payload_bytes);
  Result<std::unique_ptr<RecvSlot>> acquire_slot(size_t bytes) { return pool_->acquire(bytes); }
  void deliver(const MessageHeader& header, std::unique_ptr<RecvSlot> slot) {
    inbox_.deliver(Message(header, std::move(slot), header.payload_bytes));
  }

 private:
  struct PeerState {
    uint64_t next_sequence = 0;
    uint64_t incarnation = 0;
    Status link_failure;
  };
  // Checks shared by send() and send_raw(); the data pointer to send.
  Result<const std::byte*> check_send(const NodeId& peer, const Buffer& buffer, size_t bytes, size_t offset);

  const NodeId self_;
  const std::shared_ptr<MemoryRegistrar> registrar_;
  const std::shared_ptr<RecvPool> pool_;
  Inbox inbox_;
  mutable std::mutex mu_;
  bool have_peers_ = false;              // guarded by mu_
  std::map<NodeId, PeerState> peers_;    // guarded by mu_
};

}  // namespace tandem::transport::detail
