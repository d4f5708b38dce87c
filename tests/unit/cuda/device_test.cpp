// Device queries, streams and error reporting.
#include <gtest/gtest.h>

#include "cuda_test_util.h"

namespace tandem::kernels::cuda::testing {
namespace {

using DeviceCuda = CudaTest;

// Runs everywhere: without a GPU the reason is the runtime's own text.
TEST(CudaRuntime, DeviceCountSaysWhyItFails) {
  Result<int> n = device_count();
  if (n.is_ok()) {
    EXPECT_GT(*n, 0);
  } else {
    EXPECT_EQ(n.status().code(), StatusCode::kUnavailable);
    EXPECT_EQ(n.status().message().rfind("no CUDA device: ", 0), 0u) << n.status().message();
  }
}

// Argument checks happen before any CUDA call, so these run without a GPU too.
TEST(CudaRuntime, BadArgumentsNameTheOp) {
  Status st = attention_prefill(static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, 4, 8, 3, 64, 1.0f);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "attention_prefill: hq must be a multiple of hkv");
  st = rmsnorm(static_cast<const float*>(nullptr), nullptr, nullptr, 2, -1, 1e-6f);
  EXPECT_EQ(st.message(), "rmsnorm: negative size");
  // A zero extent is a no-op, as on the CPU, and touches no pointer.
  EXPECT_TRUE(rmsnorm(static_cast<const float*>(nullptr), nullptr, nullptr, 2, 0, 1e-6f).is_ok());
  EXPECT_TRUE(attention_paged(static_cast<const float*>(nullptr), nullptr, 0, 8, PagedKv{}, nullptr, 0, nullptr,
                              nullptr, 1.0f)
                  .is_ok());
  Result<int32_t> empty = argmax(nullptr, 0);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_EQ(*empty, 0);
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(3u << 20), "3.00 MiB");
}

TEST(CudaRuntime, StreamIsPerThreadAndRestoredByGuard) {
  void* before = current_stream();
  {
    StreamGuard guard(reinterpret_cast<void*>(0x1234));
    EXPECT_EQ(current_stream(), reinterpret_cast<void*>(0x1234));
  }
  EXPECT_EQ(current_stream(), before);
}

TEST_F(DeviceCuda, DeviceInfoAndMemory) {
  Result<DeviceInfo> info = device_info();
  ASSERT_TRUE(info.is_ok()) << info.status().to_string();
  EXPECT_FALSE(info->name.empty());
  EXPECT_GE(info->cc_major, 8);  // built for sm_80 and sm_90
  EXPECT_GT(info->multiprocessors, 0);
  EXPECT_GT(info->memory.total_bytes, 0u);
  EXPECT_LE(info->memory.free_bytes, info->memory.total_bytes);

  TANDEM_ASSERT_OK(check_free_memory(1 << 20, "small buffer"));
  Status st = check_free_memory(info->memory.total_bytes * 2, "kv cache");
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("kv cache: asked "), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(" free of "), std::string::npos) << st.message();
}

TEST_F(DeviceCuda, OpsRunOnTheCallersStream) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  {
    StreamGuard guard(s);
    auto x = random_floats(4 * 256, 301);
    auto w = random_floats(256, 302);
    std::vector<float> ref(x.size());
    cpu::rmsnorm(x.data(), w.data(), ref.data(), 4, 256, 1e-6f);
    DeviceBuffer<float> dx(x), dw(w), dy(x.size());
    TANDEM_ASSERT_OK(rmsnorm(dx.get(), dw.get(), dy.get(), 4, 256, 1e-6f));
    EXPECT_TRUE(all_close(dy.to_host(), ref, 1e-5f, 1e-6f));  // to_host waits on s
  }
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

}  // namespace
}  // namespace tandem::kernels::cuda::testing
