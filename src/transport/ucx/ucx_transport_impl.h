// The UCX Transport, shared by its three source files:
//   ucx_transport.cpp   lifecycle and the progress loop
//   ucx_connections.cpp connect(), dialing, accepting, handshake, peer failure
//   ucx_data_path.cpp   sends, receives (eager and rendezvous), UCX callbacks
//
// All worker calls happen on one progress thread; caller threads hand it work
// through a command queue + eventfd. UCX callbacks only record what happened;
// anything that sends, accepts or closes runs right after ucp_worker_progress()
// returns (the "deferred" list), outside UCX's callback context.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <map>
#include <set>
#include <thread>
#include <unordered_map>

#include "../transport_base.h"
#include "os_handles.h"
#include "tandem/transport/ucx_transport.h"
#include "ucx_handles.h"

namespace tandem::transport::ucx {

using Clock = std::chrono::steady_clock;

inline constexpr unsigned kAmId = 17;
inline constexpr auto kRedialDelay = std::chrono::milliseconds(100);
inline constexpr auto kCloseGrace = std::chrono::milliseconds(1000);

class UcxTransport final : public detail::TransportBase {
 public:
  UcxTransport(const UcxOptions& options, std::shared_ptr<Context> context)
      : TransportBase(options.self, std::make_shared<Registrar>(context)),
        options_(options),
        context_(std::move(context)) {}
  ~UcxTransport() override;

  Status start();
  PeerAddress address() const override { return address_; }
  Status connect(std::span<const PeerAddress> peers, std::chrono::milliseconds timeout) override;
  Status expect(std::span<const NodeId> peers) override;
  Status reconnect(const PeerAddress& peer, std::chrono::milliseconds timeout) override;

 protected:
  void post_send(std::shared_ptr<detail::SendState> op) override {
    post([this, op = std::move(op)] { do_send(op); });
  }

 private:
  struct Connection {
    UcxTransport* owner = nullptr;
    Endpoint ep;
    std::optional<NodeId> peer;          // known from the start when we dialed, else from HELLO
    std::optional<PeerAddress> dialed;   // set when we dialed
    bool established = false;
    bool failed = false;
  };
  struct RndvRecv {
    NodeId from;
    uint64_t incarnation = 0;  // of `from` when the message arrived
    MessageHeader header;
    std::unique_ptr<detail::RecvSlot> slot;
  };
  struct PendingRndv {
    void* desc;
    RndvRecv recv;
  };

  void post(std::function<void()> fn);
  void run();
  bool run_commands();
  bool run_deferred();
  bool run_redials();
  void shutdown_progress();

  // Fixes the peer set on the progress thread and drops connections outside it.
  void set_expected(const std::set<NodeId>& ids);
  void dial(const PeerAddress& peer, const SockAddr& addr);
  void accept(ucp_conn_request_h request);
  void connection_failed(Connection* c, ucs_status_t status);
  void close_connection(Connection* c, bool force);
  void send_handshake(Connection* c, MessageKind kind);
  void on_handshake(Connection* c, const MessageHeader& h);
  void mark_established(const NodeId& id);
  // Makes `c` the connection of `peer`, closing the one it replaces.
  void adopt(Connection* c, const NodeId& peer);
  void do_send(const std::shared_ptr<detail::SendState>& op);
  void start_rndv(PendingRndv p);
  void finish_rndv(RndvRecv r, ucs_status_t status);
  Status send_error(const NodeId& peer, ucs_status_t status) const;

  static void on_conn_request(ucp_conn_request_h request, void* arg);
  static void on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t on_am(void* arg, const void* header, size_t header_length, void* data, size_t length,
                            const ucp_am_recv_param_t* param);
  static void on_send_done(void* request, ucs_status_t status, void* user_data);
  static void on_rndv_done(void* request, ucs_status_t status, size_t length, void* user_data);

  const UcxOptions options_;
  std::shared_ptr<Context> context_;
  Worker worker_;
  Listener listener_;  // after worker_: destroyed first
  PeerAddress address_;
  EventFd wakeup_;
  int worker_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  std::mutex cmd_mu_;
  std::vector<std::function<void()>> commands_;  // guarded by cmd_mu_
  // Set (seq_cst) by the progress thread before it checks commands_ one last
  // time and sleeps; post() signals only then.
  std::atomic<bool> sleeping_{false};

  // What connect() waits for.
  std::mutex conn_mu_;
  std::condition_variable conn_cv_;
  std::set<NodeId> established_;                 // guarded by conn_mu_
  std::map<NodeId, std::string> dial_errors_;    // guarded by conn_mu_

  // Progress thread only. Connections are never freed before shutdown, so
  // deferred work may hold their pointers; failed ones just lose their ep.
  std::list<std::unique_ptr<Connection>> conns_;
  std::unordered_map<ucp_ep_h, Connection*> by_ep_;
  std::map<NodeId, Connection*> by_peer_;  // established and healthy
  std::vector<std::function<void()>> deferred_;
  std::vector<PendingRndv> pending_rndv_;
  std::unordered_map<void*, std::shared_ptr<detail::SendState>> sends_;
  std::unordered_map<void*, RndvRecv> recvs_;
  std::vector<void*> closing_;
  std::vector<std::pair<Clock::time_point, PeerAddress>> redials_;
  std::map<NodeId, SockAddr> dial_addrs_;
  std::set<NodeId> expected_;
  bool have_expected_ = false;
  Clock::time_point dial_deadline_{};
};

}  // namespace tandem::transport::ucx
