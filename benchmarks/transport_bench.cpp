// M2N transport over UCX on loopback, every node its own process: throughput of
// a one-way attention->expert stream and latency of a dispatch+combine round
// trip (one MoE layer's communication) per message size, for 1x1 and MxN.
// The 1x1 numbers are set against ucx_perftest (ucp_am_bw / ucp_am_lat) run
// with the same UCX_TLS, the limit of the UCX layer underneath. The MxN numbers
// are set against MPI_Alltoallv (mpi_alltoallv_baseline, run through mpirun)
// doing the same dispatch + combine, by default over the same UCX on tcp/lo.
//
//   build/benchmarks/transport_bench [--mesh 2x2] [--sizes 1024,...,4194304]
//                                    [--reps 3] [--busy-poll-us 0] [--no-perftest]
//                                    [--no-mpi] [--mpi-pml ucx|ob1]
// Internal: transport_bench --node ROLE RANK SIZES BUSY_POLL_US REPS (one node).
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tandem/common/logging.h"
#include "tandem/transport/ucx_transport.h"

extern char** environ;

using namespace tandem;
using namespace tandem::transport;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Same transport settings for our nodes and for ucx_perftest.
// tcp on lo unless the environment says otherwise, e.g. shared memory:
//   UCX_TLS=tcp,sysv,posix,cma,self UCX_MM_ERROR_HANDLING=y transport_bench
// (tcp stays in the list: UCX's client-server wire-up needs it.)
std::vector<std::pair<std::string, std::string>> ucx_config() {
  auto env_or = [](const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return std::string(v && *v ? v : fallback);
  };
  std::vector<std::pair<std::string, std::string>> c = {{"TLS", env_or("UCX_TLS", "tcp")},
                                                        {"NET_DEVICES", env_or("UCX_NET_DEVICES", "lo")}};
  if (const char* mm = std::getenv("UCX_MM_ERROR_HANDLING")) c.emplace_back("MM_ERROR_HANDLING", mm);
  return c;
}
const std::vector<std::pair<std::string, std::string>> kUcxConfig = ucx_config();
constexpr int kWindow = 8;  // sends in flight per peer in the throughput phase

std::vector<size_t> parse_sizes(const std::string& s) {
  std::vector<size_t> v;
  std::stringstream in(s);
  for (std::string x; std::getline(in, x, ',');) v.push_back(std::stoull(x));
  return v;
}

std::string human(size_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= 1024 && bytes % 1024 == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

size_t throughput_iters(size_t bytes) { return std::clamp<size_t>((size_t{128} << 20) / bytes, 64, 20000); }
size_t latency_iters(size_t bytes) { return std::clamp<size_t>((size_t{16} << 20) / bytes, 50, 2000); }
constexpr size_t kLatencyWarmup = 5;

// ----------------------------------------------------------------------------
// One node (a child process)

// A node has no one to return errors to: report on stdout and exit.
void check(const Status& s) {
  if (!s.is_ok()) {
    std::printf("ERROR %s\n", s.to_string().c_str());
    std::fflush(stdout);
    std::_Exit(1);
  }
}
template <typename T>
T check(Result<T> r) {
  check(r.status());
  return std::move(r).value();
}

MessageHeader header(MessageKind kind, uint32_t layer, uint32_t mb, size_t bytes) {
  MessageHeader h;
  h.kind = kind;
  h.layer = layer;
  h.micro_batch = mb;
  h.num_tokens = static_cast<uint32_t>(bytes);
  h.hidden_size = 1;
  h.dtype = DType::kU8;
  return h;
}

// Run k covers size k % sizes (repetition k / sizes). Tags: layer = iteration,
// micro_batch = 2k (throughput) or 2k + 1 (latency).
void attention_node(Transport& t, const std::vector<NodeId>& experts, const std::vector<size_t>& sizes, int reps) {
  for (uint32_t k = 0; k < reps * sizes.size(); ++k) {
    const size_t bytes = sizes[k % sizes.size()];
    // Throughput: kWindow sends in flight per expert, then one ack per expert.
    std::vector<std::vector<Buffer>> bufs(experts.size());
    for (auto& b : bufs) {
      for (int w = 0; w < kWindow; ++w) {
        b.push_back(check(t.allocate(bytes)));
        std::memset(b.back().data(), 0x5a, bytes);
      }
    }
    const size_t iters = throughput_iters(bytes);
    std::vector<std::vector<SendHandle>> inflight(experts.size(), std::vector<SendHandle>(kWindow));
    const auto t0 = Clock::now();
    for (uint32_t it = 0; it < iters; ++it) {
      for (size_t e = 0; e < experts.size(); ++e) {
        SendHandle& slot = inflight[e][it % kWindow];
        if (it >= kWindow) check(slot.wait(30s));
        slot = check(t.send(experts[e], header(MessageKind::kDispatch, it, 2 * k, bytes), bufs[e][it % kWindow], bytes));
      }
    }
    for (NodeId e : experts) check(t.recv(TagFilter::exact(iters, 2 * k, e), 60s));
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    for (auto& v : inflight) {
      for (auto& h : v) check(h.wait(30s));
    }
    std::printf("RESULT tput %u %zu %zu %.9f\n", k, bytes, iters, secs);

    // Latency: dispatch to every expert, wait for every combine.
    const size_t n = latency_iters(bytes) + kLatencyWarmup;
    std::vector<double> us;
    std::vector<SendHandle> sends(experts.size());
    for (uint32_t it = 0; it < n; ++it) {
      const auto s0 = Clock::now();
      for (size_t e = 0; e < experts.size(); ++e) {
        sends[e] = check(t.send(experts[e], header(MessageKind::kDispatch, it, 2 * k + 1, bytes), bufs[e][0], bytes));
      }
      for (NodeId e : experts) check(t.recv(TagFilter::exact(it, 2 * k + 1, e), 30s));
      if (it >= kLatencyWarmup) us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s0).count());
      for (auto& h : sends) check(h.wait(30s));
    }
    std::sort(us.begin(), us.end());
    std::printf("RESULT lat %u %zu %.2f %.2f\n", k, bytes, us[us.size() / 2], us[us.size() * 99 / 100]);
    std::fflush(stdout);
  }
}

void expert_node(Transport& t, const std::vector<NodeId>& attention, const std::vector<size_t>& sizes, int reps) {
  for (uint32_t k = 0; k < reps * sizes.size(); ++k) {
    const size_t bytes = sizes[k % sizes.size()];
    auto buf = check(t.allocate(bytes));
    std::memset(buf.data(), 0xa5, bytes);
    const size_t iters = throughput_iters(bytes);
    for (uint32_t it = 0; it < iters; ++it) {
      for (NodeId a : attention) check(t.recv(TagFilter::exact(it, 2 * k, a), 30s));
    }
    std::vector<SendHandle> acks;
    for (NodeId a : attention) acks.push_back(check(t.send(a, header(MessageKind::kCombine, iters, 2 * k, 1), buf, 1)));
    for (auto& h : acks) check(h.wait(30s));

    const size_t n = latency_iters(bytes) + kLatencyWarmup;
    for (uint32_t it = 0; it < n; ++it) {
      for (NodeId a : attention) check(t.recv(TagFilter::exact(it, 2 * k + 1, a), 30s));
      // All combines share one buffer: nobody writes it while they are in flight.
      std::vector<SendHandle> replies;
      for (NodeId a : attention) {
        replies.push_back(check(t.send(a, header(MessageKind::kCombine, it, 2 * k + 1, bytes), buf, bytes)));
      }
      for (auto& h : replies) check(h.wait(30s));
    }
  }
}

int run_node(int argc, char** argv) {
  // --node ROLE RANK SIZES BUSY_POLL_US REPS
  if (argc < 7) return 2;
  const int reps = std::atoi(argv[6]);
  init_logging("transport-bench");
  const Role role = std::string(argv[2]) == "expert" ? Role::kExpert : Role::kAttention;
  UcxOptions o;
  o.self = {role, static_cast<uint32_t>(std::atoi(argv[3]))};
  o.ucx_config = kUcxConfig;
  o.busy_poll = std::chrono::microseconds(std::atoi(argv[5]));
  const std::vector<size_t> sizes = parse_sizes(argv[4]);
  auto t = check(create_ucx_transport(o));
  std::printf("LISTENING %u\n", t->address().port);
  std::fflush(stdout);
  std::vector<PeerAddress> peers;
  char line[256];
  while (std::fgets(line, sizeof(line), stdin)) {
    char r[32], host[64];
    unsigned rank, port;
    if (std::strncmp(line, "GO", 2) == 0) break;
    if (std::sscanf(line, "PEER %31s %u %63s %u", r, &rank, host, &port) == 4) {
      peers.push_back({{std::string(r) == "expert" ? Role::kExpert : Role::kAttention, rank}, host,
                       static_cast<uint16_t>(port)});
    }
  }
  check(t->connect(peers, 30s));
  std::vector<NodeId> ids;
  for (auto& p : peers) ids.push_back(p.id);
  if (role == Role::kAttention) {
    attention_node(*t, ids, sizes, reps);
  } else {
    expert_node(*t, ids, sizes, reps);
  }
  std::printf("DONE\n");
  std::fflush(stdout);
  return 0;
}

// ----------------------------------------------------------------------------
// Coordinator

struct Child {
  pid_t pid = -1;
  FILE* in = nullptr;
  FILE* out = nullptr;
};

Child spawn_node(Role role, uint32_t rank, const std::string& sizes, int busy_poll_us, int reps) {
  int to[2], from[2];
  if (pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0) std::abort();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, to[0], 0);
  posix_spawn_file_actions_adddup2(&fa, from[1], 1);
  std::vector<std::string> args = {"/proc/self/exe", "--node", std::string(role_name(role)), std::to_string(rank), sizes,
                                   std::to_string(busy_poll_us), std::to_string(reps)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  Child c;
  if (posix_spawn(&c.pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ) != 0) std::abort();
  posix_spawn_file_actions_destroy(&fa);
  ::close(to[0]);
  ::close(from[1]);
  c.in = fdopen(to[1], "w");
  c.out = fdopen(from[0], "r");
  return c;
}

// Next line from a child, or "" at EOF. The children bound every wait they
// make, so a blocking read here cannot hang for long.
std::string read_line(Child& c) {
  char buf[512];
  if (!std::fgets(buf, sizeof(buf), c.out)) return "";
  std::string s(buf);
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

struct Row {
  double gbps = 0;      // aggregate over all pairs
  double rtt_p50 = 0;   // µs, dispatch + combine
  double rtt_p99 = 0;
};

// Collects the attention nodes' RESULT lines (ours and the MPI baseline's use
// one format, so both are aggregated the same way). Per (repetition, size) run
// k: the slowest attention node's throughput phase, and every attention node's
// p50 / p99.
struct Tally {
  std::map<uint32_t, size_t> bytes_of, iters_of;
  std::map<uint32_t, double> slowest;
  std::map<uint32_t, std::vector<double>> p50s, p99s;

  // False for anything that is not a RESULT line.
  bool add(const std::string& l) {
    std::istringstream in(l);
    std::string tag, kind;
    uint32_t k;
    size_t bytes;
    if (!(in >> tag >> kind >> k >> bytes) || tag != "RESULT") return false;
    bytes_of[k] = bytes;
    if (kind == "tput") {
      double secs;
      in >> iters_of[k] >> secs;
      slowest[k] = std::max(slowest[k], secs);
    } else if (kind == "lat") {
      double a, b;
      in >> a >> b;
      p50s[k].push_back(a);
      p99s[k].push_back(b);
    }
    return true;
  }

  // Per size the best repetition (highest throughput; lowest median round
  // trip, with that repetition's p99).
  std::map<size_t, Row> rows(uint32_t m, uint32_t n) {
    std::map<size_t, Row> rows;
    for (auto& [k, bytes] : bytes_of) {
      Row& r = rows[bytes];
      if (slowest[k] > 0) r.gbps = std::max(r.gbps, static_cast<double>(m) * n * iters_of[k] * bytes / slowest[k] / 1e9);
      auto& a = p50s[k];
      if (a.empty()) continue;
      std::sort(a.begin(), a.end());
      const double p50 = a[a.size() / 2];
      if (r.rtt_p50 == 0 || p50 < r.rtt_p50) {
        r.rtt_p50 = p50;
        r.rtt_p99 = *std::max_element(p99s[k].begin(), p99s[k].end());
      }
    }
    return rows;
  }
};

// Runs an m x n mesh over all sizes `reps` times; per size the best repetition
// (highest throughput; lowest median round trip, with that repetition's p99).
// Empty on failure.
std::map<size_t, Row> run_mesh(uint32_t m, uint32_t n, const std::string& sizes, int busy_poll_us, int reps) {
  std::vector<Child> kids;
  std::vector<NodeId> ids;
  for (uint32_t i = 0; i < m; ++i) ids.push_back({Role::kAttention, i});
  for (uint32_t i = 0; i < n; ++i) ids.push_back({Role::kExpert, i});
  for (NodeId id : ids) kids.push_back(spawn_node(id.role, id.rank, sizes, busy_poll_us, reps));
  std::vector<std::string> ports;
  bool ok = true;
  for (auto& k : kids) {
    std::string l = read_line(k);
    if (l.rfind("LISTENING ", 0) != 0) {
      std::fprintf(stderr, "node failed to start: %s\n", l.c_str());
      ok = false;
      break;
    }
    ports.push_back(l.substr(10));
  }
  for (size_t i = 0; ok && i < kids.size(); ++i) {
    for (size_t j = 0; j < kids.size(); ++j) {
      if (ids[i].role == ids[j].role) continue;
      std::fprintf(kids[i].in, "PEER %s %u 127.0.0.1 %s\n", std::string(role_name(ids[j].role)).c_str(), ids[j].rank,
                   ports[j].c_str());
    }
    std::fprintf(kids[i].in, "GO\n");
    std::fflush(kids[i].in);
  }
  Tally tally;
  for (uint32_t i = 0; ok && i < m; ++i) {
    for (std::string l = read_line(kids[i]); l != "DONE"; l = read_line(kids[i])) {
      if (l.empty() || l.rfind("ERROR", 0) == 0) {
        std::fprintf(stderr, "%s: %s\n", to_string(ids[i]).c_str(), l.empty() ? "died" : l.c_str());
        ok = false;
        break;
      }
      tally.add(l);
    }
  }
  for (auto& k : kids) {
    if (!ok) ::kill(k.pid, SIGKILL);
    waitpid(k.pid, nullptr, 0);
    std::fclose(k.in);
    std::fclose(k.out);
  }
  if (!ok) return {};
  return tally.rows(m, n);
}

uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool have_perftest() { return std::system("command -v ucx_perftest > /dev/null 2>&1") == 0; }

// One ucx_perftest run (server + client on 127.0.0.1); the client's CSV line:
// iterations, p50 lat, avg lat, overall lat (µs), avg bw, overall bw (MB/s = 2^20 B/s), ...
std::vector<double> perftest_once(const std::string& test, size_t bytes, size_t iters) {
  std::string env;
  for (auto& [k, v] : kUcxConfig) env += "UCX_" + k + "=" + v + " ";
  for (int attempt = 0; attempt < 3; ++attempt) {
    const std::string common = " -t " + test + " -s " + std::to_string(bytes) + " -n " + std::to_string(iters) +
                               " -w " + std::to_string(std::max<size_t>(iters / 4, 10)) + " -p " +
                               std::to_string(free_port()) + " -v";
    FILE* server = popen((env + "timeout 60 ucx_perftest" + common + " 2>/dev/null").c_str(), "r");
    std::this_thread::sleep_for(300ms);
    FILE* client = popen((env + "timeout 60 ucx_perftest 127.0.0.1" + common + " 2>/dev/null").c_str(), "r");
    std::vector<double> last;
    char buf[512];
    while (client && std::fgets(buf, sizeof(buf), client)) {
      std::vector<double> v;
      std::stringstream in(buf);
      for (std::string x; std::getline(in, x, ',');) {
        char* end = nullptr;
        double d = std::strtod(x.c_str(), &end);
        if (end == x.c_str()) break;
        v.push_back(d);
      }
      if (v.size() >= 6) last = v;
    }
    if (client) pclose(client);
    if (server) pclose(server);
    if (!last.empty()) return last;
  }
  return {};
}

// Best of `reps` runs: highest bandwidth (field 5) or lowest median latency (field 1).
std::vector<double> perftest(const std::string& test, size_t bytes, size_t iters, int reps) {
  std::vector<double> best;
  for (int r = 0; r < reps; ++r) {
    auto v = perftest_once(test, bytes, iters);
    if (v.empty()) continue;
    const bool better = best.empty() || (test == "ucp_am_bw" ? v[5] > best[5] : v[1] < best[1]);
    if (better) best = v;
  }
  return best;
}

// ----------------------------------------------------------------------------
// MPI_Alltoallv baseline

// How mpirun moves the bytes. "ucx" (the default) is the like-for-like choice:
// the same UCX library on the same tcp/lo (kUcxConfig) as our nodes, so shm is
// off for MPI too. OpenMPI 4.1 only picks pml ucx on IB/RoCE unless
// pml_ucx_tls/pml_ucx_devices say any; naming the pml makes mpirun abort
// instead of quietly falling back to ob1, so what ran is what the header says.
// "ob1" is OpenMPI's own TCP BTL on lo, for an OpenMPI built without UCX.
std::string mpi_transport_flags(const std::string& pml) {
  if (pml == "ob1") return "--mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo";
  std::string f = "--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any";
  for (auto& [k, v] : kUcxConfig) f += " -x UCX_" + k + "=" + v;
  return f;
}

// 4 ranks on 2 cores: without oversubscribe mpirun refuses, without bind-to
// none it pins ranks onto the same core, and without yield_when_idle its
// busy-polling ranks starve each other.
constexpr const char* kMpirunFlags =
    "--oversubscribe --allow-run-as-root --bind-to none --mca mpi_yield_when_idle 1";

std::string self_dir() {
  char buf[PATH_MAX];
  const ssize_t len = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (len <= 0) return ".";
  std::string p(buf, static_cast<size_t>(len));
  return p.substr(0, p.rfind('/'));
}

// The mpirun line, or "" with the reason in *why when the baseline cannot run.
std::string mpi_command(uint32_t m, uint32_t n, const std::string& sizes, int reps, const std::string& pml,
                        std::string* why) {
#ifndef TANDEM_HAVE_MPI_BASELINE
  (void)m, (void)n, (void)sizes, (void)reps, (void)pml;
  *why = "skipped: built without MPI (apt-get install libopenmpi-dev, then re-run cmake)";
  return "";
#else
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) {
    *why = "skipped: mpirun not found (apt-get install openmpi-bin)";
    return "";
  }
  const std::string exe = self_dir() + "/mpi_alltoallv_baseline";
  if (::access(exe.c_str(), X_OK) != 0) {
    *why = "skipped: " + exe + " not built";
    return "";
  }
  return "mpirun -np " + std::to_string(m + n) + " " + kMpirunFlags + " " + mpi_transport_flags(pml) + " " + exe +
         " " + std::to_string(m) + " " + std::to_string(n) + " " + sizes + " " + std::to_string(reps);
#endif
}

// Empty with the reason in *why when it failed.
std::map<size_t, Row> run_mpi(const std::string& cmd, uint32_t m, uint32_t n, std::string* why) {
  FILE* p = popen(("timeout 300 " + cmd + " 2>&1").c_str(), "r");
  if (!p) {
    *why = "failed: popen";
    return {};
  }
  Tally tally;
  bool done = false;
  std::vector<std::string> other;  // mpirun's complaints, for the failure message
  char buf[1024];
  while (std::fgets(buf, sizeof(buf), p)) {
    std::string l(buf);
    if (!l.empty() && l.back() == '\n') l.pop_back();
    if (l == "DONE") done = true;
    else if (!tally.add(l) && !l.empty()) other.push_back(l);
  }
  const int rc = pclose(p);
  if (!done) {
    *why = "failed (exit status " + std::to_string(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1) + ")";
    for (size_t i = other.size() > 8 ? other.size() - 8 : 0; i < other.size(); ++i) *why += "\n    " + other[i];
    return {};
  }
  return tally.rows(m, n);
}

int run_coordinator(int argc, char** argv) {
  std::string sizes = "1024,4096,16384,65536,262144,1048576,4194304";
  uint32_t m = 2, n = 2;
  int busy_poll_us = 0;
  int reps = 3;
  bool perf = true;
  bool mpi = true;
  std::string mpi_pml = "ucx";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--sizes" && i + 1 < argc) sizes = argv[++i];
    else if (a == "--mesh" && i + 1 < argc) std::sscanf(argv[++i], "%ux%u", &m, &n);
    else if (a == "--busy-poll-us" && i + 1 < argc) busy_poll_us = std::atoi(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--no-perftest") perf = false;
    else if (a == "--no-mpi") mpi = false;
    else if (a == "--mpi-pml" && i + 1 < argc) mpi_pml = argv[++i];
  }
  ::signal(SIGPIPE, SIG_IGN);
  std::string settings;
  for (auto& [k, v] : kUcxConfig) settings += (settings.empty() ? "UCX_" : ", UCX_") + k + "=" + v;
  std::printf("M2N transport over UCX (%s, peer failure handling on), one process per node, busy-poll %d us\n",
              settings.c_str(), busy_poll_us);
  std::printf("tput: one-way stream, %d sends in flight per pair, GB/s = 1e9 B/s summed over all pairs\n", kWindow);
  std::printf("rtt : dispatch of S bytes to every expert + combine of S bytes back from each (one MoE layer)\n");
  std::printf("best of %d repetitions, ours, ucx_perftest's and MPI_Alltoallv's alike\n", reps);
  std::printf("ratio = ours / theirs (above 1 is faster for GB/s, slower for us)\n");
  std::string mpi_why = "skipped: --no-mpi";
  const std::string mpi_cmd = mpi ? mpi_command(m, n, sizes, reps, mpi_pml, &mpi_why) : "";
  if (!mpi_cmd.empty()) {
    std::printf("MPI_Alltoallv (Open MPI, %s): the same %ux%u exchange, zero counts between non-peers; tput = "
                "%d MPI_Ialltoallv dispatches in flight then a 1-byte combine, rtt = blocking dispatch + combine\n  %s\n",
                mpi_pml == "ob1" ? "pml ob1, btl tcp on lo" : "pml ucx, same UCX settings as ours", m, n, kWindow,
                mpi_cmd.c_str());
  }
  std::printf("\n");
  std::fflush(stdout);
  auto one = run_mesh(1, 1, sizes, busy_poll_us, reps);
  auto mesh = run_mesh(m, n, sizes, busy_poll_us, reps);
  if (one.empty() || mesh.empty()) return 1;
  std::map<size_t, Row> mpi_rows;
  if (!mpi_cmd.empty()) mpi_rows = run_mpi(mpi_cmd, m, n, &mpi_why);
  if (mpi_rows.empty()) std::printf("MPI_Alltoallv baseline %s\n\n", mpi_why.c_str());
  const bool use_perftest = perf && have_perftest();
  if (perf && !use_perftest) std::printf("ucx_perftest not found: perftest columns skipped\n\n");

  const std::string mesh_name = std::to_string(m) + "x" + std::to_string(n);
  std::printf("%8s | %10s %10s %6s | %10s %10s %6s | %10s %10s %6s | %10s %10s %6s | %10s %10s\n", "size",
              "1x1 GB/s", "perftest", "ratio", "1x1 lat us", "perftest", "ratio", "agg GB/s", "MPI", "ratio",
              "rtt p50 us", "MPI", "ratio", "rtt p99 us", "MPI");
  std::printf("%8s | %10s %10s %6s | %10s %10s %6s | %10s %10s %6s | %10s %10s %6s | %10s %10s\n", "", "", "am_bw",
              "", "(rtt/2)", "am_lat", "", mesh_name.c_str(), "alltoallv", "", mesh_name.c_str(), "alltoallv", "",
              mesh_name.c_str(), "alltoallv");
  for (size_t bytes : parse_sizes(sizes)) {
    const Row& a = one[bytes];
    const Row& b = mesh[bytes];
    std::string mpi_bw = "-", mpi_r_bw = "-", mpi_p50 = "-", mpi_r_lat = "-", mpi_p99 = "-";
    if (auto it = mpi_rows.find(bytes); it != mpi_rows.end()) {
      const Row& c = it->second;
      char tmp[64];
      std::snprintf(tmp, sizeof(tmp), "%.3f", c.gbps), mpi_bw = tmp;
      std::snprintf(tmp, sizeof(tmp), "%.2f", b.gbps / c.gbps), mpi_r_bw = tmp;
      std::snprintf(tmp, sizeof(tmp), "%.1f", c.rtt_p50), mpi_p50 = tmp;
      std::snprintf(tmp, sizeof(tmp), "%.2f", b.rtt_p50 / c.rtt_p50), mpi_r_lat = tmp;
      std::snprintf(tmp, sizeof(tmp), "%.1f", c.rtt_p99), mpi_p99 = tmp;
    }
    const double lat = a.rtt_p50 / 2;
    std::string pt_bw = "-", pt_lat = "-", r_bw = "-", r_lat = "-";
    if (use_perftest) {
      auto bw = perftest("ucp_am_bw", bytes, throughput_iters(bytes), reps);
      auto lt = perftest("ucp_am_lat", bytes, latency_iters(bytes), reps);
      char tmp[64];
      if (!bw.empty()) {
        const double g = bw[5] * 1048576 / 1e9;
        std::snprintf(tmp, sizeof(tmp), "%.3f", g), pt_bw = tmp;
        std::snprintf(tmp, sizeof(tmp), "%.2f", a.gbps / g), r_bw = tmp;
      }
      if (!lt.empty()) {
        std::snprintf(tmp, sizeof(tmp), "%.1f", lt[1]), pt_lat = tmp;
        std::snprintf(tmp, sizeof(tmp), "%.2f", lat / lt[1]), r_lat = tmp;
      }
    }
    std::printf("%8s | %10.3f %10s %6s | %10.1f %10s %6s | %10.3f %10s %6s | %10.1f %10s %6s | %10.1f %10s\n",
                human(bytes).c_str(), a.gbps, pt_bw.c_str(), r_bw.c_str(), lat, pt_lat.c_str(), r_lat.c_str(), b.gbps,
                mpi_bw.c_str(), mpi_r_bw.c_str(), b.rtt_p50, mpi_p50.c_str(), mpi_r_lat.c_str(), b.rtt_p99,
                mpi_p99.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--node") return run_node(argc, argv);
  return run_coordinator(argc, argv);
}
