// UCX implementation of Transport. All worker calls happen on one progress
// thread; caller threads hand it work through a command queue + eventfd.
// UCX callbacks only record what happened; anything that sends, accepts or
// closes runs right after ucp_worker_progress() returns (the "deferred" list).
#include "tandem/transport/ucx_transport.h"

#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <list>
#include <map>
#include <set>
#include <thread>
#include <unordered_map>

#include "../transport_base.h"
#include "tandem/common/logging.h"
#include "ucx_handles.h"

namespace tandem::transport {
namespace {

using Clock = std::chrono::steady_clock;
using ucx::ucx_error;

constexpr unsigned kAmId = 17;
constexpr auto kRedialDelay = std::chrono::milliseconds(100);
constexpr auto kCloseGrace = std::chrono::milliseconds(1000);

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

Result<SockAddr> resolve(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return invalid_argument("cannot resolve " + host + ": " + gai_strerror(rc));
  }
  SockAddr a;
  std::memcpy(&a.storage, res->ai_addr, res->ai_addrlen);
  a.length = res->ai_addrlen;
  freeaddrinfo(res);
  return a;
}

uint16_t port_of(const sockaddr_storage& s) {
  if (s.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(s).sin_port);
  if (s.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(s).sin6_port);
  return 0;
}

class EventFd {
 public:
  EventFd() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  EventFd(const EventFd&) = delete;
  EventFd& operator=(const EventFd&) = delete;
  ~EventFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  void signal() const {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof(one));
  }
  void drain() const {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd_, &v, sizeof(v));
  }

 private:
  int fd_;
};

class UcxTransport final : public detail::TransportBase {
 public:
  UcxTransport(const UcxOptions& options, std::shared_ptr<ucx::Context> context)
      : TransportBase(options.self, std::make_shared<ucx::Registrar>(context)),
        options_(options),
        context_(std::move(context)) {}
  ~UcxTransport() override;

  Status start();
  PeerAddress address() const override { return address_; }
  Status connect(std::span<const PeerAddress> peers, std::chrono::milliseconds timeout) override;

 protected:
  void post_send(std::shared_ptr<detail::SendState> op) override {
    post([this, op = std::move(op)] { do_send(op); });
  }

 private:
  struct Connection {
    UcxTransport* owner = nullptr;
    ucx::Endpoint ep;
    std::optional<NodeId> peer;          // known from the start when we dialed, else from HELLO
    std::optional<PeerAddress> dialed;   // set when we dialed
    bool established = false;
    bool failed = false;
  };
  struct RndvRecv {
    NodeId from;
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

  void dial(const PeerAddress& peer, const SockAddr& addr);
  void accept(ucp_conn_request_h request);
  void connection_failed(Connection* c, ucs_status_t status);
  void close_connection(Connection* c, bool force);
  void send_handshake(Connection* c, MessageKind kind);
  void on_handshake(Connection* c, const MessageHeader& h);
  void mark_established(const NodeId& id);
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
  std::shared_ptr<ucx::Context> context_;
  ucx::Worker worker_;
  ucx::Listener listener_;  // after worker_: destroyed first
  PeerAddress address_;
  EventFd wakeup_;
  int worker_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  std::mutex cmd_mu_;
  std::vector<std::function<void()>> commands_;  // guarded by cmd_mu_

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

Status UcxTransport::start() {
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  // One thread at a time: created here, then driven by the progress thread only.
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucp_worker_h w = nullptr;
  if (ucs_status_t st = ucp_worker_create(context_->get(), &wp, &w); st != UCS_OK) {
    return ucx_error(st, "ucp_worker_create");
  }
  worker_ = ucx::Worker(w);
  if (ucs_status_t st = ucp_worker_get_efd(w, &worker_fd_); st != UCS_OK) return ucx_error(st, "ucp_worker_get_efd");
  if (wakeup_.fd() < 0) return internal_error(std::string("eventfd: ") + std::strerror(errno));

  ucp_am_handler_param_t ap{};
  ap.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  ap.id = kAmId;
  ap.cb = &UcxTransport::on_am;
  ap.arg = this;
  if (ucs_status_t st = ucp_worker_set_am_recv_handler(w, &ap); st != UCS_OK) {
    return ucx_error(st, "ucp_worker_set_am_recv_handler");
  }

  TANDEM_ASSIGN_OR_RETURN(SockAddr listen_addr, resolve(options_.listen_host, options_.listen_port));
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = listen_addr.get();
  lp.sockaddr.addrlen = listen_addr.length;
  lp.conn_handler.cb = &UcxTransport::on_conn_request;
  lp.conn_handler.arg = this;
  ucp_listener_h l = nullptr;
  if (ucs_status_t st = ucp_listener_create(w, &lp, &l); st != UCS_OK) {
    return ucx_error(st, "listen on " + options_.listen_host + ":" + std::to_string(options_.listen_port));
  }
  listener_ = ucx::Listener(l);
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (ucs_status_t st = ucp_listener_query(l, &la); st != UCS_OK) return ucx_error(st, "ucp_listener_query");
  address_ = {self(), options_.listen_host, port_of(la.sockaddr)};

  thread_ = std::thread([this] { run(); });
  return Status::ok();
}

UcxTransport::~UcxTransport() {
  close_inbox(unavailable(to_string(self()) + " shut down"));
  if (thread_.joinable()) {
    stop_ = true;
    wakeup_.signal();
    thread_.join();
  }
}

void UcxTransport::post(std::function<void()> fn) {
  {
    std::lock_guard lock(cmd_mu_);
    commands_.push_back(std::move(fn));
  }
  wakeup_.signal();
}

// ---------------------------------------------------------------------------
// Progress thread

void UcxTransport::run() {
  ucp_worker_h w = worker_.get();
  auto last_activity = Clock::now();
  while (true) {
    bool busy = run_commands();
    while (ucp_worker_progress(w) != 0) busy = true;
    busy = run_deferred() || busy;
    busy = run_redials() || busy;
    if (stop_) break;
    const auto now = Clock::now();
    if (busy) {
      last_activity = now;
      continue;
    }
    if (now - last_activity < options_.busy_poll) continue;
    // Sleep until UCX or a caller has something; arming fails if events are pending.
    if (ucp_worker_arm(w) == UCS_ERR_BUSY) continue;
    int timeout_ms = 200;
    for (const auto& [when, peer] : redials_) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(when - now).count();
      timeout_ms = std::clamp<int>(static_cast<int>(ms) + 1, 0, timeout_ms);
    }
    pollfd fds[2] = {{worker_fd_, POLLIN, 0}, {wakeup_.fd(), POLLIN, 0}};
    ::poll(fds, 2, timeout_ms);
    if (fds[1].revents & POLLIN) wakeup_.drain();
  }
  shutdown_progress();
}

bool UcxTransport::run_commands() {
  std::vector<std::function<void()>> cmds;
  {
    std::lock_guard lock(cmd_mu_);
    cmds.swap(commands_);
  }
  for (auto& c : cmds) c();
  return !cmds.empty();
}

bool UcxTransport::run_deferred() {
  bool any = false;
  // Deferred work may defer more (e.g. a failure found while sending).
  while (!deferred_.empty() || !pending_rndv_.empty()) {
    any = true;
    auto work = std::move(deferred_);
    deferred_.clear();
    for (auto& fn : work) fn();
    auto rndv = std::move(pending_rndv_);
    pending_rndv_.clear();
    for (auto& p : rndv) start_rndv(std::move(p));
  }
  return any;
}

bool UcxTransport::run_redials() {
  if (redials_.empty()) return false;
  const auto now = Clock::now();
  std::vector<PeerAddress> due;
  std::erase_if(redials_, [&](const auto& r) {
    if (r.first > now) return false;
    due.push_back(r.second);
    return true;
  });
  for (const auto& p : due) dial(p, dial_addrs_.at(p.id));
  return !due.empty();
}

void UcxTransport::shutdown_progress() {
  ucp_worker_h w = worker_.get();
  listener_.reset();
  // Flush, so messages already sent reach healthy peers before they see us go.
  for (auto& c : conns_) close_connection(c.get(), /*force=*/false);
  run_commands();  // sends posted meanwhile fail as "not connected"
  const auto deadline = Clock::now() + kCloseGrace;
  while (!closing_.empty() && Clock::now() < deadline) {
    ucp_worker_progress(w);
    run_deferred();
    std::erase_if(closing_, [](void* r) {
      if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
      ucp_request_free(r);
      return true;
    });
  }
  for (auto& p : pending_rndv_) ucp_am_data_release(w, p.desc);
  pending_rndv_.clear();
  // Destroying the worker completes what is still outstanding, possibly through
  // our callbacks, so it happens while the maps they use are alive. Requests
  // it does not complete die with it.
  worker_.reset();
  for (auto& [req, op] : sends_) {
    op->complete({StatusCode::kCancelled, to_string(self()) + " shut down with the send in flight"});
  }
  sends_.clear();
  recvs_.clear();
  closing_.clear();
  deferred_.clear();
}

// ---------------------------------------------------------------------------
// Connections

Status UcxTransport::connect(std::span<const PeerAddress> peers, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  TANDEM_RETURN_IF_ERROR(set_peers(peers));
  std::set<NodeId> ids;
  std::vector<std::pair<PeerAddress, SockAddr>> dials;
  for (const PeerAddress& p : peers) {
    ids.insert(p.id);
    // The smaller id of a pair dials, so each pair gets exactly one connection.
    if (self() < p.id) {
      auto addr = resolve(p.host, p.port);
      if (!addr.is_ok()) return addr.status().with_context("peer " + to_string(p));
      dials.emplace_back(p, *addr);
    }
  }
  post([this, ids, dials, deadline] {
    expected_ = ids;
    have_expected_ = true;
    dial_deadline_ = deadline;
    // Peers that connected before we knew the peer list but do not belong.
    for (auto& c : conns_) {
      if (c->peer && !ids.count(*c->peer) && !c->failed) {
        TANDEM_LOG_WARN("{}: dropping connection from {}, not a peer", to_string(self()), to_string(*c->peer));
        close_connection(c.get(), /*force=*/true);
      }
    }
    for (const auto& [peer, addr] : dials) {
      dial_addrs_[peer.id] = addr;
      dial(peer, addr);
    }
  });

  std::unique_lock lock(conn_mu_);
  auto all_up = [&] {
    return std::all_of(ids.begin(), ids.end(), [&](const NodeId& id) { return established_.count(id) > 0; });
  };
  if (conn_cv_.wait_until(lock, deadline, all_up)) return Status::ok();
  std::string missing;
  std::vector<NodeId> missing_ids;
  for (const PeerAddress& p : peers) {
    if (established_.count(p.id)) continue;
    missing_ids.push_back(p.id);
    missing += (missing.empty() ? "" : ", ") + to_string(p);
    if (auto it = dial_errors_.find(p.id); it != dial_errors_.end()) missing += " (" + it->second + ")";
  }
  lock.unlock();
  Status st{StatusCode::kDeadlineExceeded,
            to_string(self()) + " connect: no " + missing + " within " + std::to_string(timeout.count()) + " ms"};
  // Operations on the missing peers fail fast from now on instead of timing out.
  for (const NodeId& id : missing_ids) fail_link(id, unavailable("never connected: " + st.message()));
  return st;
}

void UcxTransport::dial(const PeerAddress& peer, const SockAddr& addr) {
  auto owned = std::make_unique<Connection>();
  Connection* c = owned.get();
  c->owner = this;
  c->peer = peer.id;
  c->dialed = peer;
  conns_.push_back(std::move(owned));

  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  p.sockaddr.addr = addr.get();
  p.sockaddr.addrlen = addr.length;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = &UcxTransport::on_ep_error;
  p.err_handler.arg = c;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t st = ucp_ep_create(worker_.get(), &p, &ep); st != UCS_OK) {
    deferred_.push_back([this, c, st] { connection_failed(c, st); });
    return;
  }
  c->ep = ucx::Endpoint(ep);
  by_ep_[ep] = c;
  send_handshake(c, MessageKind::kHello);
}

void UcxTransport::accept(ucp_conn_request_h request) {
  auto owned = std::make_unique<Connection>();
  Connection* c = owned.get();
  c->owner = this;
  conns_.push_back(std::move(owned));
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.conn_request = request;
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = &UcxTransport::on_ep_error;
  p.err_handler.arg = c;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t st = ucp_ep_create(worker_.get(), &p, &ep); st != UCS_OK) {
    TANDEM_LOG_WARN("{}: cannot accept a connection: {}", to_string(self()), ucs_status_string(st));
    c->failed = true;
    return;
  }
  c->ep = ucx::Endpoint(ep);
  by_ep_[ep] = c;
}

void UcxTransport::close_connection(Connection* c, bool force) {
  if (c->ep.get()) by_ep_.erase(c->ep.get());
  if (void* r = c->ep.close(force)) closing_.push_back(r);
  if (c->peer) {
    auto it = by_peer_.find(*c->peer);
    if (it != by_peer_.end() && it->second == c) by_peer_.erase(it);
  }
  c->failed = true;
}

void UcxTransport::connection_failed(Connection* c, ucs_status_t status) {
  if (c->failed) return;
  close_connection(c, /*force=*/true);
  const std::string why = ucs_status_string(status);
  if (c->dialed && !c->established) {
    {
      std::lock_guard lock(conn_mu_);
      dial_errors_[c->dialed->id] = why;
    }
    // The peer may not be listening yet: keep dialing until connect()'s deadline.
    if (!stop_ && Clock::now() + kRedialDelay < dial_deadline_) {
      redials_.emplace_back(Clock::now() + kRedialDelay, *c->dialed);
      return;
    }
  }
  if (!c->peer) return;  // an accepted connection that never said HELLO
  std::string where = c->dialed ? " at " + c->dialed->host + ":" + std::to_string(c->dialed->port) : "";
  Status st = unavailable(to_string(*c->peer) + where + (c->established ? " disconnected: " : " unreachable: ") + why);
  TANDEM_LOG_WARN("{}: {}", to_string(self()), st.message());
  fail_link(*c->peer, st);
}

void UcxTransport::send_handshake(Connection* c, MessageKind kind) {
  MessageHeader h;
  h.kind = kind;
  h.sender = self();
  auto wire = encode_header(h);
  auto op = std::make_shared<detail::SendState>(c->peer.value_or(self()), h, *wire, nullptr, nullptr, 0);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = &UcxTransport::on_send_done;
  p.user_data = this;
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  ucs_status_ptr_t r = ucp_am_send_nbx(c->ep.get(), kAmId, op->wire().data(), op->wire_bytes(), nullptr, 0, &p);
  if (UCS_PTR_IS_PTR(r)) {
    sends_.emplace(r, std::move(op));
  } else if (UCS_PTR_IS_ERR(r)) {
    deferred_.push_back([this, c, st = UCS_PTR_STATUS(r)] { connection_failed(c, st); });
  }
}

void UcxTransport::on_handshake(Connection* c, const MessageHeader& h) {
  if (c->failed) return;
  const NodeId from = h.sender;
  if (h.kind == MessageKind::kHelloAck && c->dialed && c->peer == from && !c->established) {
    c->established = true;
    by_peer_[from] = c;
    mark_established(from);
    return;
  }
  if (h.kind == MessageKind::kHello && !c->dialed && !c->peer) {
    const bool unexpected = have_expected_ && !expected_.count(from);
    const bool duplicate = by_peer_.count(from) > 0;
    if (unexpected || duplicate || from == self()) {
      TANDEM_LOG_WARN("{}: refusing connection from {} ({})", to_string(self()), to_string(from),
                      unexpected ? "not a peer" : "already connected");
      close_connection(c, /*force=*/true);
      return;
    }
    c->peer = from;
    c->established = true;
    by_peer_[from] = c;
    send_handshake(c, MessageKind::kHelloAck);
    mark_established(from);
    return;
  }
  TANDEM_LOG_WARN("{}: unexpected {} from {}", to_string(self()), kind_name(h.kind), to_string(from));
}

void UcxTransport::mark_established(const NodeId& id) {
  {
    std::lock_guard lock(conn_mu_);
    established_.insert(id);
  }
  conn_cv_.notify_all();
}

// ---------------------------------------------------------------------------
// Data path

Status UcxTransport::send_error(const NodeId& peer, ucs_status_t status) const {
  Status link = link_status(peer);
  if (!link.is_ok()) return link;
  return ucx_error(status, "send to " + to_string(peer));
}

void UcxTransport::do_send(const std::shared_ptr<detail::SendState>& op) {
  auto it = by_peer_.find(op->peer());
  if (it == by_peer_.end()) {
    Status link = link_status(op->peer());
    op->complete(link.is_ok() ? unavailable(to_string(op->peer()) + " is not connected to " + to_string(self()))
                              : link);
    return;
  }
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS |
                   UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  p.cb.send = &UcxTransport::on_send_done;
  p.user_data = this;
  // REPLY: the receiver learns which endpoint (so which peer) a message came
  // on even when the header is garbage.
  p.flags = UCP_AM_SEND_FLAG_REPLY;
  p.memory_type = UCS_MEMORY_TYPE_HOST;
  if (op->memory_handle()) {
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    p.memh = static_cast<ucp_mem_h>(op->memory_handle());
  }
  ucs_status_ptr_t r = ucp_am_send_nbx(it->second->ep.get(), kAmId, op->wire().data(), op->wire_bytes(), op->data(),
                                       op->bytes(), &p);
  if (r == nullptr) {
    op->complete(Status::ok());
  } else if (UCS_PTR_IS_ERR(r)) {
    op->complete(send_error(op->peer(), UCS_PTR_STATUS(r)));
  } else {
    sends_.emplace(r, op);
  }
}

void UcxTransport::start_rndv(PendingRndv p) {
  ucp_request_param_t prm{};
  prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  prm.cb.recv_am = &UcxTransport::on_rndv_done;
  prm.user_data = this;
  prm.memory_type = UCS_MEMORY_TYPE_HOST;
  if (void* memh = p.recv.slot->handle()) {
    prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    prm.memh = static_cast<ucp_mem_h>(memh);
  }
  ucs_status_ptr_t r =
      ucp_am_recv_data_nbx(worker_.get(), p.desc, p.recv.slot->data(), p.recv.header.payload_bytes, &prm);
  if (r == nullptr) {
    finish_rndv(std::move(p.recv), UCS_OK);
  } else if (UCS_PTR_IS_ERR(r)) {
    finish_rndv(std::move(p.recv), UCS_PTR_STATUS(r));
  } else {
    recvs_.emplace(r, std::move(p.recv));
  }
}

void UcxTransport::finish_rndv(RndvRecv r, ucs_status_t status) {
  if (status == UCS_OK) {
    deliver(r.header, std::move(r.slot));
    return;
  }
  // Usually the peer died, which its endpoint reports as well; without that
  // the message is lost, which must not pass silently either.
  Status link = link_status(r.from);
  poison(r.from, link.is_ok() ? ucx_error(status, "receive from " + to_string(r.from) + " failed") : link);
}

// ---------------------------------------------------------------------------
// UCX callbacks (inside ucp_worker_progress on the progress thread)

void UcxTransport::on_conn_request(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<UcxTransport*>(arg);
  if (self->stop_) {
    ucp_listener_reject(self->listener_.get(), request);
    return;
  }
  self->deferred_.push_back([self, request] { self->accept(request); });
}

void UcxTransport::on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* c = static_cast<Connection*>(arg);
  c->owner->deferred_.push_back([c, status] { c->owner->connection_failed(c, status); });
}

void UcxTransport::on_send_done(void* request, ucs_status_t status, void* user_data) {
  auto* self = static_cast<UcxTransport*>(user_data);
  auto it = self->sends_.find(request);
  if (it != self->sends_.end()) {
    it->second->complete(status == UCS_OK ? Status::ok() : self->send_error(it->second->peer(), status));
    self->sends_.erase(it);
  }
  ucp_request_free(request);
}

void UcxTransport::on_rndv_done(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* self = static_cast<UcxTransport*>(user_data);
  auto it = self->recvs_.find(request);
  if (it != self->recvs_.end()) {
    RndvRecv r = std::move(it->second);
    self->recvs_.erase(it);
    self->finish_rndv(std::move(r), status);
  }
  ucp_request_free(request);
}

ucs_status_t UcxTransport::on_am(void* arg, const void* header, size_t header_length, void* data, size_t length,
                                 const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxTransport*>(arg);
  Connection* c = nullptr;
  if (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) {
    auto it = self->by_ep_.find(param->reply_ep);
    if (it != self->by_ep_.end()) c = it->second;
  }
  if (!c || c->failed) return UCS_OK;  // late traffic on a closed connection: dropped
  const std::span<const std::byte> wire(static_cast<const std::byte*>(header), header_length);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;

  if (auto h = decode_header(wire);
      h.is_ok() && (h->kind == MessageKind::kHello || h->kind == MessageKind::kHelloAck) && length == 0) {
    self->deferred_.push_back([self, c, hdr = *h] { self->on_handshake(c, hdr); });
    return UCS_OK;
  }
  if (!c->peer) {
    TANDEM_LOG_WARN("{}: data before HELLO on a connection; closing it", to_string(self->self()));
    self->deferred_.push_back([self, c] { self->close_connection(c, /*force=*/true); });
    return UCS_OK;
  }
  const NodeId from = *c->peer;
  auto h = self->accept_header(from, wire, length);
  if (!h.is_ok()) {
    TANDEM_LOG_WARN("{}: {}", to_string(self->self()), h.status().message());
    return UCS_OK;  // a rendezvous descriptor is dropped by UCX on UCS_OK
  }
  auto slot = self->acquire_slot(length);
  if (!slot.is_ok()) {
    self->poison(from, slot.status());
    return UCS_OK;
  }
  if (!rndv) {
    // Eager data lives in UCX's buffer only during this callback: the one copy.
    if (length > 0) std::memcpy((*slot)->data(), data, length);
    self->deliver(*h, std::move(*slot));
    return UCS_OK;
  }
  // Rendezvous: UCX fetches straight into the registered slot, after progress returns.
  self->pending_rndv_.push_back({data, RndvRecv{from, *h, std::move(*slot)}});
  return UCS_INPROGRESS;
}

}  // namespace

Result<std::unique_ptr<Transport>> create_ucx_transport(const UcxOptions& options) {
  TANDEM_ASSIGN_OR_RETURN(auto context, ucx::Context::create(options.ucx_config));
  auto t = std::make_unique<UcxTransport>(options, std::move(context));
  TANDEM_RETURN_IF_ERROR(t->start().with_context("UCX transport of " + to_string(options.self)));
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace tandem::transport
