// Process-edge helpers for long-running roles: block SIGINT/SIGTERM/SIGHUP in
// every thread (call before starting any) and wait for them on the main thread.
#pragma once

#include <csignal>

namespace tandem::cli {

inline sigset_t block_termination_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);  // a reload (the router's keys and access log), never a stop
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// SIGINT or SIGTERM; each SIGHUP before it calls `on_hangup`.
template <typename OnHangup>
int wait_for_termination(const sigset_t& set, const OnHangup& on_hangup) {
  for (;;) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig != SIGHUP) return sig;
    on_hangup();
  }
}

}  // namespace tandem::cli
