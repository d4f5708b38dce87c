// Client channels to a router, in plaintext or over TLS (router.tls_*): what
// `tandem serve`, the CLI clients and the tests dial it with.
#pragma once

#include <memory>
#include <string>

#include "tandem/common/status.h"

namespace grpc {
class Channel;
}

namespace tandem::api {

struct ClientTls {
  std::string ca_pem;       // trusted roots (PEM); empty: plaintext
  std::string server_name;  // the name the server's certificate must carry; empty: the address's host
  bool on() const { return !ca_pem.empty(); }
};

// A channel to `address` (host:port).
std::shared_ptr<grpc::Channel> open_channel(const std::string& address, const ClientTls& tls = {});

// TLS that trusts the CA (or self-signed certificate) in `ca_file` (empty:
// plaintext); INVALID_ARGUMENT naming the file when it cannot be read.
Result<ClientTls> client_tls(const std::string& ca_file, const std::string& server_name = {});

// A name a PEM certificate is valid for: its first DNS subject alternative
// name, else its first IP one (v4 or v6), else (no alternative names at all)
// its common name. For a client on this host that dials the server by
// address but must check the name it serves.
Result<std::string> certificate_name(const std::string& cert_pem);

// Whether a PEM certificate and an unencrypted PEM private key belong
// together; INVALID_ARGUMENT naming router.tls_cert_file / tls_key_file.
Status check_server_tls(const std::string& cert_pem, const std::string& key_pem);

}  // namespace tandem::api
