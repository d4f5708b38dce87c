#include <algorithm>

#include "tandem/engine/expert_executor.h"

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
        if (std::find(b.logits_rows.begin(), b.logits_rows.end(), static_cast<int32_t>(t)) != b.logits_rows.end())
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

namespace {
Status forward_pipelined_impl(ModelRunner& runner, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                              std::vector<float>& logits) {
  const auto& c = runner.config();
  const int64_t H = c.hidden_size, K = c.moe.top_k;
  std::vector<ForwardBatch> mbs = split_micro_batches(batch, m);
  struct State {
    std::vector<float> hidden, moe_in, moe_out, topk_w;
    std::vector<int32_t> topk_idx;
    bool pending = false;  // experts of the previous layer still out
  };
  std::vector<State> st(mbs.size());
  for (size_t i = 0; i < mbs.size(); ++i) {
    const size_t n = static_cast<size_t>(mbs[i].num_tokens());
    st[i].hidden.resize(n * H);
    st[i].moe_in.resize(n * H);
    st[i].moe_out.resize(n * H);
    st[i].topk_idx.resize(n * K);
    st[i].topk_w.resize(n * K);
    runner.embed(mbs[i], st[i].hidden.data());
  }
  // Collects micro-batch i's expert output of `layer` into its residual stream.
  auto land = [&](size_t i, int64_t layer) -> Status {
    State& s = st[i];
    if (s.pending) TANDEM_RETURN_IF_ERROR(experts.wait(layer, static_cast<int>(i)));
    s.pending = false;
    for (size_t j = 0; j < s.hidden.size(); ++j) s.hidden[j] += s.moe_out[j];
    return Status::ok();
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const bool moe = runner.layer_is_moe(l);
    for (size_t i = 0; i < mbs.size(); ++i) {
      State& s = st[i];
      const int64_t n = mbs[i].num_tokens();
      if (l > 0) TANDEM_RETURN_IF_ERROR(land(i, l - 1));
      runner.attention(l, mbs[i], s.hidden.data(), s.moe_in.data());
      std::fill(s.moe_out.begin(), s.moe_out.end(), 0.0f);
      // Work that stays here (dense MLP or shared expert) goes into moe_out first.
      runner.local_ffn(l, s.moe_in.data(), n, s.moe_out.data());
      if (moe) {
        runner.route(l, s.moe_in.data(), n, s.topk_idx.data(), s.topk_w.data());
        TANDEM_RETURN_IF_ERROR(experts.dispatch(l, static_cast<int>(i), s.moe_in.data(), n, s.topk_idx.data(),
                                                s.topk_w.data(), s.moe_out.data()));
        s.pending = true;
      }
    }
  }
  for (size_t i = 0; i < mbs.size(); ++i) TANDEM_RETURN_IF_ERROR(land(i, c.num_layers - 1));

  logits.resize(batch.logits_rows.size() * static_cast<size_t>(c.vocab_size));
  size_t row = 0;
  for (size_t i = 0; i < mbs.size(); ++i) {
    runner.lm_head(st[i].hidden.data(), mbs[i].logits_rows, logits.data() + row * c.vocab_size);
    row += mbs[i].logits_rows.size();
  }
  return Status::ok();
}
}  // namespace

Status forward_pipelined(ModelRunner& runner, const ForwardBatch& batch, int m, ExpertExecutor& experts,
                         std::vector<float>& logits) {
  Status st = forward_pipelined_impl(runner, batch, m, experts, logits);
  if (!st.is_ok()) experts.abort();
  return st;
}

}  // namespace tandem::engine
