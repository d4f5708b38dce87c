// Received messages waiting for a matching recv(), and the peers whose
// failures end the wait.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

#include "tandem/common/status.h"
#include "tandem/transport/buffer.h"
#include "tandem/transport/types.h"

namespace tandem::transport::detail {

class Inbox {
 public:
  explicit Inbox(NodeId self) : self_(self) {}

  void deliver(Message message);
  // Later receives from `peer` (or from any peer) that find nothing queued fail
  // with `status`. The first failure of a peer sticks.
  void fail_peer(const NodeId& peer, Status status);
  // Drops the messages of `peer` still queued.
  void drop_from(const NodeId& peer);
  // Receives from `peer` wait again instead of failing.
  void clear_failure(const NodeId& peer);
  // Every waiter and later receive that finds nothing queued fails with `status`.
  void close(Status status);
  std::optional<Status> peer_failure(const NodeId& peer) const;

  Result<Message> wait(const TagFilter& filter, std::chrono::milliseconds timeout);

 private:
  // Non-OK when a wait on `filter` can never be satisfied by new messages.
  Status failure_locked(const TagFilter& filter) const;

  const NodeId self_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> queue_;            // guarded by mu_, in arrival order
  std::map<NodeId, Status> failed_;      // guarded by mu_
  Status closed_;                        // guarded by mu_
};

}  // namespace tandem::transport::detail
