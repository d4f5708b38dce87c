#include "jinja_lexer.h"

#include <cctype>

namespace tandem::model::jinja {

namespace {
Status err(int line, const std::string& what) {
  return invalid_argument("chat template line " + std::to_string(line) + ": " + what);
}
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Where a tag's `close` is, from `from`. In expressions and statements a
// string literal may hold the closing text ('{"a": {}}' in a tool prompt), as
// Jinja2's lexer allows: quoted text is skipped. Comments are raw.
size_t find_close(const std::string& src, size_t from, const std::string& close, bool skip_strings) {
  if (!skip_strings) return src.find(close, from);
  for (size_t k = from; k < src.size(); ++k) {
    const char c = src[k];
    if (c == '\'' || c == '"') {
      for (++k; k < src.size() && src[k] != c; ++k)
        if (src[k] == '\\') ++k;
      if (k >= src.size()) return std::string::npos;
    } else if (src.compare(k, close.size(), close) == 0) {
      return k;
    }
  }
  return std::string::npos;
}
}  // namespace

Result<std::vector<Segment>> split_template(const std::string& src) {
  std::vector<Segment> out;
  size_t i = 0;
  int line = 1;
  bool strip_next = false;  // previous tag ended with '-'
  bool trim_newline = false;  // previous tag was a block tag (trim_blocks)
  std::string text;
  auto count_lines = [&](size_t a, size_t b) {
    for (size_t k = a; k < b; ++k)
      if (src[k] == '\n') ++line;
  };
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
           src[open + 1] != '#')
      open = src.find('{', open + 1);
    if (open == std::string::npos || open + 1 >= src.size()) open = src.size();
    text = src.substr(i, open - i);
    bool starts_line = i == 0 || src[i - 1] == '\n';
    if (trim_newline && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
      starts_line = true;
    } else if (trim_newline && text.size() >= 2 && text[0] == '\r' && text[1] == '\n') {
      text.erase(0, 2);
      starts_line = true;
    }
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
    }
    if (open == src.size()) {
      if (!text.empty()) out.push_back({Segment::kText, text, line});
      break;
    }
    const char kind = src[open + 1];
    const bool strip_before = open + 2 < src.size() && src[open + 2] == '-';
    const bool keep_before = open + 2 < src.size() && src[open + 2] == '+';
    if (strip_before) {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (kind != '{' && !keep_before) {
      // lstrip_blocks: blanks between the start of a line and a block tag go.
      size_t k = text.size();
      while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
      if (k > 0 ? text[k - 1] == '\n' : starts_line) text.erase(k);
    }
    if (!text.empty()) out.push_back({Segment::kText, text, line});
    count_lines(i, open);
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t body_start = open + 2 + ((strip_before || keep_before) ? 1 : 0);
    size_t end = find_close(src, body_start, close, kind != '#');
    if (end == std::string::npos) return err(line, std::string("unclosed '{") + kind + "'");
    bool strip_after = end > body_start && src[end - 1] == '-';
    std::string body = src.substr(body_start, end - body_start - (strip_after ? 1 : 0));
    if (kind == '{') out.push_back({Segment::kExpr, body, line});
    else if (kind == '%') out.push_back({Segment::kStmt, body, line});
    count_lines(open, end + 2);
    i = end + 2;
    strip_next = strip_after;
    trim_newline = kind != '{';  // trim_blocks applies to block tags and comments
  }
  return out;
}

Result<std::vector<Token>> tokenize(const std::string& s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (is_space(c)) {
      ++i;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::kName, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_' ||
                              (s[j] == '.' && j + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[j + 1])))))
        is_float |= s[j++] == '.';
      Token t{is_float ? Token::kFloat : Token::kInt, s.substr(i, j - i)};
      if (is_float) t.f = std::stod(t.text);
      else t.i = std::stoll(t.text);
      out.push_back(t);
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      while (j < s.size() && s[j] != c) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          v += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          v += s[j];
        }
        ++j;
      }
      if (j >= s.size()) return err(line, "unterminated string");
      out.push_back({Token::kString, v});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (s.compare(i, 2, t) == 0) op = t;
      if (std::string("()[]{},:.|~+-*/%<>=!").find(c) == std::string::npos)
        return err(line, std::string("unexpected character '") + c + "'");
      out.push_back({Token::kOp, op});
      i += op.size();
    }
  }
  out.push_back({Token::kEnd, ""});
  return out;
}

}  // namespace tandem::model::jinja
