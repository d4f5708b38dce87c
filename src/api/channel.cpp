#include "tandem/api/channel.h"

#include <grpcpp/grpcpp.h>
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
  std::ifstream in(ca_file);
  std::stringstream text;
  if (in) text << in.rdbuf();
  if (!in || text.str().empty()) return invalid_argument("TLS: cannot read the CA certificate '" + ca_file + "'");
  return ClientTls{text.str(), server_name};
}

Result<std::string> certificate_name(const std::string& cert_pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())),
                                               &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)
                                                       : nullptr,
                                                   &X509_free);
  if (!cert) return invalid_argument("TLS: not a PEM certificate");
  std::string dns, ip;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type == GEN_DNS && dns.empty()) {
      dns.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.dNSName)),
                 static_cast<size_t>(ASN1_STRING_length(n->d.dNSName)));
    } else if (n->type == GEN_IPADD && ip.empty() && ASN1_STRING_length(n->d.iPAddress) == 4) {
      const unsigned char* b = ASN1_STRING_get0_data(n->d.iPAddress);
      ip = std::to_string(b[0]) + "." + std::to_string(b[1]) + "." + std::to_string(b[2]) + "." + std::to_string(b[3]);
    }
  }
  if (names) GENERAL_NAMES_free(names);
  if (!dns.empty()) return dns;
  if (!ip.empty()) return ip;
  char cn[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn) > 0)
    return std::string(cn);
  return invalid_argument("TLS: the certificate names no host (no subject alternative name, no common name)");
}

}  // namespace tandem::api
