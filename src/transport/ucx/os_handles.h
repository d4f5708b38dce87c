// Small owners of OS resources the UCX transport needs besides UCX itself.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "tandem/common/status.h"

namespace tandem::transport::ucx {

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

// getaddrinfo of a numeric or named host; INVALID_ARGUMENT if it does not resolve.
Result<SockAddr> resolve(const std::string& host, uint16_t port);
uint16_t port_of(const sockaddr_storage& s);

// Wakes a thread sleeping in poll() from any other thread.
class EventFd {
 public:
  EventFd();
  EventFd(const EventFd&) = delete;
  EventFd& operator=(const EventFd&) = delete;
  ~EventFd();
  int fd() const { return fd_; }
  void signal() const;
  void drain() const;

 private:
  int fd_;
};

}  // namespace tandem::transport::ucx
