#include "tandem/transport/inproc_transport.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>

#include "transport_base.h"

namespace tandem::transport {
namespace {

class InprocTransport;

// Plain heap memory: nothing to register in one process.
class NoRegistrar final : public detail::MemoryRegistrar {
 public:
  Result<void*> register_memory(void*, size_t) override { return static_cast<void*>(nullptr); }
  void unregister_memory(void*) override {}
};

class Fabric final : public InprocFabric {
 public:
  // A node's slot; senders hold `alive_mu` shared while they deliver, so a node
  // leaving waits for deliveries in progress and none start afterwards.
  struct Entry {
    InprocTransport* transport = nullptr;
    std::shared_mutex alive_mu;
    bool alive = true;  // guarded by alive_mu
  };

  Status add(const NodeId& id, InprocTransport* t);
  // Removes `id` (destroyed or killed); its peers see UNAVAILABLE with `why`.
  void remove(const NodeId& id, const std::string& why);
  void kill(const NodeId& node) override;
  std::shared_ptr<Entry> find(const NodeId& id);
  // Waits until every id in `ids` joined; DEADLINE_EXCEEDED lists the missing ones.
  Status wait_for(const std::vector<NodeId>& ids, std::chrono::milliseconds timeout, const NodeId& waiter);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<NodeId, std::shared_ptr<Entry>> nodes_;  // guarded by mu_
  std::set<NodeId> dead_;                           // guarded by mu_
};

class InprocTransport final : public detail::TransportBase {
 public:
  InprocTransport(std::shared_ptr<Fabric> fabric, NodeId self)
      : TransportBase(self, std::make_shared<NoRegistrar>()), fabric_(std::move(fabric)) {}
  ~InprocTransport() override {
    if (registered_) fabric_->remove(self(), to_string(self()) + " left the fabric");
  }

  Status join() {
    TANDEM_RETURN_IF_ERROR(fabric_->add(self(), this));
    registered_ = true;
    return Status::ok();
  }

  PeerAddress address() const override { return {self(), "inproc", 0}; }

  Status connect(std::span<const PeerAddress> peers, std::chrono::milliseconds timeout) override {
    TANDEM_RETURN_IF_ERROR(set_peers(peers));
    std::vector<NodeId> ids;
    for (const auto& p : peers) ids.push_back(p.id);
    return fabric_->wait_for(ids, timeout, self());
  }

  // The in-process fabric has fixed membership: a node that left cannot come back.
  Status expect(std::span<const NodeId>) override {
    return {StatusCode::kUnimplemented, "the in-process transport has fixed membership: use connect()"};
  }
  Status reconnect(const PeerAddress& peer, std::chrono::milliseconds) override {
    return {StatusCode::kUnimplemented,
            "the in-process transport cannot reconnect " + to_string(peer.id) + ": a node that left stays gone"};
  }

  // Called by the fabric: `peer` is gone.
  void peer_lost(const NodeId& peer, const std::string& why) { fail_link(peer, unavailable(why)); }
  // Called by the fabric on kill(): this node behaves as crashed.
  void killed() {
    killed_ = true;
    close_inbox(unavailable(to_string(self()) + " was killed"));
  }

  // Runs on the sender's thread: the one copy into this node's receive pool.
  void receive(const NodeId& from, std::span<const std::byte> wire, const std::byte* data, size_t bytes) {
    auto header = accept_header(from, wire, bytes);
    if (!header.is_ok()) return;  // recorded against `from` by accept_header
    auto slot = acquire_slot(bytes);
    if (!slot.is_ok()) {
      poison(from, slot.status());
      return;
    }
    if (bytes > 0) std::memcpy((*slot)->data(), data, bytes);
    deliver(*header, std::move(*slot));
  }

 protected:
  void post_send(std::shared_ptr<detail::SendState> op) override {
    if (killed_) {
      op->complete(unavailable(to_string(self()) + " was killed"));
      return;
    }
    auto entry = fabric_->find(op->peer());
    if (entry) {
      std::shared_lock lock(entry->alive_mu);
      if (entry->alive) {
        entry->transport->receive(self(), std::span(op->wire().data(), op->wire_bytes()), op->data(), op->bytes());
        op->complete(Status::ok());
        return;
      }
    }
    Status st = unavailable(to_string(op->peer()) + " is not on the fabric");
    fail_link(op->peer(), st);
    op->complete(st);
  }

 private:
  std::shared_ptr<Fabric> fabric_;
  bool registered_ = false;
  std::atomic<bool> killed_{false};
};

Status Fabric::add(const NodeId& id, InprocTransport* t) {
  {
    std::lock_guard lock(mu_);
    if (nodes_.count(id)) return invalid_argument(to_string(id) + " is already on the fabric");
    dead_.erase(id);  // a restarted node
    auto e = std::make_shared<Entry>();
    e->transport = t;
    nodes_.emplace(id, std::move(e));
  }
  cv_.notify_all();
  return Status::ok();
}

void Fabric::remove(const NodeId& id, const std::string& why) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return;
  {
    std::unique_lock alive(it->second->alive_mu);
    it->second->alive = false;
  }
  nodes_.erase(it);
  dead_.insert(id);
  for (auto& [other, e] : nodes_) {
    std::shared_lock alive(e->alive_mu);
    if (e->alive) e->transport->peer_lost(id, why);
  }
  cv_.notify_all();
}

void Fabric::kill(const NodeId& node) {
  InprocTransport* victim = nullptr;
  {
    std::lock_guard lock(mu_);
    auto it = nodes_.find(node);
    if (it == nodes_.end()) return;
    victim = it->second->transport;
  }
  remove(node, to_string(node) + " died");
  // The victim object lives on until its owner destroys it; make it act dead.
  // (Its owner may not destroy it concurrently with kill(): the caller owns both.)
  victim->killed();
}

std::shared_ptr<Fabric::Entry> Fabric::find(const NodeId& id) {
  std::lock_guard lock(mu_);
  auto it = nodes_.find(id);
  return it == nodes_.end() ? nullptr : it->second;
}

Status Fabric::wait_for(const std::vector<NodeId>& ids, std::chrono::milliseconds timeout, const NodeId& waiter) {
  std::unique_lock lock(mu_);
  std::string missing;
  std::optional<NodeId> gone;
  cv_.wait_for(lock, timeout, [&] {
    missing.clear();
    for (const NodeId& id : ids) {
      if (dead_.count(id)) gone = id;
      if (!nodes_.count(id)) missing += (missing.empty() ? "" : ", ") + to_string(id);
    }
    return missing.empty() || gone;
  });
  if (gone) return unavailable(to_string(waiter) + " cannot connect to " + to_string(*gone) + ": it is gone");
  if (missing.empty()) return Status::ok();
  return {StatusCode::kDeadlineExceeded, to_string(waiter) + " connect: no " + missing + " within " +
                                             std::to_string(timeout.count()) + " ms"};
}

}  // namespace

std::shared_ptr<InprocFabric> create_inproc_fabric() { return std::make_shared<Fabric>(); }

Result<std::unique_ptr<Transport>> create_inproc_transport(std::shared_ptr<InprocFabric> fabric, NodeId self) {
  auto f = std::dynamic_pointer_cast<Fabric>(fabric);
  if (!f) return invalid_argument("not an inproc fabric");
  auto t = std::make_unique<InprocTransport>(f, self);
  TANDEM_RETURN_IF_ERROR(t->join());
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace tandem::transport
