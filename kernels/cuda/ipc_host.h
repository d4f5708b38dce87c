// Host identity recorded in, and checked against, CUDA IPC handle blobs.
// Private to kernels/cuda; C++17-clean.
#pragma once

#include <string>

namespace tandem::transport::detail {

// gethostname(); empty when it fails.
std::string local_hostname();
// /proc/sys/kernel/random/boot_id without the newline; empty when unreadable.
std::string local_boot_id();

}  // namespace tandem::transport::detail
