#include <algorithm>
#include <fstream>
#include <sstream>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace tandem::model {

using tok::Json;

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

namespace {

Result<tok::AddedToken> parse_added_token(const Json& j, size_t index) {
  const std::string where = "added_tokens[" + std::to_string(index) + "]";
  if (!j.is_object()) return invalid_argument(where + " must be an object");
  tok::AddedToken t;
  auto id = j.find("id");
  if (id == j.end() || !id->is_number_integer() || id->get<int64_t>() < 0 || id->get<int64_t>() > INT32_MAX - 1)
    return invalid_argument(where + ": missing or bad 'id'");
  t.id = static_cast<int32_t>(id->get<int64_t>());
  TANDEM_ASSIGN_OR_RETURN(t.content, tok::json_string(j, "content", "", where));
  if (t.content.empty()) return invalid_argument(where + ": 'content' must be a non-empty string");
  if (!tok::is_valid_utf8(t.content)) return invalid_argument(where + ": 'content' is not valid UTF-8");
  TANDEM_ASSIGN_OR_RETURN(t.special, tok::json_bool(j, "special", false, where));
  TANDEM_ASSIGN_OR_RETURN(t.lstrip, tok::json_bool(j, "lstrip", false, where));
  TANDEM_ASSIGN_OR_RETURN(t.rstrip, tok::json_bool(j, "rstrip", false, where));
  TANDEM_ASSIGN_OR_RETURN(t.single_word, tok::json_bool(j, "single_word", false, where));
  // HF's AddedToken default: special tokens are matched on the raw text.
  TANDEM_ASSIGN_OR_RETURN(t.normalized, tok::json_bool(j, "normalized", !t.special, where));
  return t;
}

Result<std::unique_ptr<tok::BpeModel>> parse_model(const Json& j) {
  if (!j.is_object()) return invalid_argument("'model' must be an object");
  std::string type;
  if (auto it = j.find("type"); it != j.end()) {
    if (!it->is_string()) return invalid_argument("model: field 'type' must be a string");
    type = it->get<std::string>();
  } else if (j.contains("vocab") && j.contains("merges")) {
    type = "BPE";  // very old files leave the type implicit
  } else {
    return invalid_argument("model: missing field 'type'");
  }
  if (type != "BPE") return tok::unsupported_component("model", type);
  return tok::BpeModel::parse(j);
}

}  // namespace

Status Tokenizer::Impl::build_added_tokens(const Json& root) {
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return Status::ok();
  if (!it->is_array()) return invalid_argument("'added_tokens' must be an array");
  for (size_t i = 0; i < it->size(); ++i) {
    TANDEM_ASSIGN_OR_RETURN(tok::AddedToken t, parse_added_token((*it)[i], i));
    if (added_by_id.count(t.id))
      return invalid_argument("added_tokens[" + std::to_string(i) + "]: id " + std::to_string(t.id) + " is used twice");
    added_by_id[t.id] = added.size();
    added_by_content.emplace(t.content, t.id);
    added.push_back(std::move(t));
  }
  // HF builds its matchers from the special tokens first, then the others,
  // each in file order; the first pattern wins on identical text.
  std::vector<const tok::AddedToken*> raw, norm;
  std::vector<std::string> raw_pat, norm_pat;
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& t : added) {
      if (t.special != (pass == 0)) continue;
      t.surface = t.content;
      if (t.normalized) {
        std::string p = t.content;
        if (normalizer) TANDEM_RETURN_IF_ERROR(normalizer->normalize(p));
        t.surface = p;
        norm.push_back(&t);
        norm_pat.push_back(std::move(p));
      } else {
        raw.push_back(&t);
        raw_pat.push_back(t.content);
      }
    }
  }
  raw_matcher.build(raw, raw_pat);
  normalized_matcher.build(norm, norm_pat);
  return Status::ok();
}

Result<Tokenizer> Tokenizer::from_json(std::string_view json_text) {
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return invalid_argument(std::string("tokenizer.json: invalid JSON: ") + e.what());
  }
  auto fail = [](const Status& s) { return s.with_context("tokenizer.json"); };
  if (!root.is_object()) return invalid_argument("tokenizer.json: top level must be an object");
  if (auto v = root.find("version"); v != root.end() && !(v->is_string() && v->get<std::string>() == "1.0"))
    return invalid_argument("tokenizer.json: unsupported version " + v->dump() + " (expected \"1.0\")");

  auto impl = std::make_unique<Impl>();
  auto m = root.find("model");
  if (m == root.end() || m->is_null()) return invalid_argument("tokenizer.json: missing 'model'");
  auto model = parse_model(*m);
  if (!model.is_ok()) return fail(model.status());
  impl->model = std::move(model).value();

  static const Json kNull;
  auto field = [&](const char* key) -> const Json& {
    auto it = root.find(key);
    return it == root.end() ? kNull : *it;
  };
  auto normalizer = tok::parse_normalizer(field("normalizer"));
  if (!normalizer.is_ok()) return fail(normalizer.status());
  impl->normalizer = std::move(normalizer).value();
  auto pre = tok::parse_pre_tokenizer(field("pre_tokenizer"));
  if (!pre.is_ok()) return fail(pre.status());
  impl->pre_tokenizer = std::move(pre).value();
  auto post = tok::parse_post_processor(field("post_processor"));
  if (!post.is_ok()) return fail(post.status());
  impl->post_processor = std::move(post).value();
  auto dec = tok::parse_decoder(field("decoder"));
  if (!dec.is_ok()) return fail(dec.status());
  impl->decoder = std::move(dec).value();

  if (Status s = impl->build_added_tokens(root); !s.is_ok()) return fail(s);
  int32_t max_id = impl->model->max_id();
  for (const auto& t : impl->added) max_id = std::max(max_id, t.id);
  impl->vocab_size = max_id + 1;
  return Tokenizer(std::move(impl));
}

Result<Tokenizer> Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open tokenizer file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return data_loss(path + ": read failed");
  auto r = from_json(ss.str());
  if (!r.is_ok()) return r.status().with_context(path);
  return r;
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  size_t bad = 0;
  if (!tok::is_valid_utf8(text, &bad))
    return invalid_argument("encode: input is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
  const Impl& im = *impl_;
  std::vector<int32_t> ids;
  std::vector<tok::Piece> pieces;
  for (const tok::Segment& seg : im.raw_matcher.split(text)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string part(text.substr(seg.begin, seg.end - seg.begin));
    if (im.normalizer) TANDEM_RETURN_IF_ERROR(im.normalizer->normalize(part));
    for (const tok::Segment& sub : im.normalized_matcher.split(part)) {
      if (sub.id >= 0) {
        ids.push_back(sub.id);
        continue;
      }
      pieces.clear();
      pieces.push_back({part.substr(sub.begin, sub.end - sub.begin), seg.begin == 0 && sub.begin == 0});
      if (im.pre_tokenizer) TANDEM_RETURN_IF_ERROR(im.pre_tokenizer->apply(pieces));
      for (const auto& p : pieces) im.model->tokenize(p.text, &ids);
    }
  }
  if (add_special_tokens && im.post_processor) im.post_processor->apply(ids);
  return ids;
}

bool Tokenizer::Impl::decode_token(int32_t id, tok::DecodeToken* out) const {
  if (const tok::AddedToken* t = added_token(id)) {
    *out = {t->surface, true};
    return true;
  }
  if (const std::string* s = model->id_to_token(id)) {
    *out = {*s, false};
    return true;
  }
  return false;
}

std::string Tokenizer::Impl::stream_piece(int32_t id, bool first) const {
  tok::DecodeToken t;
  if (!decode_token(id, &t)) return {};
  if (!decoder) return first ? t.text : " " + t.text;  // HF joins undecoded tokens with spaces
  tok::StreamState state{first, false};
  decoder->stream_piece(t, state);
  return t.text;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& im = *impl_;
  std::vector<tok::DecodeToken> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (skip_special_tokens && is_special(id)) continue;
    tok::DecodeToken t;
    if (im.decode_token(id, &t)) tokens.push_back(std::move(t));
  }
  std::string out;
  if (im.decoder) {
    im.decoder->decode_chain(tokens);
    for (const auto& t : tokens) out += t.text;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i].text;
  }
  return tok::utf8_lossy(out);
}

std::string Tokenizer::token_bytes(int32_t id) const { return impl_->stream_piece(id, false); }
std::string Tokenizer::token_bytes(int32_t id, bool first) const { return impl_->stream_piece(id, first); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const tok::AddedToken* t = impl_->added_token(id)) return t->surface;
  if (const std::string* s = impl_->model->id_to_token(id)) return *s;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* t = impl_->added_token(id);
  return t && t->special;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool is_valid_utf8(std::string_view s) { return tok::is_valid_utf8(s); }

}  // namespace tandem::model
