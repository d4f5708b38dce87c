// ucx_supports_cuda_memory against what `ucx_info -d` says about this host.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tandem/transport/ucx_transport.h"

namespace tandem::transport {
namespace {

// The output of `ucx_info -d`, or empty when the tool is missing.
std::string ucx_info_devices() {
  std::string out;
  FILE* p = popen("ucx_info -d 2>/dev/null", "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

TEST(UcxCudaProbe, AgreesWithUcxInfo) {
  std::string reason;
  Result<bool> cuda = ucx_supports_cuda_memory(&reason);
  ASSERT_TRUE(cuda.is_ok()) << cuda.status().to_string();
  EXPECT_NE(reason.find("UCX "), std::string::npos) << reason;
  EXPECT_NE(reason.find("memory types: "), std::string::npos) << reason;
  const std::string devices = ucx_info_devices();
  const bool listed = devices.find("Transport: cuda") != std::string::npos;
  if (*cuda) {
    EXPECT_TRUE(listed) << "the probe says CUDA (" << reason << ") but `ucx_info -d` lists no cuda transport";
  } else {
    EXPECT_NE(reason.find("lacks CUDA support"), std::string::npos) << reason;
    // UCX_TLS may leave the cuda transports out on purpose.
    if (listed && !std::getenv("UCX_TLS")) {
      ADD_FAILURE() << "`ucx_info -d` lists cuda transports but the probe says: " << reason;
    }
  }
  // Without a reason pointer it still answers the same.
  Result<bool> again = ucx_supports_cuda_memory();
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(*again, *cuda);
  std::printf("ucx_supports_cuda_memory: %s (%s)\n", *cuda ? "true" : "false", reason.c_str());
}

}  // namespace
}  // namespace tandem::transport
