// The UCX transport with shared memory on (what `transport.shared_memory: true`
// gives cluster nodes): the same exchange, failure and reconnect behaviour as
// over tcp.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "tandem/transport/ucx_transport.h"
#include "transport_test_util.h"

namespace tandem::transport {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

std::unique_ptr<Transport> make_shm(NodeId id) {
  auto t = create_ucx_transport(ucx_node_options(id, "127.0.0.1", /*shared_memory=*/true));
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  return t.is_ok() ? std::move(*t) : nullptr;
}

TEST(UcxSharedMemory, NodeOptionsNameTheTransports) {
  const UcxOptions o = ucx_node_options(expert_node(0), "127.0.0.1", true);
  if (std::getenv("UCX_TLS")) GTEST_SKIP() << "UCX_TLS is set in the environment and takes precedence";
  bool tls = false, mm = false;
  for (const auto& [k, v] : o.ucx_config) {
    if (k == "TLS") tls = v.find("sysv") != std::string::npos && v.find("tcp") != std::string::npos;
    if (k == "MM_ERROR_HANDLING") mm = v == "y";
  }
  EXPECT_TRUE(tls && mm);
  for (const auto& [k, v] : ucx_node_options(expert_node(0), "10.1.2.3", false).ucx_config) {
    EXPECT_NE(k, "NET_DEVICES") << "a routable host must not be pinned to lo";
    EXPECT_NE(k, "MM_ERROR_HANDLING");
  }
}

TEST(UcxSharedMemory, MeshTwoByThreeExchangesEverySize) {
  std::vector<std::unique_ptr<Transport>> attention, experts;
  for (uint32_t i = 0; i < 2; ++i) attention.push_back(make_shm(attention_node(i)));
  for (uint32_t j = 0; j < 3; ++j) experts.push_back(make_shm(expert_node(j)));
  std::vector<Transport*> all;
  std::vector<NodeId> a_ids, e_ids;
  for (auto& t : attention) {
    ASSERT_TRUE(t);
    all.push_back(t.get());
    a_ids.push_back(t->self());
  }
  for (auto& t : experts) {
    ASSERT_TRUE(t);
    all.push_back(t.get());
    e_ids.push_back(t->self());
  }
  ASSERT_TRUE(connect_all(all, 10s).is_ok());
  Exchange x;
  x.sizes = {1, 4096, 65536, 1 << 20, 3 << 20};
  std::vector<std::future<Status>> runs;
  for (auto& a : attention)
    runs.push_back(std::async(std::launch::async, [&, t = a.get()] { return run_attention(*t, e_ids, x); }));
  for (auto& e : experts)
    runs.push_back(std::async(std::launch::async, [&, t = e.get()] { return run_expert(*t, a_ids, x); }));
  for (auto& r : runs) {
    Status st = r.get();
    EXPECT_TRUE(st.is_ok()) << st.to_string();
  }
}

TEST(UcxSharedMemory, LostPeerIsUnavailableAndARestartIsTakenBack) {
  auto a = make_shm(attention_node(0));
  auto e = make_shm(expert_node(0));
  ASSERT_TRUE(a && e);
  ASSERT_TRUE(a->expect(std::vector<NodeId>{expert_node(0)}).is_ok());
  ASSERT_TRUE(e->expect(std::vector<NodeId>{attention_node(0)}).is_ok());
  ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
  std::vector<Buffer> keep;
  ASSERT_TRUE(send_pattern(*a, e->self(), MessageKind::kDispatch, 0, 0, 5000, keep).is_ok());
  ASSERT_TRUE(recv_pattern(*e, a->self(), MessageKind::kDispatch, 0, 0, 5000, 5s).is_ok());

  auto waiting = std::async(std::launch::async,
                            [&] { return a->recv(TagFilter::exact(0, 0, expert_node(0)), 20s).status(); });
  std::this_thread::sleep_for(100ms);
  const auto t0 = Clock::now();
  e.reset();
  EXPECT_EQ(waiting.get().code(), StatusCode::kUnavailable);
  EXPECT_LT(Clock::now() - t0, 5s);

  e = make_shm(expert_node(0));
  ASSERT_TRUE(e);
  ASSERT_TRUE(e->expect(std::vector<NodeId>{attention_node(0)}).is_ok());
  ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
  ASSERT_TRUE(send_pattern(*a, e->self(), MessageKind::kDispatch, 1, 0, 200000, keep).is_ok());
  EXPECT_TRUE(recv_pattern(*e, a->self(), MessageKind::kDispatch, 1, 0, 200000, 5s).is_ok());
}

}  // namespace
}  // namespace tandem::transport
