#include "metrics.h"

#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <utility>

namespace tandem::router {

namespace {

// Bounds in seconds: first tokens wait for admission and prefill; output
// tokens are decode steps; whole requests last up to minutes.
const std::vector<double> kTtftBounds = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const std::vector<double> kTpotBounds = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5};
const std::vector<double> kE2eBounds = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600};

// The shortest text that reads back as `v` ("0.1", not "0.10000000000000001").
std::string number(double v) {
  char buf[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void counter_family(std::string& out, std::string_view name, std::string_view label, std::string_view help,
                    const std::map<std::string, uint64_t, std::less<>>& values) {
  header(out, name, "counter", help);
  for (const auto& [key, v] : values)
    out.append(name).append("{").append(label).append("=\"").append(key).append("\"} ").append(std::to_string(v)).append("\n");
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t b = 0;
  while (b < bounds_.size() && v > bounds_[b]) ++b;
  std::lock_guard<std::mutex> l(mu_);
  ++counts_[b];
  sum_ += v;
  ++count_;
}

void Histogram::write(std::string& out, std::string_view name, std::string_view help) const {
  header(out, name, "histogram", help);
  std::lock_guard<std::mutex> l(mu_);
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= bounds_.size(); ++b) {
    cumulative += counts_[b];
    const std::string le = b < bounds_.size() ? number(bounds_[b]) : "+Inf";
    out.append(name).append("_bucket{le=\"").append(le).append("\"} ").append(std::to_string(cumulative)).append("\n");
  }
  out.append(name).append("_sum ").append(number(sum_)).append("\n");
  out.append(name).append("_count ").append(std::to_string(count_)).append("\n");
}

RouterMetrics::RouterMetrics() : ttft_(kTtftBounds), tpot_(kTpotBounds), e2e_(kE2eBounds) {}

void RouterMetrics::record_stream(const Finished& f) {
  {
    std::lock_guard<std::mutex> l(mu_);
    prompt_tokens_ += f.prompt_tokens;
    completion_tokens_ += f.completion_tokens;
    if (!f.finish_reason.empty()) ++by_finish_[std::string(f.finish_reason)];
  }
  if (f.finish_reason.empty()) return;  // latencies of complete requests only
  if (f.first_token_s >= 0) ttft_.observe(f.first_token_s);
  if (f.completion_tokens > 1 && f.first_token_s >= 0)
    tpot_.observe((f.total_s - f.first_token_s) / static_cast<double>(f.completion_tokens - 1));
  e2e_.observe(f.total_s);
}

void RouterMetrics::record_status(std::string_view code) {
  std::lock_guard<std::mutex> l(mu_);
  ++by_code_[std::string(code)];
}

void RouterMetrics::record_guided(std::string_view kind) {
  std::lock_guard<std::mutex> l(mu_);
  ++by_guide_[std::string(kind)];
}

void RouterMetrics::record_tool_calls(size_t calls) {
  std::lock_guard<std::mutex> l(mu_);
  tool_calls_ += calls;
}

void RouterMetrics::set_node(const std::string& address, const NodeLoad& load) {
  std::lock_guard<std::mutex> l(mu_);
  nodes_[address] = load;
}

void RouterMetrics::set_node_down(const std::string& address) {
  std::lock_guard<std::mutex> l(mu_);
  nodes_[address].up = false;
}

std::string RouterMetrics::text(int64_t in_flight) const {
  std::string out;
  {
    std::lock_guard<std::mutex> l(mu_);
    counter_family(out, "tandem_requests_total", "code",
                   "Generation requests (Generate and Chat) the router answered, by gRPC status code.", by_code_);
    counter_family(out, "tandem_requests_finished_total", "reason",
                   "Requests that generated to their end, by finish reason.", by_finish_);
    counter_family(out, "tandem_guided_requests_total", "kind",
                   "Requests with structured output (guided decoding) that passed validation (some may still be refused for capacity), by kind.", by_guide_);
    header(out, "tandem_tool_calls_total", "counter", "Tool calls parsed out of chat answers.");
    out.append("tandem_tool_calls_total ").append(std::to_string(tool_calls_)).append("\n");
    header(out, "tandem_prompt_tokens_total", "counter", "Prompt tokens of requests that reached an attention node.");
    out.append("tandem_prompt_tokens_total ").append(std::to_string(prompt_tokens_)).append("\n");
    header(out, "tandem_generation_tokens_total", "counter", "Tokens generated and streamed back.");
    out.append("tandem_generation_tokens_total ").append(std::to_string(completion_tokens_)).append("\n");
    using Field = int64_t (*)(const NodeLoad&);
    struct NodeFamily {
      const char* name;
      const char* type;
      const char* help;
      Field value;
    };
    static constexpr NodeFamily kNodeFamilies[] = {
        {"tandem_attention_up", "gauge", "1 while the attention node answers the router's polls.",
         [](const NodeLoad& n) -> int64_t { return n.up ? 1 : 0; }},
        {"tandem_attention_running_sequences", "gauge", "Sequences the node is generating.",
         [](const NodeLoad& n) { return n.running; }},
        {"tandem_attention_waiting_sequences", "gauge", "Sequences queued on the node for KV cache room.",
         [](const NodeLoad& n) { return n.waiting; }},
        {"tandem_attention_kv_free_blocks", "gauge", "KV blocks free or holding only reusable prefixes.",
         [](const NodeLoad& n) { return n.free_blocks; }},
        {"tandem_attention_kv_blocks", "gauge", "KV blocks of the node's cache.",
         [](const NodeLoad& n) { return n.total_blocks; }},
        {"tandem_attention_prefix_cached_blocks", "gauge", "KV blocks whose content a later prompt can reuse.",
         [](const NodeLoad& n) { return n.cached_blocks; }},
        {"tandem_attention_prefix_lookup_tokens_total", "counter",
         "Tokens of admitted sequences looked up in the prefix cache.",
         [](const NodeLoad& n) { return n.prefix_lookup_tokens; }},
        {"tandem_attention_prefix_hit_tokens_total", "counter",
         "Of those, tokens whose K/V were found cached and not computed again.",
         [](const NodeLoad& n) { return n.prefix_hit_tokens; }},
        {"tandem_attention_preemptions_total", "counter",
         "Sequences whose KV blocks were taken back for room (recomputed later).",
         [](const NodeLoad& n) { return n.preemptions; }},
    };
    if (!nodes_.empty()) {
      for (const NodeFamily& f : kNodeFamilies) {
        header(out, f.name, f.type, f.help);
        for (const auto& [address, load] : nodes_)
          out.append(f.name)
              .append("{node=\"")
              .append(address)
              .append("\"} ")
              .append(std::to_string(f.value(load)))
              .append("\n");
      }
    }
  }
  header(out, "tandem_requests_in_flight", "gauge", "Requests admitted and not yet answered.");
  out.append("tandem_requests_in_flight ").append(std::to_string(in_flight)).append("\n");
  ttft_.write(out, "tandem_time_to_first_token_seconds", "Time from admission to the first generated token.");
  tpot_.write(out, "tandem_time_per_output_token_seconds",
              "Per request, (end - first token) / (generated tokens - 1).");
  e2e_.write(out, "tandem_request_latency_seconds", "Time from admission to the last token of finished requests.");
  return out;
}

std::string_view grpc_code_name(int code) {
  static constexpr std::string_view kNames[] = {
      "OK",           "CANCELLED",      "UNKNOWN",   "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED",  "INTERNAL",  "UNAVAILABLE",      "DATA_LOSS",         "UNAUTHENTICATED"};
  return code >= 0 && code < static_cast<int>(std::size(kNames)) ? kNames[code] : "UNKNOWN";
}

}  // namespace tandem::router
