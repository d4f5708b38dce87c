// Peer mode of this test binary: `<binary> --transport-peer ROLE RANK SCENARIO
// LAYERS MICRO_BATCHES SIZES` runs one transport node in its own process and
// exits before GoogleTest starts. Protocol on stdin/stdout (logs go to stderr):
//   -> LISTENING <port>
//   <- PEER <role> <rank> <host> <port>   (one per peer)
//   <- GO
//   -> CONNECTED, then per scenario: DONE | SENT; ERROR <status> on failure.
// Scenarios: "mesh" runs the M2N exchange; "hold" sends one message (layer 0,
// micro-batch 0, SIZES[0] bytes) to every peer, says SENT and waits for EOF
// on stdin (or a signal from the test).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "peer_process.h"
#include "tandem/common/logging.h"
#include "transport_test_util.h"

namespace tandem::transport::testing {
namespace {

std::vector<std::string> read_cmdline() {
  std::vector<std::string> args;
  FILE* f = std::fopen("/proc/self/cmdline", "rb");
  if (!f) return args;
  std::string cur;
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(c));
    }
  }
  std::fclose(f);
  return args;
}

void say(const std::string& line) {
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

int fail(const Status& st) {
  say("ERROR " + st.to_string());
  return 1;
}

Role parse_role(const std::string& s) { return s == "expert" ? Role::kExpert : Role::kAttention; }

int run_peer(const std::vector<std::string>& a) {
  if (a.size() < 6) return fail(invalid_argument("usage: ROLE RANK SCENARIO LAYERS MICRO_BATCHES SIZES"));
  init_logging("transport-peer");
  const NodeId self{parse_role(a[0]), static_cast<uint32_t>(std::stoul(a[1]))};
  const std::string scenario = a[2];
  Exchange x;
  x.layers = static_cast<uint32_t>(std::stoul(a[3]));
  x.micro_batches = static_cast<uint32_t>(std::stoul(a[4]));
  x.sizes.clear();
  std::stringstream sizes(a[5]);
  for (std::string s; std::getline(sizes, s, ',');) x.sizes.push_back(std::stoull(s));

  auto t = create_ucx_transport(loopback_options(self));
  if (!t.is_ok()) return fail(t.status());
  Transport& tr = **t;
  say("LISTENING " + std::to_string(tr.address().port));

  std::vector<PeerAddress> peers;
  char line[512];
  while (std::fgets(line, sizeof(line), stdin)) {
    std::istringstream in(line);
    std::string word;
    in >> word;
    if (word == "GO") break;
    if (word != "PEER") continue;
    std::string role, host;
    uint32_t rank = 0;
    uint16_t port = 0;
    in >> role >> rank >> host >> port;
    peers.push_back({NodeId{parse_role(role), rank}, host, port});
  }
  if (Status st = tr.connect(peers, 15s); !st.is_ok()) return fail(st);
  say("CONNECTED");

  std::vector<NodeId> ids;
  for (const auto& p : peers) ids.push_back(p.id);
  if (scenario == "mesh") {
    Status st = self.role == Role::kAttention ? run_attention(tr, ids, x) : run_expert(tr, ids, x);
    if (!st.is_ok()) return fail(st);
    say("DONE");
    return 0;
  }
  if (scenario == "hold") {
    const MessageKind kind = self.role == Role::kAttention ? MessageKind::kDispatch : MessageKind::kCombine;
    std::vector<Buffer> keep;
    for (NodeId p : ids) {
      auto h = send_pattern(tr, p, kind, 0, 0, x.sizes.at(0), keep);
      if (!h.is_ok()) return fail(h.status());
      if (Status st = h->wait(x.timeout); !st.is_ok()) return fail(st);
    }
    say("SENT");
    while (std::fgets(line, sizeof(line), stdin)) {
    }
    return 0;
  }
  return fail(invalid_argument("unknown scenario " + scenario));
}

// Runs before main(): in peer mode the process never reaches GoogleTest.
int maybe_run_peer() {
  const std::vector<std::string> args = read_cmdline();
  if (args.size() < 2 || args[1] != kPeerFlag) return 0;
  const int rc = run_peer(std::vector<std::string>(args.begin() + 2, args.end()));
  std::fflush(stdout);
  std::_Exit(rc);
}

[[maybe_unused]] const int kPeerMode = maybe_run_peer();

}  // namespace
}  // namespace tandem::transport::testing
