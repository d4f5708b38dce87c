#include "send_state.h"

#include <string>

namespace tandem::transport {
namespace detail {

void SendState::complete(Status status) {
  std::shared_ptr<MemoryRegion> release;
  {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    status_ = std::move(status);
    release = std::move(region_);
  }
  cv_.notify_all();
}

bool SendState::done() const {
  std::lock_guard lock(mu_);
  return done_;
}

Status SendState::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return done_; })) {
    return {StatusCode::kDeadlineExceeded,
            "send of " + std::string(kind_name(header_.kind)) + " layer=" + std::to_string(header_.layer) +
                " micro_batch=" + std::to_string(header_.micro_batch) + " to " + to_string(peer_) +
                " not complete within " + std::to_string(timeout.count()) + " ms"};
  }
  return status_;
}

}  // namespace detail

SendHandle::SendHandle(std::shared_ptr<detail::SendState> state) : state_(std::move(state)) {}

bool SendHandle::done() const { return state_ && state_->done(); }

Status SendHandle::wait(std::chrono::milliseconds timeout) const {
  if (!state_) return failed_precondition("empty SendHandle");
  return state_->wait(timeout);
}

}  // namespace tandem::transport
