// The CUDA IPC M2N channel (tandem/transport/cuda_ipc.h).
//
// CudaIpcHandle.*: the handle blob and the checks open() makes before any CUDA
// call; they need no device and run everywhere.
//
// CudaIpc.*: need a GPU. The two-process test re-executes this binary as the
// sending peer (fork + exec, not a bare fork: the test process has usually
// initialised CUDA already, and CUDA does not survive fork) with
// --gtest_filter on DISABLED_CudaIpcPeer.Sender and the pipe descriptors in
// TANDEM_CUDA_IPC_PEER_FDS; that test does nothing when run on its own.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tandem/transport/cuda_ipc.h"

extern char** environ;

namespace tandem::transport {
namespace {

using kernels::cuda::testing::CudaTest;
using namespace std::chrono_literals;

constexpr const char* kPeerEnv = "TANDEM_CUDA_IPC_PEER_FDS";
constexpr size_t kSlots = 4;
constexpr size_t kSlotBytes = size_t{8} << 20;

// ---- messages both processes derive from the same script ------------------------

struct Message {
  size_t slot;
  uint64_t seq;
  size_t bytes;
  size_t src_offset;  // a misaligned source exercises the byte path
};

// Phases are sent back to back; the receiver reads a whole phase before the
// next starts, so slots are reused only after they were read.
const std::vector<std::vector<Message>>& script() {
  static const std::vector<std::vector<Message>> phases = {
      {{0, 1, 4096, 0}, {1, 1, 65536 + 13, 0}, {2, 1, size_t{1} << 20, 0}, {3, 1, kSlotBytes, 0}},
      {{0, 2, kSlotBytes, 0}, {3, 2, 12345, 0}, {2, 2, 100003, 1}},
      {{0, 3, 777, 0}, {1, 5, 16384, 0}},  // seq may jump; a smaller message in a used slot
  };
  return phases;
}

std::vector<uint8_t> message_bytes(const Message& m) {
  std::mt19937_64 gen(m.slot * 1000003u + m.seq * 7919u + m.bytes);
  std::vector<uint8_t> v(m.bytes);
  for (size_t i = 0; i < v.size(); i += 8) {
    const uint64_t r = gen();
    std::memcpy(v.data() + i, &r, std::min<size_t>(8, v.size() - i));
  }
  return v;
}

// ---- pipes ----------------------------------------------------------------------

// Repeats `op` (a read or a write of up to n bytes at c) until all n bytes are
// through; false on end of file or an error.
template <typename Byte, typename Op>
bool all_bytes(Byte* c, size_t n, Op op) {
  while (n > 0) {
    const ssize_t k = op(c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool write_all(int fd, const void* p, size_t n) {
  return all_bytes(static_cast<const char*>(p), n, [fd](const char* c, size_t m) { return ::write(fd, c, m); });
}

bool read_all(int fd, void* p, size_t n) {
  return all_bytes(static_cast<char*>(p), n, [fd](char* c, size_t m) { return ::read(fd, c, m); });
}

bool write_string(int fd, const std::string& s) {
  const uint32_t n = static_cast<uint32_t>(s.size());
  return write_all(fd, &n, sizeof n) && write_all(fd, s.data(), s.size());
}

bool read_string(int fd, std::string& s) {
  uint32_t n = 0;
  if (!read_all(fd, &n, sizeof n) || n > (1u << 20)) return false;
  s.resize(n);
  return read_all(fd, s.data(), n);
}

// The peer process: runs DISABLED_CudaIpcPeer.Sender of this binary with the
// two pipe ends it uses. Returns its pid, or -1 with the reason in `why`.
pid_t spawn_peer(int read_fd, int write_fd, std::string& why) {
  std::string env_entry = std::string(kPeerEnv) + "=" + std::to_string(read_fd) + "," + std::to_string(write_fd);
  std::vector<std::string> env_strings{env_entry};
  for (char** e = environ; *e; ++e) {
    // Not our variable again, and no GTEST_OUTPUT: the peer must not overwrite our report.
    if (std::strncmp(*e, kPeerEnv, std::strlen(kPeerEnv)) == 0 || std::strncmp(*e, "GTEST_OUTPUT=", 13) == 0) continue;
    env_strings.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string arg0 = "tandem_unit_cuda_tests(peer)";
  std::string filter = "--gtest_filter=DISABLED_CudaIpcPeer.Sender";
  std::string also = "--gtest_also_run_disabled_tests";
  char* argv[] = {arg0.data(), filter.data(), also.data(), nullptr};
  // Everything allocated above: between fork and exec only async-signal-safe calls.
  const pid_t pid = fork();
  if (pid < 0) {
    why = std::string("fork: ") + std::strerror(errno);
    return -1;
  }
  if (pid == 0) {
    execve("/proc/self/exe", argv, envp.data());
    _exit(127);
  }
  return pid;
}

// Waits for the peer; its exit status, or -1 if it was killed.
int reap(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool boot_id_readable() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  return f && std::getline(f, id) && !id.empty();
}

CudaIpcHandleInfo sample_info() {
  CudaIpcHandleInfo info;
  info.slots = 8;
  info.slot_bytes = 1000;
  info.slot_stride = 1024;
  info.pid = 4242;
  for (size_t i = 0; i < info.device_uuid.size(); ++i) info.device_uuid[i] = static_cast<uint8_t>(0xa0 + i);
  info.pci_bus_id = "0000:3B:00.0";
  info.hostname = "host-a";
  info.boot_id = "0f4c6b9e-1111-2222-3333-444455556666";
  for (size_t i = 0; i < info.data_handle.size(); ++i) {
    info.data_handle[i] = static_cast<uint8_t>(i);
    info.flags_handle[i] = static_cast<uint8_t>(255 - i);
  }
  return info;
}

// A blob this host would accept from another process (hostname and boot id of
// this host, a pid that is not ours).
CudaIpcHandleInfo local_peer_info() {
  CudaIpcHandleInfo info = sample_info();
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  info.hostname = host;
  info.boot_id.clear();  // unknown: not compared
  info.pid = static_cast<int64_t>(getpid()) + 1;
  return info;
}

// ---- no device needed -------------------------------------------------------------

TEST(CudaIpcHandle, RoundTrips) {
  const CudaIpcHandleInfo info = sample_info();
  const std::string blob = serialize_cuda_ipc_handle(info);
  Result<CudaIpcHandleInfo> back = parse_cuda_ipc_handle(blob);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  // Every field survives: the decoded info encodes to the same bytes.
  EXPECT_EQ(serialize_cuda_ipc_handle(*back), blob);
  EXPECT_EQ(back->slot_stride, 1024u);
  EXPECT_EQ(back->hostname, "host-a");
  EXPECT_EQ(back->pci_bus_id, "0000:3B:00.0");
  EXPECT_EQ(back->flags_handle, info.flags_handle);
}

TEST(CudaIpcHandle, RefusesTruncatedAndOverlongBlobs) {
  const std::string blob = serialize_cuda_ipc_handle(sample_info());
  for (size_t n = 0; n < blob.size(); ++n) {
    Result<CudaIpcHandleInfo> r = parse_cuda_ipc_handle(blob.substr(0, n));
    ASSERT_FALSE(r.is_ok()) << n << " bytes";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << n << " bytes";
    if (n >= 16) {
      EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().message();
    }
  }
  Result<CudaIpcHandleInfo> r = parse_cuda_ipc_handle(blob + "x");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("wrong length"), std::string::npos) << r.status().message();
}

TEST(CudaIpcHandle, RefusesWrongMagicVersionAndFields) {
  const std::string good = serialize_cuda_ipc_handle(sample_info());
  auto expect_invalid = [](const std::string& blob, const std::string& needle) {
    Result<CudaIpcHandleInfo> r = parse_cuda_ipc_handle(blob);
    ASSERT_FALSE(r.is_ok()) << needle;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  std::string b = good;
  b[0] = 'X';
  expect_invalid(b, "wrong magic");
  b = good;
  b[8] = 2;  // version field
  expect_invalid(b, "version 2");
  expect_invalid(std::string(good.size(), '\0'), "wrong magic");

  CudaIpcHandleInfo info = sample_info();
  info.slots = 0;
  expect_invalid(serialize_cuda_ipc_handle(info), "must be positive");
  info = sample_info();
  info.slot_stride = 512;  // < slot_bytes
  expect_invalid(serialize_cuda_ipc_handle(info), "slot stride");
  info = sample_info();
  info.slot_stride = 1000;  // not a multiple of 256
  expect_invalid(serialize_cuda_ipc_handle(info), "slot stride");
  info = sample_info();
  info.slots = uint64_t{1} << 60;
  expect_invalid(serialize_cuda_ipc_handle(info), "overflow");
  info = sample_info();
  info.pid = 0;
  expect_invalid(serialize_cuda_ipc_handle(info), "pid");

  // A hostname field without its NUL (the serialiser always writes one).
  b = good;
  const size_t host_field = 8 + 4 + 4 + 32 + 16 + 32;
  std::memset(b.data() + host_field, 'h', 256);
  expect_invalid(b, "hostname field");
}

TEST(CudaIpcHandle, RandomBytesNeverParse) {
  std::mt19937 gen(7);
  const std::string good = serialize_cuda_ipc_handle(sample_info());
  for (int i = 0; i < 200; ++i) {
    std::string b(gen() % (good.size() + 64), '\0');
    for (char& c : b) c = static_cast<char>(gen());
    EXPECT_FALSE(parse_cuda_ipc_handle(b).is_ok());
  }
}

// These refusals come before any CUDA call, so they hold without a GPU.
TEST(CudaIpcHandle, OpenRefusesOtherHostsOwnProcessAndGarbage) {
  CudaIpcHandleInfo info = local_peer_info();
  info.hostname = "some-other-host";
  Result<std::unique_ptr<CudaIpcSender>> s = CudaIpcSender::open(serialize_cuda_ipc_handle(info));
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("some-other-host"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("one host only"), std::string::npos) << s.status().message();

  info = local_peer_info();
  info.boot_id = "not-this-boot";
  s = CudaIpcSender::open(serialize_cuda_ipc_handle(info));
  if (boot_id_readable()) {
    ASSERT_FALSE(s.is_ok());
    EXPECT_EQ(s.status().code(), StatusCode::kUnavailable) << s.status().to_string();
  }

  info = local_peer_info();
  info.pid = getpid();
  s = CudaIpcSender::open(serialize_cuda_ipc_handle(info));
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("exported by this process"), std::string::npos) << s.status().message();

  s = CudaIpcSender::open("definitely not a handle");
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
}

// ---- GPU ------------------------------------------------------------------------

using CudaIpc = CudaTest;

TEST_F(CudaIpc, ReceiverArgumentsAndLayout) {
  Result<std::unique_ptr<CudaIpcReceiver>> bad = CudaIpcReceiver::create(0, 4096);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);

  Result<std::unique_ptr<CudaIpcReceiver>> r = CudaIpcReceiver::create(3, 1000);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  CudaIpcReceiver& rx = **r;
  EXPECT_EQ(rx.slots(), 3u);
  EXPECT_EQ(rx.slot_bytes(), 1000u);
  EXPECT_EQ(rx.slot(3), nullptr);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(rx.slot(i)) % 256, 0u);
    Result<uint64_t> v = rx.poll(i);
    ASSERT_TRUE(v.is_ok()) << v.status().to_string();
    EXPECT_EQ(*v, 0u);
  }
  Result<CudaIpcHandleInfo> info = parse_cuda_ipc_handle(rx.export_handle());
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_EQ(info->slots, 3u);
  EXPECT_EQ(info->slot_stride, 1024u);
  EXPECT_EQ(info->pid, static_cast<int64_t>(getpid()));
  EXPECT_FALSE(info->pci_bus_id.empty());
  EXPECT_EQ(rx.wait(3, 1, nullptr, 1ms).code(), StatusCode::kInvalidArgument);

  // This process's own blob is refused with a reason, not a CUDA error.
  Result<std::unique_ptr<CudaIpcSender>> self = CudaIpcSender::open(rx.export_handle());
  ASSERT_FALSE(self.is_ok());
  EXPECT_EQ(self.status().code(), StatusCode::kFailedPrecondition) << self.status().to_string();
}

TEST_F(CudaIpc, UnsatisfiedWaitTimesOut) {
  Result<std::unique_ptr<CudaIpcReceiver>> r = CudaIpcReceiver::create(2, 4096);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  CudaIpcReceiver& rx = **r;
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  const auto t0 = std::chrono::steady_clock::now();
  TANDEM_ASSERT_OK(rx.wait(1, 7, s, 20ms));
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, 15ms);
  EXPECT_LT(waited, 10s);
  Status st = rx.check();
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded) << st.to_string();
  EXPECT_NE(st.message().find("slot 1"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("seq 7"), std::string::npos) << st.message();
  // Reported once, then cleared; a wait for seq 0 is satisfied at once.
  TANDEM_ASSERT_OK(rx.check());
  TANDEM_ASSERT_OK(rx.wait(0, 0, s, 1ms));
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  TANDEM_ASSERT_OK(rx.check());
  cudaStreamDestroy(s);
}

TEST_F(CudaIpc, OpenRefusesAnInvisibleDevice) {
  CudaIpcHandleInfo info = local_peer_info();
  info.device_uuid.fill(0xee);
  Result<std::unique_ptr<CudaIpcSender>> s = CudaIpcSender::open(serialize_cuda_ipc_handle(info));
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition) << s.status().to_string();
  EXPECT_NE(s.status().message().find("not among"), std::string::npos) << s.status().message();
}

// The receiver here, the sender in a second process: random messages of 4 KiB
// to 8 MiB, back to back over all slots, then slot reuse with larger seqs.
TEST_F(CudaIpc, TwoProcessesDeliverByteExact) {
  signal(SIGPIPE, SIG_IGN);  // a dead peer shows as a failed write, not a dead test
  int to_peer[2], from_peer[2];
  ASSERT_EQ(pipe(to_peer), 0);
  ASSERT_EQ(pipe(from_peer), 0);
  // Our ends must not leak into the peer, or it never sees EOF when we stop.
  ASSERT_EQ(fcntl(to_peer[1], F_SETFD, FD_CLOEXEC), 0);
  ASSERT_EQ(fcntl(from_peer[0], F_SETFD, FD_CLOEXEC), 0);
  Result<std::unique_ptr<CudaIpcReceiver>> r = CudaIpcReceiver::create(kSlots, kSlotBytes);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  CudaIpcReceiver& rx = **r;

  std::string why;
  const pid_t pid = spawn_peer(to_peer[0], from_peer[1], why);
  close(to_peer[0]);
  close(from_peer[1]);
  ASSERT_GT(pid, 0) << why;
  struct Cleanup {
    int w, r;
    pid_t pid;
    ~Cleanup() {
      if (w >= 0) close(w);  // the peer sees EOF and exits
      close(r);
      if (pid > 0) reap(pid);
    }
  } cleanup{to_peer[1], from_peer[0], pid};

  ASSERT_TRUE(write_string(to_peer[1], rx.export_handle()));
  std::string hello;
  ASSERT_TRUE(read_string(from_peer[0], hello)) << "peer process died before opening the handle";
  ASSERT_EQ(hello, "opened") << "peer could not open the handle: " << hello;

  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  int phase_no = 0;
  for (const std::vector<Message>& phase : script()) {
    // Waits first, so they spin while the peer sends.
    for (const Message& m : phase) TANDEM_ASSERT_OK(rx.wait(m.slot, m.seq, s, 10s));
    const uint8_t go = static_cast<uint8_t>(phase_no);
    ASSERT_TRUE(write_all(to_peer[1], &go, 1));
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    TANDEM_ASSERT_OK(rx.check());
    std::string sent;
    ASSERT_TRUE(read_string(from_peer[0], sent)) << "peer process died in phase " << phase_no;
    ASSERT_EQ(sent, "sent") << "peer failed in phase " << phase_no << ": " << sent;
    for (const Message& m : phase) {
      Result<uint64_t> flag = rx.poll(m.slot);
      ASSERT_TRUE(flag.is_ok()) << flag.status().to_string();
      EXPECT_EQ(*flag, m.seq) << "slot " << m.slot;
      std::vector<uint8_t> got(m.bytes);
      ASSERT_EQ(cudaMemcpy(got.data(), rx.slot(m.slot), m.bytes, cudaMemcpyDeviceToHost), cudaSuccess);
      const std::vector<uint8_t> want = message_bytes(m);
      size_t first_bad = m.bytes;
      for (size_t i = 0; i < m.bytes && first_bad == m.bytes; ++i) {
        if (got[i] != want[i]) first_bad = i;
      }
      EXPECT_EQ(first_bad, m.bytes) << "phase " << phase_no << " slot " << m.slot << " seq " << m.seq << ": "
                                    << m.bytes << " bytes differ from byte " << first_bad;
    }
    ++phase_no;
  }
  cudaStreamDestroy(s);
  const uint8_t done = 0xff;
  ASSERT_TRUE(write_all(to_peer[1], &done, 1));
  std::string bye;
  ASSERT_TRUE(read_string(from_peer[0], bye));
  EXPECT_EQ(bye, "bye") << bye;
  close(cleanup.w);
  cleanup.w = -1;
  cleanup.pid = -1;
  EXPECT_EQ(reap(pid), 0) << "the peer process failed (its output is above)";
}

// The sending side of TwoProcessesDeliverByteExact; a no-op unless spawned.
TEST(DISABLED_CudaIpcPeer, Sender) {
  const char* fds = std::getenv(kPeerEnv);
  if (!fds) GTEST_SKIP() << "runs only as the peer process of CudaIpc.TwoProcessesDeliverByteExact";
  int in = -1, out = -1;
  ASSERT_EQ(std::sscanf(fds, "%d,%d", &in, &out), 2);
  std::string blob;
  ASSERT_TRUE(read_string(in, blob));
  Result<std::unique_ptr<CudaIpcSender>> opened = CudaIpcSender::open(blob);
  if (!opened.is_ok()) {
    write_string(out, opened.status().to_string());
    FAIL() << opened.status().to_string();
  }
  ASSERT_TRUE(write_string(out, "opened"));
  CudaIpcSender& tx = **opened;

  // Argument checks, before anything is sent.
  EXPECT_EQ(tx.send(0, nullptr, kSlotBytes + 1, 1, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tx.send(kSlots, nullptr, 0, 1, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tx.send(0, nullptr, 0, 0, nullptr).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tx.send(0, nullptr, 16, 1, nullptr).code(), StatusCode::kInvalidArgument);
  Status too_big = tx.send(1, nullptr, kSlotBytes + 1, 1, nullptr);
  EXPECT_NE(too_big.message().find("does not fit"), std::string::npos) << too_big.message();

  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  for (;;) {
    uint8_t phase_no = 0;
    if (!read_all(in, &phase_no, 1) || phase_no == 0xff) break;
    ASSERT_LT(phase_no, script().size());
    const std::vector<Message>& phase = script()[phase_no];
    std::vector<void*> sources;
    std::string result = "sent";
    for (size_t i = 0; i < phase.size(); ++i) {
      const Message& m = phase[i];
      const std::vector<uint8_t> bytes = message_bytes(m);
      void* src = nullptr;
      ASSERT_EQ(cudaMalloc(&src, m.bytes + m.src_offset), cudaSuccess);
      sources.push_back(src);
      char* from = static_cast<char*>(src) + m.src_offset;
      ASSERT_EQ(cudaMemcpy(from, bytes.data(), m.bytes, cudaMemcpyHostToDevice), cudaSuccess);
      // A pageable upload may return before its last chunk lands, and `s` is
      // non-blocking (it does not wait for the legacy stream).
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      // Every other message through the copy engine path.
      CudaIpcSender::Options options;
      options.copy_engine = i % 2 == 1;
      tx.set_options(options);
      Status st = tx.send(m.slot, from, m.bytes, m.seq, s);
      if (!st.is_ok()) result = st.to_string();
    }
    if (cudaError_t e = cudaStreamSynchronize(s); e != cudaSuccess) result = cudaGetErrorString(e);
    for (void* p : sources) cudaFree(p);
    ASSERT_TRUE(write_string(out, result));
    ASSERT_EQ(result, "sent");
  }
  cudaStreamDestroy(s);
  write_string(out, "bye");
}

}  // namespace
}  // namespace tandem::transport
