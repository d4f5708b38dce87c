// The M2N exchange of MoE disaggregation over NCCL point-to-point, to compare
// with the CUDA IPC channel (cuda_ipc_bench) and with a device-to-device
// cudaMemcpyAsync of the same bytes, measured the same way in the same run.
//
// Ranks: M attention ranks (0..M-1) and N expert ranks (M..M+N-1), one process
// and one GPU each (rank r uses device r), all forked by this process before it
// touches CUDA; it stays CUDA-free, collects what the ranks report over pipes,
// prints the table, and kills them if they hang (--timeout). Rank 0 makes the
// NCCL unique id and hands it to the others over pipes; all then join one
// communicator of M+N ranks.
//
// One iteration is one MoE layer of one micro-batch: dispatch (every attention
// rank sends SIZE bytes to every expert rank, one ncclGroupStart/End of sends
// and receives) then combine (every expert rank sends SIZE bytes back to every
// attention rank), queued on each rank's stream.
//
//  * nccl us: dispatch + combine round trip, the median over --iters
//    back-to-back iterations (after --warmup) of the gaps between CUDA events
//    recorded on the rank's stream after each iteration; the slowest rank's.
//  * nccl GB/s per rank: the payload the busiest rank sends and receives per
//    iteration (2 x max(M, N) x SIZE) over that round trip.
//  * d2d: on rank 0's GPU, cudaMemcpyAsync of max(M, N) x SIZE there and back
//    per step, timed the same way; ratio = nccl GB/s / d2d GB/s.
//
// Before timing each size, one iteration runs with rank-and-peer-dependent
// contents and every rank checks every byte it received (a mismatch fails).
//
//   nccl_m2n_bench [--attention M] [--experts N] [--quick] [--iters N]
//                  [--warmup N] [--timeout S] [--csv FILE]
//
// Exit status: 0 when it ran; 0 with "skipped: no GPU (...)" or "skipped: needs
// K GPUs, k visible" when the GPUs are missing; 1 on a CUDA/NCCL error, a data
// mismatch, a rank that died or a timeout; 2 on a bad command line.
#include <cuda_runtime_api.h>
#include <limits.h>
#include <nccl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_bench_util.h"

namespace {

using namespace tandem::bench;
using Clock = std::chrono::steady_clock;

constexpr size_t kSizes[] = {size_t{4} << 10, size_t{64} << 10, size_t{256} << 10,
                             size_t{1} << 20,  size_t{4} << 20,  size_t{8} << 20};
constexpr size_t kNumSizes = sizeof kSizes / sizeof kSizes[0];
constexpr size_t kMaxBytes = size_t{8} << 20;
constexpr int kMaxRanksPerSide = 64;

void check_nccl(ncclResult_t r, const char* expr, int line) {
  if (r == ncclSuccess) return;
  std::string what = std::string(expr) + " (line " + std::to_string(line) + "): " + ncclGetErrorString(r);
  const char* last = ncclGetLastError(nullptr);
  if (last && *last) what += " (" + std::string(last) + ")";
  fail(what);
}
#define NK(expr) check_nccl((expr), #expr, __LINE__)

struct Options {
  int attention = 2;
  int experts = 2;
  bool quick = false;
  int iters = 200;
  int warmup = 20;
  int timeout_s = 120;
  std::string csv;
  int world() const { return attention + experts; }
  int max_side() const { return std::max(attention, experts); }
};

std::string rank_name(int rank, const Options& o) {
  return "rank " + std::to_string(rank) +
         (rank < o.attention ? " (attention " + std::to_string(rank) + ")"
                             : " (expert " + std::to_string(rank - o.attention) + ")");
}

// ---- what a rank tells the parent --------------------------------------------------

enum class MsgKind : uint32_t { kSkip = 1, kInfo, kStage, kResult, kError };

// One fixed-size record per write, small enough for the write to be atomic.
struct Msg {
  MsgKind kind = MsgKind::kStage;
  int32_t rank = 0;
  uint64_t bytes = 0;  // kResult: SIZE
  double v1 = 0;       // kResult: nccl round trip us; kInfo: NCCL version code
  double v2 = 0;       // kResult (rank 0): d2d round trip us
  char name[96] = {};  // kInfo: GPU name
  char text[256] = {};
};
static_assert(sizeof(Msg) <= PIPE_BUF, "a report must fit one atomic pipe write");

// Moves all `n` bytes at `p` through `fd` with `io` (read or write); false on end
// of file or an error first.
template <typename Io, typename Byte>
bool all_bytes(Io io, int fd, Byte* p, size_t n) {
  while (n > 0) {
    const ssize_t k = io(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}
bool write_all(int fd, const void* data, size_t n) { return all_bytes(::write, fd, static_cast<const char*>(data), n); }
bool read_all(int fd, void* data, size_t n) { return all_bytes(::read, fd, static_cast<char*>(data), n); }

void copy_text(char* dst, size_t cap, const std::string& s) {
  const size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

class Reporter {
 public:
  Reporter(int fd, int rank) : fd_(fd), rank_(rank) {}
  void send(Msg m) {
    m.rank = rank_;
    if (!write_all(fd_, &m, sizeof m)) fail("lost the pipe to the parent process");
  }
  void text(MsgKind kind, const std::string& s) {
    Msg m;
    m.kind = kind;
    copy_text(m.text, sizeof m.text, s);
    send(m);
  }

 private:
  int fd_;
  int rank_;
};

// ---- a rank --------------------------------------------------------------------

// What rank 0 hands every other rank: go (or stop: the run is skipped) and the id.
struct IdMsg {
  int32_t go = 0;
  int32_t device_count = 0;
  ncclUniqueId id{};
};

// The contents the sender `src` puts in word `i` of what it sends `dst` at `bytes`
// per pair; the size is mixed in so a stale buffer of another size cannot pass.
uint32_t pattern(int src, int dst, size_t bytes, size_t i) {
  uint64_t x = (uint64_t(uint32_t(src)) << 48) ^ (uint64_t(uint32_t(dst)) << 32) ^ (uint64_t(bytes) << 7) ^ i;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

class Comm {
 public:
  Comm(const ncclUniqueId& id, int world, int rank) { NK(ncclCommInitRank(&c_, world, id, rank)); }
  // On an error path the communicator is aborted: its peers may be gone.
  ~Comm() {
    if (c_) ncclCommAbort(c_);
  }
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  ncclComm_t get() const { return c_; }
  void finish() {
    NK(ncclCommFinalize(c_));
    NK(ncclCommDestroy(c_));
    c_ = nullptr;
  }

 private:
  ncclComm_t c_ = nullptr;
};

class Rank {
 public:
  Rank(const Options& o, int rank, const ncclUniqueId& id, Reporter& rep)
      : o_(o),
        rank_(rank),
        attention_(rank < o.attention),
        npeers_(attention_ ? o.experts : o.attention),
        peer0_(attention_ ? o.attention : 0),
        rep_(rep),
        comm_(id, o.world(), rank),
        send_(static_cast<size_t>(npeers_) * kMaxBytes),
        recv_(static_cast<size_t>(npeers_) * kMaxBytes),
        flag_(sizeof(int32_t)) {}

  void run() {
    for (size_t bytes : kSizes) {
      rep_.text(MsgKind::kStage, size_text(bytes) + ": barrier");
      barrier();
      rep_.text(MsgKind::kStage, size_text(bytes) + ": verify");
      verify(bytes);
      rep_.text(MsgKind::kStage, size_text(bytes) + ": timing");
      for (int k = 0; k < o_.warmup; ++k) iteration(bytes);
      CK(cudaStreamSynchronize(s_.s));
      Msg m;
      m.kind = MsgKind::kResult;
      m.bytes = bytes;
      m.v1 = median_step_us(s_.s, o_.iters, [&](int) { iteration(bytes); });
      if (rank_ == 0) m.v2 = d2d_us(bytes);
      rep_.send(m);
    }
    barrier();
    comm_.finish();
  }

 private:
  int peer_rank(int j) const { return peer0_ + j; }
  char* slot(const Dev& d, int j) const { return d.at(static_cast<size_t>(j) * kMaxBytes); }

  // Dispatch, then combine: attention ranks send then receive, experts the reverse.
  void iteration(size_t bytes) {
    for (int phase = 0; phase < 2; ++phase) {
      const bool sending = (phase == 0) == attention_;
      NK(ncclGroupStart());
      for (int j = 0; j < npeers_; ++j) {
        if (sending) {
          NK(ncclSend(slot(send_, j), bytes, ncclInt8, peer_rank(j), comm_.get(), s_.s));
        } else {
          NK(ncclRecv(slot(recv_, j), bytes, ncclInt8, peer_rank(j), comm_.get(), s_.s));
        }
      }
      NK(ncclGroupEnd());
    }
  }

  void barrier() {
    NK(ncclAllReduce(flag_.p, flag_.p, 1, ncclInt32, ncclSum, comm_.get(), s_.s));
    CK(cudaStreamSynchronize(s_.s));
  }

  // One iteration with known contents; every received byte is checked.
  void verify(size_t bytes) {
    const size_t words = bytes / sizeof(uint32_t);
    std::vector<uint32_t> host(words);
    for (int j = 0; j < npeers_; ++j) {
      for (size_t i = 0; i < words; ++i) host[i] = pattern(rank_, peer_rank(j), bytes, i);
      CK(cudaMemcpyAsync(slot(send_, j), host.data(), bytes, cudaMemcpyHostToDevice, s_.s));
      CK(cudaStreamSynchronize(s_.s));  // `host` is refilled next
    }
    CK(cudaMemsetAsync(recv_.p, 0xA5, static_cast<size_t>(npeers_) * kMaxBytes, s_.s));
    iteration(bytes);
    CK(cudaStreamSynchronize(s_.s));
    const char* phase = attention_ ? "combine" : "dispatch";
    for (int j = 0; j < npeers_; ++j) {
      CK(cudaMemcpyAsync(host.data(), slot(recv_, j), bytes, cudaMemcpyDeviceToHost, s_.s));
      CK(cudaStreamSynchronize(s_.s));
      size_t bad = 0, first = 0;
      for (size_t i = 0; i < words; ++i) {
        if (host[i] != pattern(peer_rank(j), rank_, bytes, i) && bad++ == 0) first = i;
      }
      if (bad) {
        char buf[160];
        std::snprintf(buf, sizeof buf, ": byte %zu: got 0x%08x, want 0x%08x", first * sizeof(uint32_t), host[first],
                      pattern(peer_rank(j), rank_, bytes, first));
        fail(std::string(phase) + " data from " + rank_name(peer_rank(j), o_) + " at " + size_text(bytes) +
             " per pair is wrong: " + std::to_string(bad) + " of " + std::to_string(words) + " words differ; first" +
             buf);
      }
    }
  }

  // The baseline on this GPU: max(M, N) x SIZE there and back per step.
  double d2d_us(size_t bytes) {
    const size_t n = static_cast<size_t>(o_.max_side()) * bytes;
    if (!d2d_a_) {
      d2d_a_ = std::make_unique<Dev>(static_cast<size_t>(o_.max_side()) * kMaxBytes);
      d2d_b_ = std::make_unique<Dev>(static_cast<size_t>(o_.max_side()) * kMaxBytes);
    }
    const auto step = [&](int) {
      CK(cudaMemcpyAsync(d2d_b_->p, d2d_a_->p, n, cudaMemcpyDeviceToDevice, s_.s));
      CK(cudaMemcpyAsync(d2d_a_->p, d2d_b_->p, n, cudaMemcpyDeviceToDevice, s_.s));
    };
    for (int k = 0; k < o_.warmup; ++k) step(k);
    CK(cudaStreamSynchronize(s_.s));
    return median_step_us(s_.s, o_.iters, step);
  }

  const Options& o_;
  const int rank_;
  const bool attention_;
  const int npeers_;  // the ranks of the other side
  const int peer0_;   // the first of them
  Reporter& rep_;
  Comm comm_;
  Stream s_;
  Dev send_, recv_, flag_;  // send_/recv_: one kMaxBytes slot per peer
  std::unique_ptr<Dev> d2d_a_, d2d_b_;
};

// Rank 0: decides whether the run can happen and hands out the id. Returns false
// when the run is skipped (the parent has been told why).
bool make_id(const Options& o, const std::vector<int>& id_fds, Reporter& rep, IdMsg& idm) {
  int count = 0;
  std::string skip;
  if (const cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    skip = std::string("no GPU (") + cudaGetErrorString(e) + ")";
  } else if (count == 0) {
    skip = "no GPU (cudaGetDeviceCount returned 0)";
  } else if (count < o.world()) {
    skip = "needs " + std::to_string(o.world()) + " GPUs, " + std::to_string(count) + " visible";
  }
  idm.device_count = count;
  if (skip.empty()) {
    NK(ncclGetUniqueId(&idm.id));
    idm.go = 1;
  }
  for (int fd : id_fds) {
    if (!write_all(fd, &idm, sizeof idm)) fail("could not hand the NCCL unique id to the other ranks (pipe closed)");
  }
  if (!skip.empty()) rep.text(MsgKind::kSkip, skip);
  return skip.empty();
}

int run_rank(const Options& o, int rank, const std::vector<int>& id_fds, int id_in, Reporter& rep) {
  IdMsg idm;
  if (rank == 0) {
    if (!make_id(o, id_fds, rep, idm)) return 0;
  } else {
    if (!read_all(id_in, &idm, sizeof idm)) fail("rank 0 exited before handing out the NCCL unique id");
    if (!idm.go) return 0;  // skipped: rank 0 tells the parent why
  }
  rep.text(MsgKind::kStage, "cudaSetDevice");
  const int device = rank % idm.device_count;
  CK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, device));
  int version = 0;
  NK(ncclGetVersion(&version));
  Msg info;
  info.kind = MsgKind::kInfo;
  info.v1 = version;
  copy_text(info.name, sizeof info.name, prop.name);
  char pci[48];
  std::snprintf(pci, sizeof pci, "sm_%d%d, PCI %04x:%02x:%02x.0", prop.major, prop.minor,
                static_cast<unsigned>(prop.pciDomainID) & 0xffffu, static_cast<unsigned>(prop.pciBusID) & 0xffu,
                static_cast<unsigned>(prop.pciDeviceID) & 0xffu);
  copy_text(info.text, sizeof info.text, "GPU " + std::to_string(device) + ", " + info.name + ", " + pci);
  rep.send(info);
  rep.text(MsgKind::kStage, "ncclCommInitRank");
  Rank r(o, rank, idm.id, rep);
  r.run();
  rep.text(MsgKind::kStage, "done");
  return 0;
}

// The body of a forked rank process.
int child_main(const Options& o, int rank, const std::vector<int>& id_fds, int id_in, int result_fd) {
  Reporter rep(result_fd, rank);
  try {
    return run_rank(o, rank, id_fds, id_in, rep);
  } catch (const std::exception& e) {
    const std::string what = rank_name(rank, o) + ": " + e.what();
    std::fprintf(stderr, "nccl_m2n_bench: %s\n", what.c_str());
    try {
      rep.text(MsgKind::kError, what);
    } catch (const std::exception&) {
      // the parent is gone; stderr has it
    }
    return 1;
  }
}

// ---- the parent: launch, collect, print ---------------------------------------------

struct RankResult {
  bool have = false;
  double us = 0;
};

struct Row {
  size_t bytes = 0;
  std::vector<RankResult> ranks;
  double d2d_us = 0;
  double nccl_us = 0, nccl_min_us = 0;
  double nccl_gbps = 0, d2d_gbps = 0;
  double ratio() const { return nccl_gbps / d2d_gbps; }
};

struct Child {
  pid_t pid = -1;
  int fd = -1;  // its reports
  bool eof = false;
  bool reaped = false;
  std::string buf;
  std::string stage = "starting";
  std::string info;
};

class Parent {
 public:
  explicit Parent(const Options& o) : o_(o), children_(static_cast<size_t>(o.world())) {
    for (size_t k = 0; k < kNumSizes; ++k) {
      rows_[k].bytes = kSizes[k];
      rows_[k].ranks.resize(children_.size());
    }
  }

  int run() {
    if (!launch()) return 1;
    collect();
    if (!failure_.empty()) {
      std::printf("error: %s\n", failure_.c_str());
      return 1;
    }
    if (!skip_.empty()) {
      std::printf("skipped: %s\n", skip_.c_str());
      return 0;
    }
    if (printed_ < kNumSizes) {
      std::printf("error: the ranks exited after reporting %zu of %zu sizes\n", printed_, kNumSizes);
      return 1;
    }
    if (!o_.csv.empty() && !write_csv()) return 1;
    std::printf("nccl_m2n_bench: M=%d N=%d on %s\n", o_.attention, o_.experts, gpu_name_.c_str());
    return 0;
  }

 private:
  // Forks the ranks; false (after cleaning up) if the system would not.
  bool launch() {
    const int world = o_.world();
    std::vector<int> result_pipes(2 * static_cast<size_t>(world), -1), id_pipes(2 * static_cast<size_t>(world), -1);
    for (int r = 0; r < world; ++r) {
      if (pipe(&result_pipes[2 * r]) != 0 || (r > 0 && pipe(&id_pipes[2 * r]) != 0)) {
        std::printf("error: pipe: %s\n", std::strerror(errno));
        close_all(result_pipes);
        close_all(id_pipes);
        return false;
      }
    }
    const pid_t parent = getpid();
    std::fflush(nullptr);
    for (int r = 0; r < world; ++r) {
      const pid_t pid = fork();
      if (pid < 0) {
        std::printf("error: fork of rank %d: %s\n", r, std::strerror(errno));
        close_all(result_pipes);
        close_all(id_pipes);
        kill_running();
        reap_all();
        return false;
      }
      if (pid == 0) {
        // A rank must not outlive the parent (it would wait on NCCL forever).
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        std::vector<int> id_fds;
        int id_in = -1;
        for (int q = 0; q < world; ++q) {
          if (q != r) close(result_pipes[2 * q + 1]);
          close(result_pipes[2 * q]);
          if (q == 0) continue;
          if (r == 0) id_fds.push_back(id_pipes[2 * q + 1]);
          else if (q != r) close(id_pipes[2 * q + 1]);
          if (q == r) id_in = id_pipes[2 * q];
          else close(id_pipes[2 * q]);
        }
        if (r > 0) close(id_pipes[2 * r + 1]);
        const int rc = child_main(o_, r, id_fds, id_in, result_pipes[2 * r + 1]);
        std::fflush(nullptr);
        _exit(rc);  // skip the parent's atexit work
      }
      children_[r].pid = pid;
      children_[r].fd = result_pipes[2 * r];
    }
    for (int r = 0; r < world; ++r) close(result_pipes[2 * r + 1]);
    close_all(id_pipes);
    return true;
  }

  static void close_all(const std::vector<int>& fds) {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }

  void kill_running() {
    for (Child& c : children_) {
      if (c.pid > 0 && !c.reaped) kill(c.pid, SIGKILL);
    }
  }

  void reap_all() {
    for (Child& c : children_) {
      if (c.pid > 0 && !c.reaped) {
        int st = 0;
        while (waitpid(c.pid, &st, 0) < 0 && errno == EINTR) {
        }
        c.reaped = true;
      }
    }
  }

  std::string name(size_t r) const { return rank_name(static_cast<int>(r), o_); }

  static std::string describe_exit(int st) {
    if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
    if (WIFSIGNALED(st)) return std::string("was killed by signal ") + strsignal(WTERMSIG(st));
    return "stopped (status " + std::to_string(st) + ")";
  }

  void set_failure(const std::string& what) {
    if (failure_.empty()) failure_ = what;
    if (!killed_) {
      killed_ = true;
      kill_deadline_ = Clock::now() + std::chrono::seconds(10);
      kill_running();
    }
  }

  // Reads the reports and reaps the ranks until every one has exited, the
  // timeout passes (the ranks are killed), or one fails (the rest are killed).
  void collect() {
    const auto deadline = Clock::now() + std::chrono::seconds(o_.timeout_s);
    for (;;) {
      std::vector<pollfd> fds;
      std::vector<size_t> who;
      for (size_t r = 0; r < children_.size(); ++r) {
        if (!children_[r].eof) {
          fds.push_back(pollfd{children_[r].fd, POLLIN, 0});
          who.push_back(r);
        }
      }
      bool all_reaped = true;
      for (const Child& c : children_) all_reaped = all_reaped && c.reaped;
      if (fds.empty() && all_reaped) return;
      if (!fds.empty() && poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR) {
        set_failure(std::string("poll: ") + std::strerror(errno));
      }
      if (fds.empty()) usleep(100 * 1000);
      for (size_t k = 0; k < fds.size(); ++k) {
        if (fds[k].revents) read_from(who[k]);
      }
      reap_exited();
      const auto now = Clock::now();
      if (!killed_ && now > deadline) {
        std::string stuck;
        for (size_t r = 0; r < children_.size(); ++r) {
          if (!children_[r].reaped) stuck += "; " + name(r) + " at '" + children_[r].stage + "'";
        }
        set_failure("timed out after " + std::to_string(o_.timeout_s) + " s" + stuck +
                    "; killed the ranks (--timeout S gives a slow machine longer)");
      }
      if (killed_ && now > kill_deadline_) {
        std::string left;
        for (size_t r = 0; r < children_.size(); ++r) {
          if (!children_[r].reaped) left += " " + std::to_string(children_[r].pid);
        }
        failure_ += "; gave up waiting for killed rank processes to exit (pid" + left + ")";
        return;
      }
    }
  }

  void read_from(size_t r) {
    Child& c = children_[r];
    char chunk[4096];
    const ssize_t n = read(c.fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) return;
    if (n <= 0) {
      c.eof = true;
      close(c.fd);
      return;
    }
    c.buf.append(chunk, static_cast<size_t>(n));
    while (c.buf.size() >= sizeof(Msg)) {
      Msg m;
      std::memcpy(&m, c.buf.data(), sizeof m);
      c.buf.erase(0, sizeof m);
      m.name[sizeof m.name - 1] = '\0';
      m.text[sizeof m.text - 1] = '\0';
      handle(r, m);
    }
  }

  void reap_exited() {
    for (size_t r = 0; r < children_.size(); ++r) {
      Child& c = children_[r];
      if (c.reaped) continue;
      int st = 0;
      const pid_t p = waitpid(c.pid, &st, WNOHANG);
      if (p == 0 || (p < 0 && errno == EINTR)) continue;
      c.reaped = true;
      if (p < 0) {
        set_failure("waitpid for " + name(r) + ": " + std::strerror(errno));
      } else if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && !killed_) {
        const auto e = errors_.find(r);
        set_failure(e != errors_.end() ? e->second : name(r) + " " + describe_exit(st) + " (stage '" + c.stage + "')");
      }
    }
  }

  void handle(size_t r, const Msg& m) {
    if (m.rank != static_cast<int>(r)) {
      set_failure("garbled report from " + name(r));
      return;
    }
    Child& c = children_[r];
    switch (m.kind) {
      case MsgKind::kSkip:
        skip_ = m.text;
        break;
      case MsgKind::kStage:
        c.stage = m.text;
        break;
      case MsgKind::kInfo:
        c.info = m.text;
        if (r == 0) {
          gpu_name_ = m.name;
          nccl_version_ = static_cast<int>(m.v1);
        }
        break;
      case MsgKind::kError:
        errors_[r] = m.text;
        set_failure(m.text);
        break;
      case MsgKind::kResult:
        add_result(r, m);
        break;
      default:
        set_failure("garbled report from " + name(r));
    }
  }

  void add_result(size_t r, const Msg& m) {
    size_t k = 0;
    while (k < kNumSizes && kSizes[k] != m.bytes) ++k;
    if (k == kNumSizes) {
      set_failure("report of an unknown size from " + name(r));
      return;
    }
    Row& row = rows_[k];
    row.ranks[r] = RankResult{true, m.v1};
    if (r == 0) row.d2d_us = m.v2;
    for (const RankResult& x : row.ranks) {
      if (!x.have) return;
    }
    row.nccl_us = 0;
    row.nccl_min_us = 1e300;
    for (const RankResult& x : row.ranks) {
      row.nccl_us = std::max(row.nccl_us, x.us);
      row.nccl_min_us = std::min(row.nccl_min_us, x.us);
    }
    const double moved = 2.0 * o_.max_side() * static_cast<double>(row.bytes);
    row.nccl_gbps = moved / (row.nccl_us * 1e3);
    row.d2d_gbps = moved / (row.d2d_us * 1e3);
    print_row(row);
  }

  void print_header() {
    std::printf("nccl_m2n_bench: NCCL %d.%d.%d, M=%d attention + N=%d expert ranks, one process per GPU\n",
                nccl_version_ / 10000, nccl_version_ / 100 % 100, nccl_version_ % 100, o_.attention, o_.experts);
    for (size_t r = 0; r < children_.size(); ++r) {
      std::printf("  %s: %s\n", name(r).c_str(), children_[r].info.c_str());
    }
    std::printf("per iteration: dispatch (each attention rank sends SIZE to each expert rank) + combine (back);\n"
                "nccl us: that round trip, median of %d iterations, slowest rank; GB/s per rank: the %d x SIZE\n"
                "the busiest rank sends plus what it receives, over the round trip; d2d: cudaMemcpyAsync of\n"
                "%d x SIZE there and back on rank 0's GPU, timed the same way; every size checked byte for byte\n",
                o_.iters, o_.max_side(), o_.max_side());
    std::printf("%-8s %10s %15s %10s %10s %7s\n", "size", "nccl us", "nccl GB/s/rank", "d2d us", "d2d GB/s", "ratio");
  }

  void print_row(const Row& row) {
    if (printed_ == 0) print_header();
    std::printf("%-8s %10.2f %15.2f %10.2f %10.1f %7.3f\n", size_text(row.bytes).c_str(), row.nccl_us,
                row.nccl_gbps, row.d2d_us, row.d2d_gbps, row.ratio());
    std::fflush(stdout);
    ++printed_;
  }

  bool write_csv() const {
    FILE* f = std::fopen(o_.csv.c_str(), "w");
    if (!f) {
      std::printf("error: cannot write %s: %s\n", o_.csv.c_str(), std::strerror(errno));
      return false;
    }
    std::fprintf(f, "attention,experts,bytes,nccl_us,nccl_min_rank_us,nccl_gbps_per_rank,d2d_us,d2d_gbps,ratio\n");
    for (const Row& r : rows_) {
      std::fprintf(f, "%d,%d,%zu,%.3f,%.3f,%.3f,%.3f,%.3f,%.4f\n", o_.attention, o_.experts, r.bytes, r.nccl_us,
                   r.nccl_min_us, r.nccl_gbps, r.d2d_us, r.d2d_gbps, r.ratio());
    }
    if (std::fclose(f) != 0) {
      std::printf("error: writing %s failed\n", o_.csv.c_str());
      return false;
    }
    return true;
  }

  const Options& o_;
  std::vector<Child> children_;
  Row rows_[kNumSizes];
  size_t printed_ = 0;
  std::string skip_, failure_, gpu_name_;
  std::map<size_t, std::string> errors_;
  int nccl_version_ = 0;
  bool killed_ = false;
  Clock::time_point kill_deadline_{};
};

// ---- command line -------------------------------------------------------------

bool parse_int(const std::string& flag, const std::string& v, int lo, int hi, int& out) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi) {
    std::fprintf(stderr, "%s needs a whole number from %d to %d, got '%s'\n", flag.c_str(), lo, hi, v.c_str());
    return false;
  }
  out = static_cast<int>(x);
  return true;
}

// Fills `o` from the command line; -1 to go on, otherwise the exit status.
int parse_args(int argc, char** argv, Options& o) {
  bool iters_set = false, warmup_set = false;
  struct IntFlag {
    const char* name;
    int* out;
    int lo, hi;
    bool* seen;
  };
  const IntFlag int_flags[] = {{"--attention", &o.attention, 1, kMaxRanksPerSide, nullptr},
                               {"--experts", &o.experts, 1, kMaxRanksPerSide, nullptr},
                               {"--iters", &o.iters, 1, 100000, &iters_set},
                               {"--warmup", &o.warmup, 0, 100000, &warmup_set},
                               {"--timeout", &o.timeout_s, 1, 86400, nullptr}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::printf("usage: %s [--attention M] [--experts N] [--quick] [--iters N] [--warmup N] [--timeout S] "
                  "[--csv FILE]\n"
                  "  M attention and N expert ranks (default 2 and 2), one process per GPU; needs M+N GPUs\n",
                  argv[0]);
      return 0;
    }
    if (a == "--quick") {
      o.quick = true;
      continue;
    }
    const IntFlag* f = std::find_if(std::begin(int_flags), std::end(int_flags),
                                    [&](const IntFlag& x) { return a == x.name; });
    if (f == std::end(int_flags) && a != "--csv") {
      std::fprintf(stderr, "unknown argument %s (try --help)\n", a.c_str());
      return 2;
    }
    if (i + 1 == argc) {
      std::fprintf(stderr, "%s needs a value\n", a.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (f == std::end(int_flags)) {
      o.csv = v;
      continue;
    }
    if (!parse_int(a, v, f->lo, f->hi, *f->out)) return 2;
    if (f->seen) *f->seen = true;
  }
  if (o.quick) {
    if (!iters_set) o.iters = 50;
    if (!warmup_set) o.warmup = 5;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const int rc = parse_args(argc, argv, o); rc >= 0) return rc;
  // No CUDA or NCCL call in this process: the ranks are forked first and CUDA
  // state does not survive fork.
  signal(SIGPIPE, SIG_IGN);
  Parent p(o);
  return p.run();
}
