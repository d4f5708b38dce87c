// Lifecycle and progress loop of the UCX transport (see ucx_transport_impl.h).
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "ucx_transport_impl.h"

namespace tandem::transport {
namespace ucx {

Status UcxTransport::start() {
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  // One thread at a time: created here, then driven by the progress thread only.
  wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  ucp_worker_h w = nullptr;
  if (ucs_status_t st = ucp_worker_create(context_->get(), &wp, &w); st != UCS_OK) {
    return ucx_error(st, "ucp_worker_create");
  }
  worker_ = Worker(w);
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
  listener_ = Listener(l);
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
  // Saves a syscall per send while the progress thread is awake anyway.
  if (sleeping_) wakeup_.signal();
}

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
    sleeping_ = true;
    {
      // A command queued before sleeping_ was visible did not signal: look once more.
      std::lock_guard lock(cmd_mu_);
      if (!commands_.empty()) {
        sleeping_ = false;
        continue;
      }
    }
    int timeout_ms = 200;
    for (const auto& [when, peer] : redials_) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(when - now).count();
      timeout_ms = std::clamp<int>(static_cast<int>(ms) + 1, 0, timeout_ms);
    }
    pollfd fds[2] = {{worker_fd_, POLLIN, 0}, {wakeup_.fd(), POLLIN, 0}};
    ::poll(fds, 2, timeout_ms);
    sleeping_ = false;
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
  listener_.reset();  // connection requests still deferred are dropped by accept()
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
  // Whatever did not close in time is dropped: no endpoint may outlive the worker.
  for (auto& c : conns_) {
    if (c->ep.get()) close_connection(c.get(), /*force=*/true);
  }
  for (void* r : closing_) ucp_request_free(r);
  closing_.clear();
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
  deferred_.clear();
}

}  // namespace ucx

UcxOptions ucx_node_options(NodeId self, const std::string& host, bool shared_memory) {
  UcxOptions o;
  o.self = self;
  o.listen_host = host;
  o.listen_port = 0;
  if (!std::getenv("UCX_TLS")) o.ucx_config.emplace_back("TLS", shared_memory ? "tcp,sysv,posix,cma,self" : "tcp");
  // Without it UCX 1.13 leaves shared memory out of endpoints that ask for
  // peer failure handling (openucx/ucx#8477).
  if (shared_memory) o.ucx_config.emplace_back("MM_ERROR_HANDLING", "y");
  const bool loopback = host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
  if (loopback && !std::getenv("UCX_NET_DEVICES")) o.ucx_config.emplace_back("NET_DEVICES", "lo");
  return o;
}

Result<std::unique_ptr<Transport>> create_ucx_transport(const UcxOptions& options) {
  TANDEM_ASSIGN_OR_RETURN(auto context, ucx::Context::create(options.ucx_config));
  auto t = std::make_unique<ucx::UcxTransport>(options, std::move(context));
  TANDEM_RETURN_IF_ERROR(t->start().with_context("UCX transport of " + to_string(options.self)));
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace tandem::transport
