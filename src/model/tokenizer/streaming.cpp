#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace tandem::model {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok, bool skip_special_tokens, bool continues_text)
    : tok_(tok), skip_special_(skip_special_tokens), first_(!continues_text) {}

std::string StreamingDetokenizer::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  tok::DecodeToken probe;
  if (!tok_.impl_->decode_token(id, &probe)) return {};  // out-of-range ids are skipped, as in decode()
  pending_ += tok_.impl_->stream_piece(id, first_);
  first_ = false;
  // Emit everything already final; a character still missing bytes waits.
  std::string out;
  pending_.erase(0, tok::utf8_lossy_prefix(pending_, &out));
  return out;
}

std::string StreamingDetokenizer::flush() {
  std::string out = tok::utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace tandem::model
