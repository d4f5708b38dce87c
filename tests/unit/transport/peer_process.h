// Runs this test binary again as a transport peer in its own process (see
// peer_main.cpp), talking to it over its stdin/stdout lines.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/transport/types.h"

namespace tandem::transport::testing {

inline constexpr const char* kPeerFlag = "--transport-peer";

class PeerProcess {
 public:
  // Starts `<this binary> --transport-peer args...`.
  static Result<PeerProcess> spawn(const std::vector<std::string>& args);
  PeerProcess(PeerProcess&& o) noexcept;
  PeerProcess& operator=(PeerProcess&&) = delete;
  PeerProcess(const PeerProcess&) = delete;
  ~PeerProcess();  // SIGKILLs and reaps a child still running

  pid_t pid() const { return pid_; }
  Result<std::string> read_line(std::chrono::milliseconds timeout);
  // Reads lines until one starts with `prefix`; returns the rest of it.
  Result<std::string> expect(const std::string& prefix, std::chrono::milliseconds timeout);
  Status write_line(const std::string& line);
  // Exit code; DEADLINE_EXCEEDED (and SIGKILL) if it does not exit in time.
  Result<int> wait(std::chrono::milliseconds timeout);
  void signal(int sig);

 private:
  PeerProcess(pid_t pid, int in_fd, int out_fd) : pid_(pid), in_fd_(in_fd), out_fd_(out_fd) {}

  pid_t pid_ = -1;
  int in_fd_ = -1;   // child's stdin
  int out_fd_ = -1;  // child's stdout
  std::string buffered_;
  bool reaped_ = false;
};

// Spawns one peer per id in `ids` running `scenario`, gives each the addresses
// of its peers (all of the other role) and waits for CONNECTED.
Result<std::vector<PeerProcess>> spawn_mesh(const std::vector<NodeId>& ids, const std::vector<std::string>& scenario,
                                            std::chrono::milliseconds timeout);

}  // namespace tandem::transport::testing
