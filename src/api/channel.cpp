#include "tandem/api/channel.h"

#include <grpcpp/grpcpp.h>
#include <arpa/inet.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <sstream>

namespace tandem::api {

std::shared_ptr<grpc::Channel> open_channel(const std::string& address, const ClientTls& tls) {
  if (!tls.on()) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca_pem;
  grpc::ChannelArguments args;
  if (!tls.server_name.empty()) args.SetSslTargetNameOverride(tls.server_name);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(options), args);
}

Result<ClientTls> client_tls(const std::string& ca_file, const std::string& server_name) {
  if (ca_file.empty()) return ClientTls{};
  std::ifstream in(ca_file);
  std::stringstream text;
  if (in) text << in.rdbuf();
  if (!in || text.str().empty()) return invalid_argument("TLS: cannot read the CA certificate '" + ca_file + "'");
  return ClientTls{text.str(), server_name};
}

namespace {

using Bio = std::unique_ptr<BIO, decltype(&BIO_free)>;
using Certificate = std::unique_ptr<X509, decltype(&X509_free)>;

Bio memory_bio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
}

// The first certificate of a PEM text; null when there is none.
Certificate read_certificate(const std::string& pem) {
  Bio bio = memory_bio(pem);
  return Certificate(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr, &X509_free);
}

}  // namespace

Result<std::string> certificate_name(const std::string& cert_pem) {
  Certificate cert = read_certificate(cert_pem);
  if (!cert) return invalid_argument("TLS: not a PEM certificate");
  std::string dns, ip;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
  const bool has_alt_names = names != nullptr;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type == GEN_DNS && dns.empty()) {
      dns.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.dNSName)),
                 static_cast<size_t>(ASN1_STRING_length(n->d.dNSName)));
    } else if (n->type == GEN_IPADD && ip.empty()) {
      const int len = ASN1_STRING_length(n->d.iPAddress);
      char text[INET6_ADDRSTRLEN] = {0};
      if ((len == 4 || len == 16) &&
          inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(n->d.iPAddress), text, sizeof text))
        ip = text;
    }
  }
  if (names) GENERAL_NAMES_free(names);
  if (!dns.empty()) return dns;
  if (!ip.empty()) return ip;
  // Clients read the common name only when there are no alternative names.
  char cn[256] = {0};
  if (!has_alt_names && X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn) > 0)
    return std::string(cn);
  return invalid_argument("TLS: the certificate names no host (no DNS or IP subject alternative name" +
                          std::string(has_alt_names ? "" : ", no common name") + ")");
}

Status check_server_tls(const std::string& cert_pem, const std::string& key_pem) {
  Certificate cert = read_certificate(cert_pem);
  if (!cert) return invalid_argument("router.tls_cert_file: not a PEM certificate");
  Bio kb = memory_bio(key_pem);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      kb ? PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr) : nullptr, &EVP_PKEY_free);
  if (!key) return invalid_argument("router.tls_key_file: not an unencrypted PEM private key");
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    return invalid_argument("router.tls_key_file: not the private key of router.tls_cert_file's certificate");
  return Status::ok();
}

}  // namespace tandem::api
