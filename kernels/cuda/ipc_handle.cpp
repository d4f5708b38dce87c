// The CUDA IPC handle blob: serialisation, validation and the same-host check.
// Host-only C++ with no CUDA call, so it is testable without a device.
#include <unistd.h>

#include <climits>
#include <cstring>
#include <fstream>
#include <string>

#include "ipc_host.h"
#include "tandem/transport/cuda_ipc.h"

namespace tandem::transport {
namespace {

constexpr char kMagic[8] = {'T', 'N', 'D', 'M', 'C', 'I', 'P', 'C'};
constexpr size_t kPciField = 32;
constexpr size_t kHostField = 256;
constexpr size_t kBootIdField = 40;
constexpr size_t kHeaderBytes = sizeof(kMagic) + 4 + 4;  // magic, version, total size
constexpr size_t kBlobBytes = kHeaderBytes + 4 * 8 + 16 + kPciField + kHostField + kBootIdField +
                              2 * CudaIpcHandleInfo::kIpcHandleBytes;
constexpr uint64_t kStrideAlign = 256;

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  template <typename T>
  void pod(T v) {
    bytes(&v, sizeof v);
  }
  // NUL-padded; a longer string is cut so that a NUL always ends the field.
  void text(const std::string& s, size_t field) {
    const size_t n = s.size() < field - 1 ? s.size() : field - 1;
    out_.append(s.data(), n);
    out_.append(field - n, '\0');
  }

 private:
  std::string& out_;
};

class Reader {
 public:
  explicit Reader(const std::string& in) : in_(in) {}
  void bytes(void* p, size_t n) {
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
  }
  template <typename T>
  T pod() {
    T v;
    bytes(&v, sizeof v);
    return v;
  }
  // False when the field has no terminating NUL.
  bool text(std::string& s, size_t field) {
    const char* p = in_.data() + pos_;
    pos_ += field;
    const void* nul = std::memchr(p, '\0', field);
    if (!nul) return false;
    s.assign(p, static_cast<const char*>(nul) - p);
    return true;
  }

 private:
  const std::string& in_;
  size_t pos_ = 0;
};

Status bad_blob(const std::string& why) {
  return invalid_argument("CUDA IPC handle blob: " + why);
}

}  // namespace

namespace detail {

std::string local_hostname() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return {};
  return buf;
}

std::string local_boot_id() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  if (f) std::getline(f, id);
  return id;
}

}  // namespace detail

std::string serialize_cuda_ipc_handle(const CudaIpcHandleInfo& info) {
  std::string out;
  out.reserve(kBlobBytes);
  Writer w(out);
  w.bytes(kMagic, sizeof kMagic);
  w.pod<uint32_t>(CudaIpcHandleInfo::kVersion);
  w.pod<uint32_t>(static_cast<uint32_t>(kBlobBytes));
  w.pod<uint64_t>(info.slots);
  w.pod<uint64_t>(info.slot_bytes);
  w.pod<uint64_t>(info.slot_stride);
  w.pod<int64_t>(info.pid);
  w.bytes(info.device_uuid.data(), info.device_uuid.size());
  w.text(info.pci_bus_id, kPciField);
  w.text(info.hostname, kHostField);
  w.text(info.boot_id, kBootIdField);
  w.bytes(info.data_handle.data(), info.data_handle.size());
  w.bytes(info.flags_handle.data(), info.flags_handle.size());
  return out;
}

Result<CudaIpcHandleInfo> parse_cuda_ipc_handle(const std::string& blob) {
  if (blob.size() < kHeaderBytes) {
    return bad_blob("truncated: " + std::to_string(blob.size()) + " bytes, not even the " +
                    std::to_string(kHeaderBytes) + "-byte header");
  }
  if (std::memcmp(blob.data(), kMagic, sizeof kMagic) != 0) {
    return bad_blob("wrong magic (not a handle exported by CudaIpcReceiver)");
  }
  Reader r(blob);
  char magic[sizeof kMagic];
  r.bytes(magic, sizeof magic);
  const auto version = r.pod<uint32_t>();
  const auto declared = r.pod<uint32_t>();
  if (version != CudaIpcHandleInfo::kVersion) {
    return bad_blob("version " + std::to_string(version) + ", this build reads version " +
                    std::to_string(CudaIpcHandleInfo::kVersion));
  }
  if (declared != kBlobBytes || blob.size() != kBlobBytes) {
    return bad_blob(std::string(blob.size() < kBlobBytes ? "truncated" : "wrong length") + ": " +
                    std::to_string(blob.size()) + " bytes (header says " + std::to_string(declared) +
                    "), version " + std::to_string(version) + " has " + std::to_string(kBlobBytes));
  }
  CudaIpcHandleInfo info;
  info.slots = r.pod<uint64_t>();
  info.slot_bytes = r.pod<uint64_t>();
  info.slot_stride = r.pod<uint64_t>();
  info.pid = r.pod<int64_t>();
  r.bytes(info.device_uuid.data(), info.device_uuid.size());
  if (!r.text(info.pci_bus_id, kPciField)) return bad_blob("PCI bus id field is not NUL-terminated");
  if (!r.text(info.hostname, kHostField)) return bad_blob("hostname field is not NUL-terminated");
  if (!r.text(info.boot_id, kBootIdField)) return bad_blob("boot id field is not NUL-terminated");
  r.bytes(info.data_handle.data(), info.data_handle.size());
  r.bytes(info.flags_handle.data(), info.flags_handle.size());

  if (info.slots == 0 || info.slot_bytes == 0) {
    return bad_blob(std::to_string(info.slots) + " slots of " + std::to_string(info.slot_bytes) +
                    " bytes: both must be positive");
  }
  if (info.slot_stride < info.slot_bytes || info.slot_stride % kStrideAlign != 0) {
    return bad_blob("slot stride " + std::to_string(info.slot_stride) + " for slots of " +
                    std::to_string(info.slot_bytes) + " bytes (must be >= slot bytes and a multiple of " +
                    std::to_string(kStrideAlign) + ")");
  }
  if (info.slot_stride > UINT64_MAX / info.slots || info.slots > UINT64_MAX / 8) {
    return bad_blob(std::to_string(info.slots) + " slots of stride " + std::to_string(info.slot_stride) +
                    " overflow 64 bits");
  }
  if (info.pid <= 0) return bad_blob("exporting pid " + std::to_string(info.pid));
  if (info.hostname.empty()) return bad_blob("empty hostname");
  return info;
}

Status check_cuda_ipc_peer(const CudaIpcHandleInfo& info) {
  const std::string host = detail::local_hostname();
  const std::string boot = detail::local_boot_id();
  if (info.hostname != host || (!info.boot_id.empty() && !boot.empty() && info.boot_id != boot)) {
    return unavailable("CUDA IPC handle was exported on host '" + info.hostname + "' (boot " +
                       (info.boot_id.empty() ? std::string("unknown") : info.boot_id) + "), this is host '" + host +
                       "' (boot " + (boot.empty() ? std::string("unknown") : boot) +
                       "): CUDA IPC works between processes of one host only; use the UCX transport across hosts");
  }
  if (info.pid == static_cast<int64_t>(getpid())) {
    return failed_precondition("CUDA IPC handle was exported by this process (pid " + std::to_string(info.pid) +
                               "): CUDA cannot open a process's own IPC handles; use CudaIpcReceiver::slot() "
                               "directly within one process");
  }
  return Status::ok();
}

}  // namespace tandem::transport
