// Process-edge helpers for long-running roles: block SIGINT/SIGTERM in every
// thread (call before starting any) and wait for one on the main thread.
#pragma once

#include <csignal>

namespace tandem::cli {

inline sigset_t block_termination_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

inline int wait_for_termination(const sigset_t& set) {
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

}  // namespace tandem::cli
