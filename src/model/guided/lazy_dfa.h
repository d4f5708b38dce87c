// A ByteAutomaton whose transitions are computed once and kept in a table.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "tandem/model/guided.h"

namespace tandem::model::guided {

// States a guide may build before it gives up: 256 transitions of 4 bytes
// each, so 50 MiB of tables at the limit (plus what a state remembers: the
// regex automaton bounds its NFA sets separately). GuideCache retires a
// guide at half of it.
inline constexpr size_t kMaxDfaStates = 50000;

class LazyDfa : public ByteAutomaton {
 public:
  int32_t next(int32_t state, uint8_t byte) final {
    if (state < 0) return kDead;
    const auto row = static_cast<size_t>(state);
    if (table_[row][byte] != kUnknown) return table_[row][byte];
    lost_ = false;
    const int32_t t = compute_next(state, byte);  // may grow table_: no reference held across it
    // A transition lost to a limit is not a dead end: left unknown, so no
    // later walk mistakes it for one (the error ends the walks instead).
    // Real dead ends are kept, error or not.
    if (t != kDead || !lost_) table_[row][byte] = t;
    return t;
  }
  Status error() const final { return error_; }
  const int32_t* transitions(int32_t state) const final {
    return state < 0 ? nullptr : table_[static_cast<size_t>(state)].data();
  }

 protected:
  // The state after `byte` (kDead: none), built with add_state().
  virtual int32_t compute_next(int32_t state, uint8_t byte) = 0;
  // A new state's id, or kDead (and error()) past kMaxDfaStates.
  int32_t add_state() {
    if (table_.size() >= kMaxDfaStates) {
      fail(resource_exhausted("guided decoding: the grammar's automaton outgrew " + std::to_string(kMaxDfaStates) +
                              " states"));
      return kDead;
    }
    std::array<int32_t, 256> row;
    row.fill(kUnknown);
    table_.push_back(row);
    return static_cast<int32_t>(table_.size() - 1);
  }
  // A limit refused a state: the transition being computed is lost, not dead.
  void fail(Status st) {
    lost_ = true;
    if (error_.is_ok()) error_ = std::move(st);
  }

 public:
  size_t states() const final { return table_.size(); }

 private:
  bool lost_ = false;
  std::vector<std::array<int32_t, 256>> table_;
  Status error_ = Status::ok();
};

}  // namespace tandem::model::guided
