#include "tandem/planner/simulator.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>

namespace tandem::planner {

namespace {

class Simulator {
 public:
  Simulator(const Plan& p, const StageTimes& t, const std::vector<bool>& moe, const SimOptions& o)
      : p_(p), t_(t), moe_(moe), opt_(o), L_(static_cast<int>(moe.size())) {
    attn_.resize(static_cast<size_t>(p.n_a));
    nic_a_.resize(static_cast<size_t>(p.n_a));
    expert_.resize(static_cast<size_t>(p.n_e));
    nic_e_.resize(static_cast<size_t>(p.n_e));
    // Arrival counters per (node, layer, micro-batch).
    e2a_recv_.assign(static_cast<size_t>(p.n_a) * L_ * p.m, 0);
    a2e_recv_.assign(static_cast<size_t>(p.n_e) * L_ * p.m, 0);
    for (int l = 0; l < L_; ++l)
      if (moe_[static_cast<size_t>(l)]) last_moe_ = l;
  }

  SimResult run() {
    for (int n = 0; n < p_.n_a; ++n) try_attention(n);
    while (!queue_.empty()) {
      Event e = queue_.top();
      queue_.pop();
      now_ = e.time;
      ++res_.events;
      e.fn();
    }
    res_.t_total = end_;
    if (end_ > 0) {
      res_.attention_busy = attn_[0].busy_time / end_;
      res_.expert_busy = expert_.empty() ? 0 : expert_[0].busy_time / end_;
    }
    return std::move(res_);
  }

 private:
  struct Task {
    int layer = 0, mb = 0;
  };
  // Attention node: walks a fixed program; pc counts finished-or-running tasks.
  struct AttnNode {
    int pc = 0;
    bool busy = false;
    double busy_time = 0;
  };
  // Expert nodes and NICs serve a FIFO of ready work.
  struct Server {
    std::deque<Task> ready;
    bool busy = false;
    double busy_time = 0;
  };
  struct Event {
    double time;
    int64_t seq;
    std::function<void()> fn;
    bool operator>(const Event& o) const { return time != o.time ? time > o.time : seq > o.seq; }
  };

  void at(double time, std::function<void()> fn) { queue_.push({time, seq_++, std::move(fn)}); }

  void record(const char* what, int pid, int tid, const Task& k, double start, double dur) {
    if (!opt_.record_trace) return;
    std::string name = std::string(what) + " L" + std::to_string(k.layer) + " mb" + std::to_string(k.mb);
    res_.trace.push_back({std::move(name), pid, tid, start, dur});
  }

  int& e2a(int n, int l, int i) { return e2a_recv_[(static_cast<size_t>(n) * L_ + l) * p_.m + i]; }
  int& a2e(int e, int l, int i) { return a2e_recv_[(static_cast<size_t>(e) * L_ + l) * p_.m + i]; }

  // Program of an attention node: L * m layer tasks in (layer, micro-batch)
  // order, then m LM heads.
  void try_attention(int n) {
    AttnNode& a = attn_[static_cast<size_t>(n)];
    const int layer_tasks = L_ * p_.m;
    if (a.busy || a.pc >= layer_tasks + p_.m) return;
    double dur;
    Task k;
    bool is_head = a.pc >= layer_tasks;
    if (!is_head) {
      k = {a.pc / p_.m, a.pc % p_.m};
      // The residual stream of micro-batch k.mb needs the previous layer's experts back.
      if (k.layer > 0 && moe_[static_cast<size_t>(k.layer - 1)] && e2a(n, k.layer - 1, k.mb) < p_.n_e) return;
      dur = moe_[static_cast<size_t>(k.layer)] ? t_.attn : t_.dense_attn;
    } else {
      k = {L_, a.pc - layer_tasks};
      // The engine lands every micro-batch's last layer before the first LM head.
      if (last_moe_ == L_ - 1)
        for (int i = 0; i < p_.m; ++i)
          if (e2a(n, L_ - 1, i) < p_.n_e) return;
      dur = t_.head;
    }
    a.busy = true;
    a.pc += 1;
    a.busy_time += dur;
    const double start = now_;
    at(now_ + dur, [this, n, k, is_head, start, dur] {
      attn_[static_cast<size_t>(n)].busy = false;
      record(is_head ? "head" : "attn", 1, n, k, start, dur);
      if (is_head) {
        end_ = std::max(end_, now_);
      } else if (moe_[static_cast<size_t>(k.layer)]) {
        nic_a_[static_cast<size_t>(n)].ready.push_back(k);
        try_nic_a(n);
      }
      try_attention(n);
    });
  }

  double load(int e) const {
    return opt_.expert_load.empty() ? 1.0 : opt_.expert_load[static_cast<size_t>(e) % opt_.expert_load.size()];
  }

  // A FIFO resource (a NIC or an expert node): if idle, it takes its oldest
  // ready task, is busy for `dur`, records it on trace process `pid`, hands the
  // task to `done` and takes the next one.
  template <typename Done>
  void serve(std::vector<Server>& pool, int i, double dur, const char* what, int pid, Done done) {
    Server& s = pool[static_cast<size_t>(i)];
    if (s.busy || s.ready.empty()) return;
    Task k = s.ready.front();
    s.ready.pop_front();
    s.busy = true;
    s.busy_time += dur;
    const double start = now_;
    at(now_ + dur, [this, &pool, i, k, start, dur, what, pid, done] {
      pool[static_cast<size_t>(i)].busy = false;
      record(what, pid, i, k, start, dur);
      done(k);
    });
  }

  // An attention NIC sends a micro-batch's tokens to every expert node; an
  // expert node starts once all attention nodes' tokens have arrived.
  void try_nic_a(int n) {
    serve(nic_a_, n, t_.a2e_busy, "a2e", 2, [this, n](const Task& k) {
      at(now_ + t_.a2e_latency, [this, k] {
        for (int e = 0; e < p_.n_e; ++e)
          if (++a2e(e, k.layer, k.mb) == p_.n_a) {
            expert_[static_cast<size_t>(e)].ready.push_back(k);
            try_expert(e);
          }
      });
      try_nic_a(n);
    });
  }

  void try_expert(int e) {
    serve(expert_, e, t_.expert * load(e), "experts", 3, [this, e](const Task& k) {
      nic_e_[static_cast<size_t>(e)].ready.push_back(k);
      try_nic_e(e);
      try_expert(e);
    });
  }

  // An expert NIC returns the results to every attention node.
  void try_nic_e(int e) {
    serve(nic_e_, e, t_.e2a_busy * load(e), "e2a", 4, [this, e](const Task& k) {
      at(now_ + t_.e2a_latency, [this, k] {
        for (int n = 0; n < p_.n_a; ++n)
          if (++e2a(n, k.layer, k.mb) == p_.n_e) try_attention(n);
      });
      try_nic_e(e);
    });
  }

  const Plan p_;
  const StageTimes t_;
  const std::vector<bool> moe_;
  const SimOptions opt_;
  const int L_;
  int last_moe_ = -1;
  std::vector<AttnNode> attn_;
  std::vector<Server> nic_a_, expert_, nic_e_;
  std::vector<int> e2a_recv_, a2e_recv_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> queue_;
  int64_t seq_ = 0;
  double now_ = 0, end_ = 0;
  SimResult res_;
};

}  // namespace

SimResult simulate(const Plan& p, const StageTimes& t, const std::vector<bool>& layer_is_moe,
                   const SimOptions& options) {
  return Simulator(p, t, layer_is_moe, options).run();
}

std::string SimResult::chrome_trace_json() const {
  using nlohmann::json;
  json events = json::array();
  const char* process_names[] = {"", "attention nodes", "attention NICs (A2E)", "expert nodes", "expert NICs (E2A)"};
  std::vector<std::pair<int, int>> threads;
  for (int pid = 1; pid <= 4; ++pid)
    events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", process_names[pid]}}}});
  for (const auto& e : trace) {
    const std::pair<int, int> th{e.pid, e.tid};
    if (std::find(threads.begin(), threads.end(), th) == threads.end()) {
      threads.push_back(th);
      const std::string kind = e.pid <= 2 ? "attention " : "expert ";
      events.push_back({{"name", "thread_name"},
                        {"ph", "M"},
                        {"pid", e.pid},
                        {"tid", e.tid},
                        {"args", {{"name", kind + std::to_string(e.tid)}}}});
    }
    events.push_back({{"name", e.name},
                      {"cat", process_names[e.pid]},
                      {"ph", "X"},
                      {"pid", e.pid},
                      {"tid", e.tid},
                      {"ts", e.start * 1e6},
                      {"dur", e.duration * 1e6}});
  }
  return json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump(1);
}

}  // namespace tandem::planner
