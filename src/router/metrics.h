// The router's serving metrics in Prometheus' text exposition format (served
// as GET /metrics on router.http_listen): requests by gRPC status code,
// requests in flight, prompt and generated tokens, finish reasons, structured
// output requests by kind, and
// histograms of time to first token, time per output token and end-to-end
// latency; per attention node (label `node`, its address) what the router's
// monitor last polled: up, sequences, KV blocks, prefix-cache lookups and hits,
// preemptions. Every generation request counts once, whichever API it came
// through (the HTTP gateway is a gRPC client of the router); requests the
// gateway refuses before the router sees them do not.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::router {

// A cumulative histogram with fixed upper bounds (seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // `name`_bucket{le=...} (cumulative, +Inf last), `name`_sum, `name`_count.
  void write(std::string& out, std::string_view name, std::string_view help) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class RouterMetrics {
 public:
  RouterMetrics();

  // A request's stream: its prompt, when its first token came (seconds from
  // the start; < 0: none), how many tokens, how long in all, how it ended.
  struct Finished {
    uint32_t prompt_tokens = 0;
    uint32_t completion_tokens = 0;
    double first_token_s = -1;
    double total_s = 0;
    std::string_view finish_reason;  // "stop" | "length" | "tool_calls" | "" (did not finish)
  };
  void record_stream(const Finished& f);
  // Every answered request, by its gRPC status code name ("OK", "INVALID_ARGUMENT", ...).
  void record_status(std::string_view code);
  // A request with structured output that passed validation, by kind
  // ("regex", "json_schema", "choice", "json_object", "tool_call").
  void record_guided(std::string_view kind);
  // Tool calls parsed out of answers (and sent as tool_calls).
  void record_tool_calls(size_t calls);

  // An attention node as the router's monitor last polled it (the node's own
  // counters since it started; all zero but `up` while it does not answer).
  struct NodeLoad {
    bool up = false;
    int64_t running = 0, waiting = 0, free_blocks = 0, total_blocks = 0, cached_blocks = 0;
    int64_t prefix_lookup_tokens = 0, prefix_hit_tokens = 0, preemptions = 0;
  };
  void set_node(const std::string& address, const NodeLoad& load);
  // The node stopped answering: `up` 0, its last numbers kept (a counter that
  // dropped to 0 and came back would read as a reset).
  void set_node_down(const std::string& address);

  // The exposition text; `in_flight` is the router's gauge at the time.
  std::string text(int64_t in_flight) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t, std::less<>> by_code_;
  std::map<std::string, uint64_t, std::less<>> by_finish_;
  std::map<std::string, uint64_t, std::less<>> by_guide_;
  uint64_t tool_calls_ = 0;
  uint64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  std::map<std::string, NodeLoad, std::less<>> nodes_;
  Histogram ttft_, tpot_, e2e_;
};

// The name of a gRPC status code as Prometheus labels carry it (gRPC's own spelling).
std::string_view grpc_code_name(int code);

}  // namespace tandem::router
