// What the attention side's device-resident data planes (cuda_ipc, nccl)
// share: activations move GPU to GPU, the routing and sequence numbers over
// UCX. Per MoE layer and micro-batch, dispatch() picks each expert node's
// routed rows and hands them to the backend's send_rows(), then announces them
// (send_device_dispatch); wait() receives each node's combine
// (await_device_combine) and has the backend add the node's sum into the
// residual update (add_answer, usually via scatter_answer). A backend error
// on a link goes to on_link_error() (e.g. to tear the link down) and fails
// the step.
#pragma once

#if TANDEM_HAVE_CUDA

#include <map>
#include <memory>
#include <vector>

#include "expert_links.h"
#include "tandem/engine/expert_executor.h"
#include "tandem/kernels/cuda.h"

namespace tandem::attention {

class DeviceExpertExecutor : public engine::ExpertExecutor {
 public:
  bool device_resident() const override { return true; }
  Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                  const float* topk_w, float* out) final;
  Status wait(int64_t layer, int mb) final;
  void abort() override { pending_.clear(); }

 protected:
  struct Link : ExpertLink {
    std::vector<uint64_t> seq;                 // last sequence number sent, per micro-batch
    std::vector<transport::SendSlot> control;  // registered UCX buffers, per micro-batch
  };
  struct Sent {
    size_t link;
    uint64_t seq;  // of the dispatch, echoed by the answer
    int64_t rows;  // tokens sent
  };
  struct Pending {
    float* out = nullptr;  // device [n, hidden]
    uint64_t step = 0;
    std::vector<Sent> sent;
  };

  DeviceExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int rank);

  // For the subclass's create(): takes its links (one per expert node, from
  // make_expert_links), sizes their per-micro-batch state, opens the UCX
  // transport and uploads the unit weights of scatter_answer.
  template <typename LinkT>
  Status init(std::vector<std::unique_ptr<LinkT>> links) {
    for (auto& l : links) links_.push_back(std::move(l));
    return init_common();
  }
  template <typename LinkT>
  LinkT& link_as(size_t i) {
    return static_cast<LinkT&>(*links_[i]);
  }
  size_t links() const { return links_.size(); }
  // The step the next dispatch will carry.
  uint64_t next_step() const { return next_step_; }

  // Before each dispatch, for every link: OK when it can carry the step
  // (set up or re-dialled as needed).
  virtual Status connected(size_t link) = 0;
  // Moves this micro-batch's `rows` (indices into moe_in [n, hidden], device)
  // towards the link's node under sequence number `seq`, enqueued after the
  // work on this thread's stream that produced moe_in.
  virtual Status send_rows(size_t link, size_t slot, const float* moe_in, const std::vector<int32_t>& rows,
                           uint64_t seq) = 0;
  // Once the node's combine for `sent` has arrived: adds its sum into `out`.
  virtual Status add_answer(size_t link, size_t slot, const Sent& sent, float* out) = 0;
  // After every answer of a micro-batch was added.
  virtual Status finish_wait(const Pending&) { return Status::ok(); }
  virtual void on_link_error(size_t) {}

  // out[rows[i]] += sums[i] for the `n` rows of a device row list.
  Status scatter_answer(const float* sums, const int32_t* device_rows, int64_t n, float* out) const;

  const api::DeploymentConfig cfg_;
  const model::ModelConfig& model_;
  const int rank_;
  const size_t slot_bytes_;  // one micro-batch of FP32 activations at most
  std::unique_ptr<transport::Transport> transport_;

 private:
  Status init_common();

  std::vector<std::unique_ptr<Link>> links_;
  std::map<std::pair<int64_t, int>, Pending> pending_;
  uint64_t next_step_ = 1;
  kernels::cuda::DeviceBuffer unit_weights_;  // weight 1 for every row: a node's sum is added as is
};

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
