#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "safetensors/internal.h"

namespace tandem::model {

namespace {

// Closes the descriptor on every path out of open(); the mapping outlives it.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Status open_error(const std::string& path, int err) {
  std::string m = path + ": cannot open: " + std::strerror(err);
  if (err == ENOENT || err == ENOTDIR) return not_found(std::move(m));
  return failed_precondition(std::move(m));
}

}  // namespace

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  namespace si = safetensors_internal;
  // O_NONBLOCK so a FIFO given by mistake is refused below instead of hanging open().
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) return open_error(path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return open_error(path, errno);
  if (!S_ISREG(st.st_mode)) return invalid_argument(path + ": not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    return data_loss(path + ": file is " + std::to_string(file_size) +
                     " bytes, shorter than the 8-byte header length (truncated or not a safetensors file)");

  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  void* m = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (m == MAP_FAILED) return resource_exhausted(path + ": mmap failed: " + std::strerror(errno));
  f->map_ = m;  // owned from here on, so every error below unmaps it
  f->map_size_ = file_size;
  const auto* bytes = static_cast<const std::byte*>(m);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | std::to_integer<uint64_t>(bytes[i]);
  if (header_len > si::kMaxHeaderBytes)
    return data_loss(path + ": header length " + std::to_string(header_len) + " exceeds the " +
                     std::to_string(si::kMaxHeaderBytes) + "-byte limit (corrupt or not a safetensors file)");
  if (8 + header_len > file_size)
    return data_loss(path + ": header length " + std::to_string(header_len) + " runs past the end of the " +
                     std::to_string(file_size) + "-byte file (truncated?)");

  const std::string_view header(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(header_len));
  const uint64_t buffer_size = file_size - 8 - header_len;
  TANDEM_ASSIGN_OR_RETURN(si::ParsedHeader parsed, si::parse_header(header, buffer_size, path));

  const std::byte* buffer = bytes + 8 + header_len;
  f->tensors_.reserve(parsed.entries.size());
  for (auto& e : parsed.entries) {
    e.info.data = buffer + e.begin;
    f->tensors_.push_back(std::move(e.info));
  }
  f->metadata_ = std::move(parsed.metadata);
  return f;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

}  // namespace tandem::model
