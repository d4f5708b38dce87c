// The deployment YAML: one file every role of a cluster reads (router, attention
// nodes, expert nodes, and `tandem serve` which launches them). Parsing is strict:
// an unknown key, a wrong type or an impossible number is refused with the file,
// the key path and what is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem::api {

struct Endpoint {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string to_string() const { return host + ":" + std::to_string(port); }
};

// What `tandem plan` chose and predicted (docs/planner.md). Informational: the
// roles ignore it; it records the parts of a plan the cluster keys cannot say
// (tensor-parallel degrees, GPU kinds) and the predictions to check against.
struct PlanInfo {
  bool present = false;
  std::string attention_hw, expert_hw;
  int attention_tp = 1, expert_tp = 1;
  int global_batch = 0;      // B
  int micro_batch_size = 0;  // b_a: sequences per attention node per micro-batch
  double avg_context = 0;    // s the plan assumed
  double tpot_slo_ms = 0;
  double predicted_tpot_ms = 0;
  double predicted_tokens_per_s = 0;
  double predicted_tokens_per_s_per_gpu = 0;
  double predicted_tokens_per_dollar = 0;
};

// "0-3,8" -> {0, 1, 2, 3, 8}: sorted, without repeats. INVALID_ARGUMENT on
// anything else, naming the bad part.
Result<std::vector<int>> parse_cpu_list(const std::string& text);
std::string format_cpu_list(const std::vector<int>& cpus);  // {0, 1, 2, 5} -> "0-2,5"

struct DeploymentConfig {
  std::string source;  // file it came from, for messages

  // model
  std::string model_path;
  std::string served_name;  // default: the model directory's name

  // cluster shape
  int attention_nodes = 1;  // n_a
  int expert_nodes = 1;     // n_e
  int micro_batches = 1;    // m (ping-pong)
  std::string device = "cpu";  // cpu | cuda: the default of attention.device and expert.device
  std::string dtype = "f32";   // f32 | bf16: compute dtype of GPU nodes (CPU nodes compute in FP32)
  // GPU nodes: replay decode layers from CUDA graphs; how expert GEMMs run
  // (per-expert | batched | device: engine::ExpertGemm's names).
  bool cuda_graphs = false;
  std::string expert_gemm = "per-expert";

  // router
  Endpoint router{"127.0.0.1", 50051};
  Endpoint http{"127.0.0.1", 0};  // router.http_listen: the OpenAI-compatible HTTP API; port 0: none
  int max_queue = 256;
  // Several attention nodes: send a prompt to the node where it adds the least
  // work in KV blocks (its blocks to compute there, fewer where its prefix went
  // before, plus the prompt blocks in flight there) instead of the node with
  // the fewest requests in flight.
  bool prefix_affinity = true;
  int request_timeout_s = 600;
  // How the model writes tool calls: auto (from the chat template), hermes,
  // mistral or none (tools refused).
  std::string tool_call_parser = "auto";
  // Reasoning models: none, or think (aliases deepseek_r1, qwen3) to return
  // the text between <think> and </think> apart from the answer.
  std::string reasoning_parser = "none";
  // On SIGTERM/SIGINT the router stops taking requests and gives the ones in
  // flight this long to finish before it cancels them.
  int drain_timeout_s = 30;
  // Clients must send one of these keys (HTTP `Authorization: Bearer KEY`,
  // gRPC metadata `authorization: Bearer KEY`); none: no check. Inline
  // (router.api_keys, written back by to_yaml()) and one per line of
  // router.api_keys_file (a relative path is the deployment file's
  // directory's), which only the router reads: accepted_api_keys() reads it
  // each call, INVALID_ARGUMENT naming the key for an unreadable file, a bad
  // key (by line, never shown) or a file with none.
  std::vector<std::string> api_keys;
  std::string api_keys_file;
  Result<std::vector<std::string>> accepted_api_keys() const;
  // TLS on the router's public listeners (router.listen, router.http_listen):
  // a PEM certificate (chain) and its private key, both or neither; relative
  // paths are the deployment file's directory's. Only the router and
  // `tandem serve` read them: server_tls() reads both, INVALID_ARGUMENT
  // naming the key when one cannot be read; empty strings when off.
  std::string tls_cert_file, tls_key_file;
  // One JSON line per finished Generate/Chat call: "" off, "-" stderr, else a
  // file the router appends to (relative: the deployment file's directory's).
  std::string access_log;
  struct ServerTls {
    std::string cert_pem, key_pem;
  };
  Result<ServerTls> server_tls() const;
  bool tls() const { return !tls_cert_file.empty(); }

  // attention nodes
  int attention_base_port = 50100;  // node i listens on base + i
  int max_running_sequences = 64;
  int max_batch_tokens = 2048;
  int kv_blocks = 1024;
  int kv_block_size = 16;
  // Reuse the KV blocks of a prompt's longest cached whole-block prefix.
  bool prefix_caching = true;
  // Logits rows one step may score for prompt log-probabilities (each a row
  // of vocab floats brought to the host): bounds that memory.
  int max_prompt_logprob_rows = 512;
  // CPUs every attention node runs on (and as many OpenMP threads); empty: all.
  std::vector<int> attention_cpus;
  std::string attention_device;  // cpu | cuda; empty: cluster.device (see attention_on())

  // expert nodes
  int expert_base_port = 50200;
  std::vector<int> expert_cpus;  // as attention_cpus, for expert nodes
  std::string expert_device;     // as attention_device

  // transport
  std::string transport = "tcp";  // tcp (gRPC streams) | ucx (UCX M2N transport, src/transport) | cuda_ipc | nccl
  int transport_timeout_ms = 5000;
  // ucx on one host: small (eager) messages over UCX shared memory instead of tcp.
  bool transport_shared_memory = false;

  // logging
  std::string log_level = "warn";

  PlanInfo plan;  // optional `plan:` section

  const std::string& attention_on() const { return attention_device.empty() ? device : attention_device; }
  const std::string& experts_on() const { return expert_device.empty() ? device : expert_device; }
  bool uses_cuda() const { return attention_on() == "cuda" || experts_on() == "cuda"; }
  DType gpu_dtype() const { return dtype == "bf16" ? DType::kBF16 : DType::kF32; }
  // GPU nodes take the visible devices round-robin: attention nodes first,
  // then expert nodes, so a one-GPU machine puts every node on device 0.
  int attention_gpu_slot(int rank) const { return rank; }
  int expert_gpu_slot(int rank) const { return (attention_on() == "cuda" ? attention_nodes : 0) + rank; }

  Endpoint attention_endpoint(int rank) const { return {router.host, attention_base_port + rank}; }
  Endpoint expert_endpoint(int rank) const { return {router.host, expert_base_port + rank}; }
  // Expert node `rank` holds experts [first, second) of every MoE layer:
  // contiguous, near-equal ranges (re-balancing can later replace this map).
  std::pair<int64_t, int64_t> expert_range(int64_t num_experts, int rank) const {
    return {num_experts * rank / expert_nodes, num_experts * (rank + 1) / expert_nodes};
  }

  static Result<DeploymentConfig> from_yaml(const std::string& text, const std::string& source);
  static Result<DeploymentConfig> from_file(const std::string& path);
  // Checks that need the model (more expert nodes than experts, KV cache vs memory).
  Status validate_against_model(int64_t num_experts, int64_t kv_bytes_per_token, size_t memory_bytes) const;
  // transport.backend: nccl on `visible_gpus` devices: FAILED_PRECONDITION
  // naming transport.backend when the round-robin placement puts an attention
  // node and an expert node on one GPU (NCCL cannot put both ends of a
  // communicator there). OK for other backends.
  Status check_nccl_placement(int visible_gpus) const;
  std::string to_yaml() const;
};

}  // namespace tandem::api
