#include "peer_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

extern char** environ;

namespace tandem::transport::testing {

using Clock = std::chrono::steady_clock;

Result<PeerProcess> PeerProcess::spawn(const std::vector<std::string>& args) {
  // A peer that died must not take the test down with it on the next write.
  ::signal(SIGPIPE, SIG_IGN);
  int to_child[2], from_child[2];
  if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) {
    return internal_error(std::string("pipe: ") + std::strerror(errno));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, to_child[0], 0);
  posix_spawn_file_actions_adddup2(&fa, from_child[1], 1);
  std::vector<std::string> argv_s = {"/proc/self/exe", kPeerFlag};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(to_child[0]);
  ::close(from_child[1]);
  if (rc != 0) {
    ::close(to_child[1]);
    ::close(from_child[0]);
    return internal_error(std::string("posix_spawn: ") + std::strerror(rc));
  }
  return PeerProcess(pid, to_child[1], from_child[0]);
}

PeerProcess::PeerProcess(PeerProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      in_fd_(std::exchange(o.in_fd_, -1)),
      out_fd_(std::exchange(o.out_fd_, -1)),
      buffered_(std::move(o.buffered_)),
      reaped_(o.reaped_) {}

PeerProcess::~PeerProcess() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (in_fd_ >= 0) ::close(in_fd_);
  if (out_fd_ >= 0) ::close(out_fd_);
}

Result<std::string> PeerProcess::read_line(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (auto nl = buffered_.find('\n'); nl != std::string::npos) {
      std::string line = buffered_.substr(0, nl);
      buffered_.erase(0, nl + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      return Status{StatusCode::kDeadlineExceeded, "peer " + std::to_string(pid_) + " said nothing in time"};
    }
    pollfd p{out_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(out_fd_, buf, sizeof(buf));
    if (n <= 0) return unavailable("peer " + std::to_string(pid_) + " closed its stdout");
    buffered_.append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> PeerProcess::expect(const std::string& prefix, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    TANDEM_ASSIGN_OR_RETURN(std::string line, read_line(std::max(left, std::chrono::milliseconds(0))));
    if (line.rfind("ERROR", 0) == 0) return internal_error("peer " + std::to_string(pid_) + ": " + line);
    if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
  }
}

Status PeerProcess::write_line(const std::string& line) {
  std::string s = line + "\n";
  if (::write(in_fd_, s.data(), s.size()) != static_cast<ssize_t>(s.size())) {
    return unavailable("cannot write to peer " + std::to_string(pid_));
  }
  return Status::ok();
}

Result<int> PeerProcess::wait(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (Clock::now() >= deadline) {
      signal(SIGKILL);
      return Status{StatusCode::kDeadlineExceeded, "peer " + std::to_string(pid_) + " did not exit in time"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void PeerProcess::signal(int sig) {
  if (pid_ > 0 && !reaped_) ::kill(pid_, sig);
}

Result<std::vector<PeerProcess>> spawn_mesh(const std::vector<NodeId>& ids, const std::vector<std::string>& scenario,
                                            std::chrono::milliseconds timeout) {
  std::vector<PeerProcess> procs;
  std::vector<std::string> ports;
  for (const NodeId& id : ids) {
    std::vector<std::string> args = {std::string(role_name(id.role)), std::to_string(id.rank)};
    args.insert(args.end(), scenario.begin(), scenario.end());
    TANDEM_ASSIGN_OR_RETURN(PeerProcess p, PeerProcess::spawn(args));
    procs.push_back(std::move(p));
  }
  for (auto& p : procs) {
    TANDEM_ASSIGN_OR_RETURN(std::string port, p.expect("LISTENING ", timeout));
    ports.push_back(port);
  }
  for (size_t i = 0; i < procs.size(); ++i) {
    for (size_t j = 0; j < ids.size(); ++j) {
      if (ids[j].role == ids[i].role) continue;
      TANDEM_RETURN_IF_ERROR(procs[i].write_line("PEER " + std::string(role_name(ids[j].role)) + " " +
                                                 std::to_string(ids[j].rank) + " 127.0.0.1 " + ports[j]));
    }
    TANDEM_RETURN_IF_ERROR(procs[i].write_line("GO"));
  }
  for (auto& p : procs) TANDEM_RETURN_IF_ERROR(p.expect("CONNECTED", timeout).status());
  return procs;
}

}  // namespace tandem::transport::testing
