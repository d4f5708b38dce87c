#include <algorithm>

#include "tandem/transport/transport.h"

namespace tandem::transport {

Status SendSlot::ready(Transport& transport, size_t bytes, std::chrono::milliseconds timeout) {
  if (!last.wait(timeout).is_ok()) *this = SendSlot{};
  if (buffer.size() < bytes) {
    TANDEM_ASSIGN_OR_RETURN(buffer, transport.allocate(std::max(bytes, 2 * buffer.size())));
  }
  return Status::ok();
}

}  // namespace tandem::transport
