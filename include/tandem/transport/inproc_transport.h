// Threads in one process exchanging messages through a shared fabric: the
// transport for unit tests of other components. Same semantics as UCX: a send
// completes once its payload was copied into the receiver's pool; destroying a
// node (or kill()) makes its peers' operations on it UNAVAILABLE.
#pragma once

#include <memory>

#include "tandem/transport/transport.h"

namespace tandem::transport {

class InprocFabric {
 public:
  virtual ~InprocFabric() = default;
  // Simulates a crash of `node`: it drops off the fabric, its peers see UNAVAILABLE.
  virtual void kill(const NodeId& node) = 0;
};

std::shared_ptr<InprocFabric> create_inproc_fabric();

// An id already on the fabric is INVALID_ARGUMENT.
Result<std::unique_ptr<Transport>> create_inproc_transport(std::shared_ptr<InprocFabric> fabric,
                                                          NodeId self);

}  // namespace tandem::transport
