// UCX between separate processes: this binary re-run in peer mode (peer_main.cpp).
#include <gtest/gtest.h>
#include <signal.h>

#include <future>
#include <thread>

#include "peer_process.h"
#include "transport_test_util.h"

namespace tandem::transport {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

void run_mesh(uint32_t m, uint32_t n) {
  std::vector<NodeId> ids;
  for (uint32_t i = 0; i < m; ++i) ids.push_back(attention_node(i));
  for (uint32_t i = 0; i < n; ++i) ids.push_back(expert_node(i));
  auto procs = spawn_mesh(ids, {"mesh", "6", "2", "1,4096,65537,1048576,4194304"}, 20s);
  ASSERT_TRUE(procs.is_ok()) << procs.status().to_string();
  for (auto& p : *procs) {
    auto done = p.expect("DONE", 30s);
    EXPECT_TRUE(done.is_ok()) << done.status().to_string();
  }
  for (auto& p : *procs) {
    auto rc = p.wait(10s);
    ASSERT_TRUE(rc.is_ok()) << rc.status().to_string();
    EXPECT_EQ(*rc, 0);
  }
}

TEST(UcxProcesses, MeshTwoByTwo) { run_mesh(2, 2); }
TEST(UcxProcesses, MeshTwoByThree) { run_mesh(2, 3); }

// This process is one node; a child process is its peer and says SENT once
// its message is out.
struct OneChild {
  std::unique_ptr<Transport> self;
  std::optional<PeerProcess> child;
  NodeId child_id;

  Status start(NodeId me, NodeId other, size_t child_message_bytes) {
    child_id = other;
    TANDEM_ASSIGN_OR_RETURN(self, create_ucx_transport(loopback_options(me)));
    TANDEM_ASSIGN_OR_RETURN(PeerProcess p, PeerProcess::spawn({std::string(role_name(other.role)),
                                                               std::to_string(other.rank), "hold", "1", "1",
                                                               std::to_string(child_message_bytes)}));
    child.emplace(std::move(p));
    TANDEM_ASSIGN_OR_RETURN(std::string port, child->expect("LISTENING ", 10s));
    TANDEM_RETURN_IF_ERROR(child->write_line("PEER " + std::string(role_name(me.role)) + " " +
                                             std::to_string(me.rank) + " 127.0.0.1 " +
                                             std::to_string(self->address().port)));
    TANDEM_RETURN_IF_ERROR(child->write_line("GO"));
    std::vector<PeerAddress> peers = {{other, "127.0.0.1", static_cast<uint16_t>(std::stoul(port))}};
    TANDEM_RETURN_IF_ERROR(self->connect(peers, 10s));
    return child->expect("SENT", 10s).status();
  }
};

TEST(UcxProcesses, KilledPeerFailsWaitingReceiveAndLaterSendsWithinFiveSeconds) {
  OneChild c;
  Status st = c.start(expert_node(0), attention_node(0), 3000);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  Transport& e = *c.self;
  ASSERT_TRUE(recv_pattern(e, c.child_id, MessageKind::kDispatch, 0, 0, 3000, 5s).is_ok());
  auto waiting = std::async(std::launch::async,
                            [&] { return e.recv(TagFilter::exact(1, 0, c.child_id), 30s).status(); });
  std::this_thread::sleep_for(100ms);
  const auto t0 = Clock::now();
  c.child->signal(SIGKILL);
  st = waiting.get();
  const auto took = Clock::now() - t0;
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
  EXPECT_LT(took, 5s);
  std::vector<Buffer> keep;
  EXPECT_EQ(send_pattern(e, c.child_id, MessageKind::kCombine, 0, 0, 10, keep).status().code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(e.recv(TagFilter::any(), 5s).status().code(), StatusCode::kUnavailable);
  std::printf("SIGKILL detected after %.1f ms\n", std::chrono::duration<double, std::milli>(took).count());
}

TEST(UcxProcesses, KilledPeerFailsAPendingSendWithinFiveSeconds) {
  OneChild c;
  Status st = c.start(attention_node(0), expert_node(0), 10);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  Transport& a = *c.self;
  // A stopped receiver never fetches a rendezvous payload, so the send stays pending.
  c.child->signal(SIGSTOP);
  std::vector<Buffer> keep;
  auto h = send_pattern(a, c.child_id, MessageKind::kDispatch, 1, 0, 4 << 20, keep);
  ASSERT_TRUE(h.is_ok()) << h.status().to_string();
  EXPECT_EQ(h->wait(300ms).code(), StatusCode::kDeadlineExceeded);
  const auto t0 = Clock::now();
  c.child->signal(SIGKILL);
  st = h->wait(10s);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
  EXPECT_LT(Clock::now() - t0, 5s);
}

}  // namespace
}  // namespace tandem::transport
