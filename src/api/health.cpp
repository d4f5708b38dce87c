#include "tandem/api/health.h"

#include <grpcpp/grpcpp.h>

#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"

namespace tandem::api {

Status check_health(const std::string& address, std::chrono::milliseconds timeout, const ClientTls& tls) {
  auto stub = grpc::health::v1::Health::NewStub(open_channel(address, tls));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return unavailable(address + ": health check failed: " + st.error_message());
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING)
    return unavailable(address + ": NOT_SERVING");
  return Status::ok();
}

struct HealthProbe::Impl {
  std::unique_ptr<grpc::health::v1::Health::Stub> stub;
};

HealthProbe::HealthProbe(const std::string& address)
    : address_(address),
      impl_(new Impl{grpc::health::v1::Health::NewStub(
          grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))}) {}

HealthProbe::~HealthProbe() = default;

Status HealthProbe::check(std::chrono::milliseconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = impl_->stub->Check(&ctx, req, &resp);
  if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    return {StatusCode::kDeadlineExceeded, address_ + ": no health answer within " + std::to_string(timeout.count()) + " ms"};
  if (!st.ok()) return unavailable(address_ + ": health check failed: " + st.error_message());
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) return unavailable(address_ + ": NOT_SERVING");
  return Status::ok();
}

Status wait_until_serving(const std::string& address, std::chrono::milliseconds timeout, const ClientTls& tls) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  Status last;
  while (std::chrono::steady_clock::now() < end) {
    last = check_health(address, std::chrono::milliseconds(500), tls);
    if (last.is_ok()) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return {StatusCode::kDeadlineExceeded, "not serving after " + std::to_string(timeout.count()) + " ms (" +
                                             last.message() + ")"};
}

}  // namespace tandem::api
