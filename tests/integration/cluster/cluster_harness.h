// Starts a real cluster (`tandem serve` and its child processes on loopback)
// for a test, talks to it over gRPC, and tears it down.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "tandem/api/health.h"
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/model/make_model.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::testing {

inline std::string tandem_bin() {
  const char* b = std::getenv("TANDEM_BIN");
  return b ? b : std::string(TANDEM_BINARY_DIR) + "/src/cli/tandem";
}

// A generated model shared by the tests of one process.
inline const std::string& cluster_model(const std::string& preset) {
  static std::map<std::string, std::string> dirs;
  auto& d = dirs[preset];
  // "hf-...": a checkpoint transformers wrote (tests/fixtures/hf, scripts/hf_parity.py).
  if (d.empty() && preset.rfind("hf-", 0) == 0) d = std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/hf/" + preset;
  if (d.empty()) {
    d = (std::filesystem::path(::testing::TempDir()) / ("tandem_cluster_" + preset + "_" + std::to_string(getpid())))
            .string();
    std::filesystem::remove_all(d);
    static struct Cleanup {
      std::vector<std::string> dirs;
      ~Cleanup() {
        std::error_code ec;
        for (const auto& x : dirs) std::filesystem::remove_all(x, ec);
      }
    } cleanup;
    cleanup.dirs.push_back(d);
    Status st = model::make_model({.preset = preset, .seed = 0, .out_dir = d, .dtype = DType::kF32});
    if (!st.is_ok()) throw std::runtime_error(st.to_string());
  }
  return d;
}

struct ClusterShape {
  int attention_nodes = 1;
  int expert_nodes = 1;
  int micro_batches = 1;
  int max_running_sequences = 64;
  int max_queue = 256;
  int kv_blocks = 512;
  std::string transport = "tcp";  // tcp | ucx | ucx-shm (ucx with shared memory) | cuda_ipc | nccl
  std::string attention_cpus{}, expert_cpus{};  // attention.cpus / expert.cpus when not empty
  std::string attention_device = "cpu", expert_device = "cpu";  // attention.device / expert.device
  std::string gpu_tuning{};  // extra `cluster:` keys for GPU nodes, e.g. "cuda_graphs: true, expert_gemm: device"
  bool http = false;         // router.http_listen on http_port()
  std::string attention_tuning{};  // extra `attention:` keys, e.g. "max_prompt_logprob_rows: 4"
  std::string router_tuning{};     // extra `router:` keys, e.g. "reasoning_parser: qwen3"
  bool tls = false;  // router.tls_* with tests/fixtures/tls (localhost, 127.0.0.1); the harness dials with it
  // router.drain_timeout_s: short by default, so that a test that leaves a
  // stream open does not hold its cluster's ports long after it ends.
  int drain_timeout_s = 5;
};

class Cluster {
 public:
  Cluster(const std::string& model_dir, const ClusterShape& s) {
    base_ = claim_ports();
    config_ = (std::filesystem::path(::testing::TempDir()) / ("cluster_" + std::to_string(base_) + ".yaml")).string();
    std::ofstream(config_) << "model: {path: " << model_dir << "}\n"
                           << "cluster: {attention_nodes: " << s.attention_nodes << ", expert_nodes: " << s.expert_nodes
                           << ", micro_batches: " << s.micro_batches
                           << (s.gpu_tuning.empty() ? "" : ", " + s.gpu_tuning) << "}\n"
                           << "router: {listen: 127.0.0.1:" << base_ << ", max_queue: " << s.max_queue
                           << (s.http ? ", http_listen: 127.0.0.1:" + std::to_string(base_ + 9) : "")
                           << ", drain_timeout_s: " << s.drain_timeout_s
                           << (s.router_tuning.empty() ? "" : ", " + s.router_tuning)
                           << (s.tls ? ", tls_cert_file: " + tls_dir() + "/server.crt, tls_key_file: " + tls_dir() +
                                           "/server.key"
                                     : "")
                           << "}\n"
                           << "attention: {base_port: " << base_ + 1 << ", kv_blocks: " << s.kv_blocks
                           << ", kv_block_size: 4, max_running_sequences: " << s.max_running_sequences
                           << (s.attention_cpus.empty() ? "" : ", cpus: '" + s.attention_cpus + "'")
                           << ", device: " << s.attention_device
                           << (s.attention_tuning.empty() ? "" : ", " + s.attention_tuning) << "}\n"
                           << "expert: {base_port: " << base_ + 5
                           << (s.expert_cpus.empty() ? "" : ", cpus: '" + s.expert_cpus + "'")
                           << ", device: " << s.expert_device << "}\n"
                           << "transport: {backend: " << (s.transport == "ucx-shm" ? "ucx" : s.transport)
                           << ", shared_memory: " << (s.transport == "ucx-shm" ? "true" : "false") << "}\n";
    pid_ = fork();
    if (pid_ == 0) {
      execl(tandem_bin().c_str(), tandem_bin().c_str(), "serve", "--config", config_.c_str(), nullptr);
      _exit(127);
    }
    // Ready as `tandem serve` says "cluster ready": every node answers its
    // health check, not only the router (which can serve before an expert
    // node has its data plane up, and a test that dials a node would race it).
    if (s.tls) {
      auto tls = api::client_tls(tls_dir() + "/server.crt");
      if (tls.is_ok()) tls_ = *tls;
      else ready_ = tls.status();
    }
    if (ready_.is_ok()) ready_ = api::wait_until_serving(router_address(), std::chrono::seconds(60), tls_);
    for (int i = 0; i < s.attention_nodes && ready_.is_ok(); ++i)
      ready_ = api::wait_until_serving(attention_address(i), std::chrono::seconds(60));
    for (int j = 0; j < s.expert_nodes && ready_.is_ok(); ++j)
      ready_ = api::wait_until_serving(expert_address(j), std::chrono::seconds(60));
    channel_ = api::open_channel(router_address(), tls_);
    stub_ = tandem::v1::Generation::NewStub(channel_);
  }
  ~Cluster() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st = 0;
      for (int i = 0; i < 300 && waitpid(pid_, &st, WNOHANG) == 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (waitpid(pid_, &st, WNOHANG) == 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &st, 0);
      }
    }
    std::error_code ec;
    std::filesystem::remove(config_, ec);
    if (!port_lock_.empty()) std::filesystem::remove(port_lock_, ec);
  }
  const Status& ready() const { return ready_; }
  static std::string tls_dir() { return std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/tls"; }
  std::string router_address() const { return "127.0.0.1:" + std::to_string(base_); }
  int http_port() const { return base_ + 9; }  // with ClusterShape::http
  std::string attention_address(int i) const { return "127.0.0.1:" + std::to_string(base_ + 1 + i); }
  std::string expert_address(int j) const { return "127.0.0.1:" + std::to_string(base_ + 5 + j); }
  tandem::v1::Generation::Stub& stub() { return *stub_; }
  pid_t serve_pid() const { return pid_; }
  // Waits up to `timeout` for `tandem serve` to exit (after a signal the test
  // sent); true, and the process reaped, if it did.
  bool wait_exit(std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    int st = 0;
    while (pid_ > 0 && std::chrono::steady_clock::now() < end) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return pid_ <= 0;
  }
  const std::string& config() const { return config_; }

  // The pid of a role's process (a child of serve), found by its command line.
  pid_t role_pid(const std::string& role, int rank) const {
    for (const auto& e : std::filesystem::directory_iterator("/proc")) {
      std::ifstream f(e.path() / "cmdline");
      std::string cmd((std::istreambuf_iterator<char>(f)), {});
      std::replace(cmd.begin(), cmd.end(), '\0', ' ');
      if (cmd.find(" " + role + " --config " + config_) != std::string::npos &&
          (rank < 0 || cmd.find("--rank " + std::to_string(rank)) != std::string::npos))
        return std::stoi(e.path().filename().string());
    }
    return -1;
  }

 private:
  // Ten ports from base_, below the kernel's ephemeral range (the cluster's
  // own outgoing connections and UCX listeners take ephemeral ports, and one
  // of those could otherwise hold the router's port before the router binds
  // it), claimed with a lock file so that concurrent test processes (ctest
  // -j) and clusters of one process never share them, nor the YAML named
  // after them: a random draw alone collided about once in twenty CI runs.
  int claim_ports() {
    int ephemeral_low = 32768;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> ephemeral_low;
    const int top = std::max(12000, std::min(ephemeral_low, 40000)) - 20;
    std::random_device rd;
    int base = 0;
    for (int attempt = 0; attempt < 500; ++attempt) {
      base = 10000 + static_cast<int>(rd() % static_cast<unsigned>((top - 10000) / 10)) * 10;
      const std::string lock = (std::filesystem::path(::testing::TempDir()) /
                                ("tandem_ports_" + std::to_string(base) + ".lock")).string();
      int fd = open(lock.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
      if (fd < 0) {
        // Taken, unless its owner died without cleaning up: then take it over.
        pid_t owner = 0;
        std::ifstream(lock) >> owner;
        if (owner <= 0 || kill(owner, 0) == 0 || errno != ESRCH) continue;
        std::error_code ec;
        std::filesystem::remove(lock, ec);
        fd = open(lock.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) continue;
      }
      const std::string me = std::to_string(getpid());
      // Unwritten, the owner reads as 0 and the lock is never taken over: harmless.
      [[maybe_unused]] const ssize_t written = write(fd, me.data(), me.size());
      close(fd);
      port_lock_ = lock;
      return base;
    }
    return base;  // every draw locked (500 tries): run unlocked rather than not at all
  }

  int base_ = 0;
  std::string port_lock_;
  std::string config_;
  pid_t pid_ = -1;
  Status ready_;
  api::ClientTls tls_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tandem::v1::Generation::Stub> stub_;
};

// An attention node's load and counters (its internal Load RPC).
inline tandem::internal::v1::LoadReply node_load(const Cluster& cluster, int rank) {
  auto stub = tandem::internal::v1::AttentionNode::NewStub(
      grpc::CreateChannel(cluster.attention_address(rank), grpc::InsecureChannelCredentials()));
  grpc::ClientContext c;
  tandem::internal::v1::LoadRequest rq;
  tandem::internal::v1::LoadReply rp;
  EXPECT_TRUE(stub->Load(&c, rq, &rp).ok());
  return rp;
}

// Runs `cmd` through the shell, stderr merged into stdout: its output, and
// its exit status in `rc`.
inline std::string shell(const std::string& cmd, int& rc) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return rc = -1, out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  rc = pclose(p);
  return out;
}

// A greedy request for `max_tokens` tokens of `text`.
inline tandem::v1::GenerateRequest greedy(const std::string& text, uint32_t max_tokens) {
  tandem::v1::GenerateRequest req;
  req.set_text(text);
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  return req;
}

// A greedy chat of one user message.
inline tandem::v1::ChatRequest greedy_chat(const std::string& user, uint32_t max_tokens) {
  tandem::v1::ChatRequest chat;
  auto* m = chat.add_messages();
  m->set_role("user");
  m->set_content(user);
  chat.mutable_sampling()->set_temperature(0);
  chat.mutable_sampling()->set_max_tokens(max_tokens);
  return chat;
}

// A whole streamed answer (Generate or Chat).
struct Reply {
  std::vector<int32_t> tokens;
  std::string text;
  std::string reasoning;                         // Chat with router.reasoning_parser
  std::vector<tandem::v1::ToolCall> tool_calls;  // Chat with tools
  std::vector<tandem::v1::ToolCall> streamed_calls;  // the same, joined from the messages' tool_call_deltas
  size_t argument_pieces = 0;                        // deltas after a call's first that carried arguments
  tandem::v1::FinishReason finish = tandem::v1::FINISH_REASON_UNSPECIFIED;
  uint32_t prompt_tokens = 0, completion_tokens = 0;
  grpc::Status status;
};

inline Reply read_reply(grpc::ClientReader<tandem::v1::GenerateResponse>& reader) {
  Reply r;
  tandem::v1::GenerateResponse m;
  while (reader.Read(&m)) {
    for (uint32_t t : m.token_ids()) r.tokens.push_back(static_cast<int32_t>(t));
    r.text += m.text();
    r.reasoning += m.reasoning_text();
    r.tool_calls.insert(r.tool_calls.end(), m.tool_calls().begin(), m.tool_calls().end());
    for (const auto& d : m.tool_call_deltas()) {
      if (d.index() == r.streamed_calls.size()) {
        r.streamed_calls.emplace_back().set_id(d.id());
        r.streamed_calls.back().set_name(d.name());
      }
      if (d.index() < r.streamed_calls.size()) *r.streamed_calls[d.index()].mutable_arguments() += d.arguments();
      if (d.name().empty() && !d.arguments().empty()) ++r.argument_pieces;
    }
    if (m.finish_reason() != tandem::v1::FINISH_REASON_UNSPECIFIED) {
      r.finish = m.finish_reason();
      r.prompt_tokens = m.usage().prompt_tokens();
      r.completion_tokens = m.usage().completion_tokens();
    }
  }
  r.status = reader.Finish();
  return r;
}

inline Reply generate(tandem::v1::Generation::Stub& stub, const tandem::v1::GenerateRequest& req,
                      std::chrono::seconds timeout = std::chrono::seconds(60), grpc::ClientContext* ctx_in = nullptr) {
  grpc::ClientContext local;
  grpc::ClientContext& ctx = ctx_in ? *ctx_in : local;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  return read_reply(*stub.Generate(&ctx, req));
}

inline Reply chat(tandem::v1::Generation::Stub& stub, const tandem::v1::ChatRequest& req,
                  std::chrono::seconds timeout = std::chrono::seconds(60)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  return read_reply(*stub.Chat(&ctx, req));
}

}  // namespace tandem::testing
