#include "inbox.h"

#include <string>

namespace tandem::transport::detail {

void Inbox::deliver(Message message) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(message));
  }
  cv_.notify_all();
}

void Inbox::fail_peer(const NodeId& peer, Status status) {
  {
    std::lock_guard lock(mu_);
    failed_.emplace(peer, std::move(status));
  }
  cv_.notify_all();
}

void Inbox::drop_from(const NodeId& peer) {
  std::lock_guard lock(mu_);
  std::erase_if(queue_, [&](const Message& m) { return m.header().sender == peer; });
}

void Inbox::clear_failure(const NodeId& peer) {
  std::lock_guard lock(mu_);
  failed_.erase(peer);
}

void Inbox::close(Status status) {
  {
    std::lock_guard lock(mu_);
    if (closed_.is_ok()) closed_ = std::move(status);
  }
  cv_.notify_all();
}

std::optional<Status> Inbox::peer_failure(const NodeId& peer) const {
  std::lock_guard lock(mu_);
  auto it = failed_.find(peer);
  if (it == failed_.end()) return std::nullopt;
  return it->second;
}

Status Inbox::failure_locked(const TagFilter& filter) const {
  if (!closed_.is_ok()) return closed_;
  if (filter.sender) {
    auto it = failed_.find(*filter.sender);
    return it == failed_.end() ? Status::ok() : it->second;
  }
  // Without a sender the wait may be for any peer, so one failed peer is
  // enough to fail it: an M2N step needs every peer.
  return failed_.empty() ? Status::ok() : failed_.begin()->second;
}

Result<Message> Inbox::wait(const TagFilter& filter, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  while (true) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (filter.matches(it->header())) {
        Message m = std::move(*it);
        queue_.erase(it);
        return m;
      }
    }
    if (Status failure = failure_locked(filter); !failure.is_ok()) {
      return failure.with_context("receive of " + to_string(filter) + " at " + to_string(self_));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status{StatusCode::kDeadlineExceeded, "no message for " + to_string(filter) + " at " +
                                                       to_string(self_) + " within " +
                                                       std::to_string(timeout.count()) + " ms"};
    }
    cv_.wait_until(lock, deadline);
  }
}

}  // namespace tandem::transport::detail
