#include <algorithm>
#include <chrono>
#include <string>

#include "tandem/engine/expert_executor.h"
#include "tandem/kernels/cpu.h"

namespace tandem::engine {

std::vector<int32_t> rows_routed_to(const int32_t* topk_idx, int64_t n, int64_t k, int64_t first, int64_t last) {
  std::vector<int32_t> rows;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = topk_idx[t * k + j];
      if (e >= first && e < last) {
        rows.push_back(static_cast<int32_t>(t));
        break;
      }
    }
  return rows;
}

std::vector<ForwardBatch> split_micro_batches(const ForwardBatch& b, int m) {
  // Sequences in order of first appearance with their token ranges (a sequence's
  // tokens are contiguous in a batch).
  struct Seq {
    int32_t row;
    int64_t begin, end;
  };
  std::vector<Seq> seqs;
  for (int64_t t = 0; t < b.num_tokens(); ++t) {
    if (seqs.empty() || seqs.back().row != b.seq_of_token[t]) seqs.push_back({b.seq_of_token[t], t, t});
    seqs.back().end = t + 1;
  }
  const int parts = std::max(1, std::min<int>(m, static_cast<int>(seqs.size())));
  std::vector<ForwardBatch> out(static_cast<size_t>(parts));
  // Greedy contiguous cut at ~T/parts tokens so micro-batches cost about the same.
  const int64_t T = b.num_tokens();
  size_t s = 0;
  for (int p = 0; p < parts; ++p) {
    ForwardBatch& mb = out[static_cast<size_t>(p)];
    mb.max_blocks_per_seq = b.max_blocks_per_seq;
    const int64_t target = T * (p + 1) / parts;
    const size_t remaining_parts = static_cast<size_t>(parts - p - 1);
    while (s < seqs.size() && (mb.tokens.empty() || (seqs[s].end <= target && seqs.size() - s > remaining_parts))) {
      const Seq& q = seqs[s++];
      const int32_t local_row = static_cast<int32_t>(mb.block_tables.size() / std::max<int64_t>(1, b.max_blocks_per_seq));
      mb.block_tables.insert(mb.block_tables.end(), b.block_tables.begin() + q.row * b.max_blocks_per_seq,
                             b.block_tables.begin() + (q.row + 1) * b.max_blocks_per_seq);
      for (int64_t t = q.begin; t < q.end; ++t) {
        // logits_rows is increasing; a step scoring a prompt has hundreds of them.
        if (std::binary_search(b.logits_rows.begin(), b.logits_rows.end(), static_cast<int32_t>(t)))
          mb.logits_rows.push_back(static_cast<int32_t>(mb.tokens.size()));
        mb.tokens.push_back(b.tokens[t]);
        mb.positions.push_back(b.positions[t]);
        mb.seq_of_token.push_back(local_row);
        mb.slots.push_back(b.slots[t]);
        mb.ctx_len.push_back(b.ctx_len[t]);
      }
    }
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const ForwardBatch& x) { return x.tokens.empty(); }), out.end());
  return out;
}

Status CpuForwardStages::begin(const std::vector<ForwardBatch>& micro_batches, bool device_exchange) {
  if (device_exchange)
    return failed_precondition("the CPU forward cannot hand device memory to a GPU data plane (transport.backend "
                               "cuda_ipc needs attention.device: cuda)");
  const auto& c = runner_.config();
  const size_t H = static_cast<size_t>(c.hidden_size), K = static_cast<size_t>(c.moe.top_k);
  mbs_ = &micro_batches;
  state_.resize(micro_batches.size());
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const size_t n = static_cast<size_t>(micro_batches[i].num_tokens());
    State& s = state_[i];
    s.hidden.resize(n * H);
    s.moe_in.resize(n * H);
    s.moe_out.resize(n * H);
    s.topk_idx.resize(n * K);
    s.topk_w.resize(n * K);
    runner_.embed(micro_batches[i], s.hidden.data());
  }
  return Status::ok();
}

Result<ExpertInputs> CpuForwardStages::attend(int64_t layer, size_t i) {
  State& s = state_[i];
  const int64_t n = (*mbs_)[i].num_tokens();
  runner_.attention(layer, (*mbs_)[i], s.hidden.data(), s.moe_in.data());
  std::fill(s.moe_out.begin(), s.moe_out.end(), 0.0f);
  // Work that stays here (dense MLP or shared expert) goes into moe_out first;
  // the routed experts add theirs on top.
  runner_.local_ffn(layer, s.moe_in.data(), n, s.moe_out.data());
  if (!runner_.layer_is_moe(layer)) return ExpertInputs{};
  runner_.route(layer, s.moe_in.data(), n, s.topk_idx.data(), s.topk_w.data());
  return ExpertInputs{s.moe_in.data(), s.topk_idx.data(), s.topk_w.data(), s.moe_out.data()};
}

Status CpuForwardStages::land(int64_t, size_t i) {
  State& s = state_[i];
  for (size_t j = 0; j < s.hidden.size(); ++j) s.hidden[j] += s.moe_out[j];
  return Status::ok();
}

Status CpuForwardStages::logits(std::vector<float>& logits) {
  const int64_t V = runner_.config().vocab_size;
  size_t rows = 0;
  for (const ForwardBatch& mb : *mbs_) rows += mb.logits_rows.size();
  logits.resize(rows * static_cast<size_t>(V));
  size_t row = 0;
  for (size_t i = 0; i < mbs_->size(); ++i) {
    runner_.lm_head(state_[i].hidden.data(), (*mbs_)[i].logits_rows, logits.data() + row * V);
    row += (*mbs_)[i].logits_rows.size();
  }
  return Status::ok();
}

PipelineTimes& PipelineTimes::operator+=(const PipelineTimes& o) {
  steps += o.steps;
  attend_s += o.attend_s;
  dispatch_s += o.dispatch_s;
  wait_s += o.wait_s;
  land_s += o.land_s;
  head_s += o.head_s;
  total_s += o.total_s;
  return *this;
}

namespace {
using Clock = std::chrono::steady_clock;

// Runs `f` and adds its wall time to `into`.
template <typename F>
auto timed(double& into, F&& f) {
  const auto t0 = Clock::now();
  auto r = f();
  into += std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

// `head` is the last stage: the logits, whole or split.
template <typename Head>
Status forward_pipelined_impl(ForwardStages& stages, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                              const Head& head, PipelineTimes& t) {
  const int64_t layers = stages.config().num_layers;
  const std::vector<ForwardBatch> mbs = split_micro_batches(batch, m);
  TANDEM_RETURN_IF_ERROR(timed(t.head_s, [&] { return stages.begin(mbs, experts.device_resident()); }));
  std::vector<char> pending(mbs.size(), 0);  // experts of the previous layer still out
  // Collects micro-batch i's expert output of `layer` into its residual stream.
  auto land = [&](size_t i, int64_t layer) -> Status {
    if (pending[i]) TANDEM_RETURN_IF_ERROR(timed(t.wait_s, [&] { return experts.wait(layer, static_cast<int>(i)); }));
    pending[i] = 0;
    return timed(t.land_s, [&] { return stages.land(layer, i); });
  };
  for (int64_t l = 0; l < layers; ++l) {
    for (size_t i = 0; i < mbs.size(); ++i) {
      if (l > 0) TANDEM_RETURN_IF_ERROR(land(i, l - 1));
      TANDEM_ASSIGN_OR_RETURN(const ExpertInputs in, timed(t.attend_s, [&] { return stages.attend(l, i); }));
      if (in.moe_in) {
        TANDEM_RETURN_IF_ERROR(timed(t.dispatch_s, [&] {
          return experts.dispatch(l, static_cast<int>(i), in.moe_in, mbs[i].num_tokens(), in.topk_idx, in.topk_w,
                                  in.out);
        }));
        pending[i] = 1;
      }
    }
  }
  for (size_t i = 0; i < mbs.size(); ++i) TANDEM_RETURN_IF_ERROR(land(i, layers - 1));
  return timed(t.head_s, head);
}

template <typename Head>
Status run_and_time(ForwardStages& stages, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                    const Head& head, PipelineTimes* times) {
  PipelineTimes t;
  const auto t0 = Clock::now();
  Status st = forward_pipelined_impl(stages, batch, m, experts, head, t);
  if (!st.is_ok()) experts.abort();
  t.total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t.steps = 1;
  if (times) *times += t;
  return st;
}
}  // namespace

Status forward_pipelined(ForwardStages& stages, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                         std::vector<float>& logits, PipelineTimes* times) {
  return run_and_time(stages, batch, m, experts, [&] { return stages.logits(logits); }, times);
}

Status forward_pipelined_split(ForwardStages& stages, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                               const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                               std::vector<int32_t>& tokens, PipelineTimes* times) {
  if (greedy.size() != batch.logits_rows.size())
    return invalid_argument("forward_pipelined_split: " + std::to_string(greedy.size()) + " greedy flags for " +
                            std::to_string(batch.logits_rows.size()) + " logits rows");
  return run_and_time(stages, batch, m, experts, [&] { return stages.logits_split(greedy, logits, tokens); },
                      times);
}

Status ForwardStages::logits_split(const std::vector<uint8_t>& greedy, std::vector<float>& logits,
                                   std::vector<int32_t>& tokens) {
  std::vector<float> full;
  TANDEM_RETURN_IF_ERROR(this->logits(full));
  split_logits_rows(full, config().vocab_size, greedy, logits, tokens);
  return Status::ok();
}

void split_logits_rows(const std::vector<float>& full, int64_t vocab, const std::vector<uint8_t>& greedy,
                       std::vector<float>& logits, std::vector<int32_t>& tokens) {
  const auto V = static_cast<size_t>(vocab);
  tokens.assign(greedy.size(), -1);
  logits.clear();
  for (size_t r = 0; r < greedy.size(); ++r) {
    const float* row = full.data() + r * V;
    if (greedy[r])
      tokens[r] = kernels::cpu::argmax(row, vocab);
    else
      logits.insert(logits.end(), row, row + V);
  }
}

Status forward_pipelined(ModelRunner& runner, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                         std::vector<float>& logits) {
  CpuForwardStages stages(runner);
  return forward_pipelined(stages, batch, m, experts, logits);
}

}  // namespace tandem::engine
