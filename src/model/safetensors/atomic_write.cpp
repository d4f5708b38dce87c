#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "safetensors/internal.h"

namespace tandem::model::safetensors_internal {

namespace {

Status write_all(int fd, std::span<const std::byte> part) {
  const std::byte* p = part.data();
  size_t left = part.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status(StatusCode::kUnavailable, std::strerror(errno));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return Status::ok();
}

Status write_and_sync(int fd, const std::vector<std::span<const std::byte>>& parts) {
  for (const auto& part : parts) TANDEM_RETURN_IF_ERROR(write_all(fd, part));
  // Without fsync a crash after the rename could leave the new name pointing at
  // a file whose data never reached the disk.
  if (::fsync(fd) != 0) return Status(StatusCode::kUnavailable, std::string("fsync: ") + std::strerror(errno));
  return Status::ok();
}

}  // namespace

Status write_file_atomically(const std::string& path, const std::vector<std::span<const std::byte>>& parts) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return unavailable(path + ": cannot create " + tmp + ": " + std::strerror(errno));

  Status st = write_and_sync(fd, parts);
  if (::close(fd) != 0 && st.is_ok()) st = Status(StatusCode::kUnavailable, std::string("close: ") + std::strerror(errno));
  if (st.is_ok() && std::rename(tmp.c_str(), path.c_str()) != 0)
    st = Status(StatusCode::kUnavailable, std::string("rename: ") + std::strerror(errno));
  if (!st.is_ok()) {
    ::unlink(tmp.c_str());
    return unavailable(path + ": write failed: " + st.message());
  }
  return Status::ok();
}

}  // namespace tandem::model::safetensors_internal
