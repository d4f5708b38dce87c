// HealthProbe (the router's monitor of expert nodes) tells a slow server from
// a refusing or NOT_SERVING one: the first is tolerated a few times, the
// others mean the node is down.
#include "tandem/api/health.h"

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::api {
namespace {

// A TCP port that accepts connections (the kernel completes the handshake) but
// never speaks: a server too busy to answer.
struct SilentListener {
  int fd = -1, port = 0;
  SilentListener() {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    listen(fd, 8);
    socklen_t n = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
    port = ntohs(a.sin_port);
  }
  ~SilentListener() { close(fd); }
};

TEST(HealthProbe, ServingSilentRefusedAndNotServingAreTold) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder b;
  tandem::v1::Generation::Service unimplemented;  // the health service needs a service beside it
  b.RegisterService(&unimplemented);
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  auto server = b.BuildAndStart();
  ASSERT_TRUE(server && port > 0);
  HealthProbe probe("127.0.0.1:" + std::to_string(port));
  EXPECT_TRUE(probe.check(std::chrono::seconds(5)).is_ok());
  server->GetHealthCheckService()->SetServingStatus(false);
  const Status not_serving = probe.check(std::chrono::seconds(5));
  EXPECT_EQ(not_serving.code(), StatusCode::kUnavailable) << not_serving.to_string();
  EXPECT_NE(not_serving.message().find("NOT_SERVING"), std::string::npos);
  server->Shutdown();

  SilentListener silent;
  HealthProbe slow("127.0.0.1:" + std::to_string(silent.port));
  const Status s = slow.check(std::chrono::milliseconds(300));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.to_string();

  int closed = 0;
  {
    SilentListener gone;  // a port that was listening a moment ago and now refuses
    closed = gone.port;
  }
  HealthProbe refused("127.0.0.1:" + std::to_string(closed));
  const Status r = refused.check(std::chrono::seconds(2));
  EXPECT_EQ(r.code(), StatusCode::kUnavailable) << r.to_string();
}

}  // namespace
}  // namespace tandem::api
