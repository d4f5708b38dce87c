// The router's Prometheus text: cumulative buckets, sums and counts, labelled
// counters, and which streams feed the latency histograms.
#include "metrics.h"

#include <gtest/gtest.h>

#include <string>

namespace tandem::router {
namespace {

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos || text.rfind(line + "\n", 0) == 0;
}

TEST(RouterMetrics, HistogramBucketsAreCumulative) {
  Histogram h({0.1, 1.0});
  for (double v : {0.05, 0.1, 0.5, 3.0}) h.observe(v);
  std::string out;
  h.write(out, "x_seconds", "help");
  EXPECT_TRUE(has_line(out, "# TYPE x_seconds histogram")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"0.1\"} 2")) << out;  // le is inclusive: 0.1 is in it
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"1\"} 3")) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_bucket{le=\"+Inf\"} 4")) << out;
  EXPECT_NE(out.find("\nx_seconds_sum 3.6"), std::string::npos) << out;
  EXPECT_TRUE(has_line(out, "x_seconds_count 4")) << out;
}

TEST(RouterMetrics, CountersAndWhichStreamsAreTimed) {
  RouterMetrics m;
  m.record_status("OK");
  m.record_status("OK");
  m.record_status("INVALID_ARGUMENT");
  m.record_stream({.prompt_tokens = 10, .completion_tokens = 5, .first_token_s = 0.2, .total_s = 0.52,
                   .finish_reason = "length"});
  // Cut short (no finish): tokens count, latencies do not.
  m.record_stream({.prompt_tokens = 7, .completion_tokens = 2, .first_token_s = 0.1, .total_s = 9.0, .finish_reason = ""});
  const std::string t = m.text(3);
  EXPECT_TRUE(has_line(t, "tandem_requests_total{code=\"OK\"} 2")) << t;
  EXPECT_TRUE(has_line(t, "tandem_requests_total{code=\"INVALID_ARGUMENT\"} 1")) << t;
  EXPECT_TRUE(has_line(t, "tandem_requests_finished_total{reason=\"length\"} 1")) << t;
  EXPECT_TRUE(has_line(t, "tandem_prompt_tokens_total 17")) << t;
  EXPECT_TRUE(has_line(t, "tandem_tool_calls_total 0")) << t;
  m.record_tool_calls(2);
  EXPECT_TRUE(has_line(m.text(0), "tandem_tool_calls_total 2"));
  EXPECT_TRUE(has_line(t, "tandem_generation_tokens_total 7")) << t;
  EXPECT_TRUE(has_line(t, "tandem_requests_in_flight 3")) << t;
  EXPECT_TRUE(has_line(t, "tandem_time_to_first_token_seconds_count 1")) << t;
  EXPECT_TRUE(has_line(t, "tandem_request_latency_seconds_count 1")) << t;
  // (0.52 - 0.2) / (5 - 1) = 0.08 s per output token: above 0.075, within 0.1.
  EXPECT_TRUE(has_line(t, "tandem_time_per_output_token_seconds_count 1")) << t;
  EXPECT_TRUE(has_line(t, "tandem_time_per_output_token_seconds_bucket{le=\"0.075\"} 0")) << t;
  EXPECT_TRUE(has_line(t, "tandem_time_per_output_token_seconds_bucket{le=\"0.1\"} 1")) << t;
  EXPECT_EQ(grpc_code_name(0), "OK");
  EXPECT_EQ(grpc_code_name(14), "UNAVAILABLE");
  EXPECT_EQ(grpc_code_name(99), "UNKNOWN");
}

// Per attention node, labelled by address: what the monitor last polled.
TEST(RouterMetrics, AttentionNodeFamilies) {
  RouterMetrics m;
  EXPECT_EQ(m.text(0).find("tandem_attention_"), std::string::npos);  // none polled yet: no families
  m.set_node("127.0.0.1:50100", {.up = true, .running = 2, .waiting = 1, .free_blocks = 90, .total_blocks = 128,
                                 .cached_blocks = 12, .prefix_lookup_tokens = 400, .prefix_hit_tokens = 160,
                                 .preemptions = 3});
  m.set_node("127.0.0.1:50101", {.up = true, .prefix_hit_tokens = 9});
  m.set_node_down("127.0.0.1:50101");  // keeps its counters
  const std::string t = m.text(0);
  EXPECT_TRUE(has_line(t, "tandem_attention_prefix_hit_tokens_total{node=\"127.0.0.1:50101\"} 9")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_up{node=\"127.0.0.1:50100\"} 1")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_up{node=\"127.0.0.1:50101\"} 0")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_running_sequences{node=\"127.0.0.1:50100\"} 2")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_kv_free_blocks{node=\"127.0.0.1:50100\"} 90")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_prefix_cached_blocks{node=\"127.0.0.1:50100\"} 12")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_prefix_lookup_tokens_total{node=\"127.0.0.1:50100\"} 400")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_prefix_hit_tokens_total{node=\"127.0.0.1:50100\"} 160")) << t;
  EXPECT_TRUE(has_line(t, "tandem_attention_preemptions_total{node=\"127.0.0.1:50100\"} 3")) << t;
  EXPECT_NE(t.find("# TYPE tandem_attention_prefix_hit_tokens_total counter"), std::string::npos) << t;
  EXPECT_NE(t.find("# TYPE tandem_attention_kv_free_blocks gauge"), std::string::npos) << t;
}

}  // namespace
}  // namespace tandem::router
