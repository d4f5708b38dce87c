// Maps tandem::Status to and from grpc::Status (same code names), for the
// process edges where gRPC handlers meet module boundaries.
#pragma once

#include <grpcpp/support/status.h>

#include "tandem/common/status.h"

namespace tandem {

inline grpc::StatusCode to_grpc_code(StatusCode c) {
  switch (c) {
    case StatusCode::kOk: return grpc::StatusCode::OK;
    case StatusCode::kInvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case StatusCode::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case StatusCode::kOutOfRange: return grpc::StatusCode::OUT_OF_RANGE;
    case StatusCode::kResourceExhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case StatusCode::kFailedPrecondition: return grpc::StatusCode::FAILED_PRECONDITION;
    case StatusCode::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
    case StatusCode::kDeadlineExceeded: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case StatusCode::kDataLoss: return grpc::StatusCode::DATA_LOSS;
    case StatusCode::kUnimplemented: return grpc::StatusCode::UNIMPLEMENTED;
    case StatusCode::kCancelled: return grpc::StatusCode::CANCELLED;
    case StatusCode::kInternal: return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::UNKNOWN;
}

inline grpc::Status to_grpc(const Status& s) {
  return s.is_ok() ? grpc::Status::OK : grpc::Status(to_grpc_code(s.code()), s.message());
}

inline Status from_grpc(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::OK: return Status::ok();
    case grpc::StatusCode::INVALID_ARGUMENT: return invalid_argument(s.error_message());
    case grpc::StatusCode::NOT_FOUND: return not_found(s.error_message());
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return resource_exhausted(s.error_message());
    case grpc::StatusCode::DEADLINE_EXCEEDED: return {StatusCode::kDeadlineExceeded, s.error_message()};
    case grpc::StatusCode::CANCELLED: return {StatusCode::kCancelled, s.error_message()};
    case grpc::StatusCode::UNIMPLEMENTED: return unimplemented(s.error_message());
    case grpc::StatusCode::INTERNAL: return internal_error(s.error_message());
    default: return unavailable(s.error_message());
  }
}

}  // namespace tandem
