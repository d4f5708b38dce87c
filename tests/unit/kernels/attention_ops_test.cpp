// Attention kernels against a float64 two-pass softmax reference: contiguous
// causal prefill, paged attention over scrambled block tables (decode, chunked
// prefill, long contexts that the kernel splits), and the KV-cache write.
#include <gtest/gtest.h>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

struct AttnCase {
  int n, hq, hkv, d;
  float q_scale;  // large values push scores far from 0: softmax needs its max subtraction
};

VecDStub:
