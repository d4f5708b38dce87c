// Parser and evaluator of the Jinja2 subset used by chat templates. Internal
// errors travel as TemplateError and become a Status at the API boundary.
#include "tandem/model/jinja.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <sstream>

#include "jinja_lexer.h"

namespace tandem::model {

using json = nlohmann::ordered_json;
using jinja::Segment;
using jinja::Token;

namespace {

struct TemplateError {
  std::string message;
};
[[noreturn]] void fail(int line, const std::string& what) {
  throw TemplateError{"chat template line " + std::to_string(line) + ": " + what};
}

// ---------------------------------------------------------------- values

struct Value {
  json v;
  bool undefined = false;
  std::shared_ptr<json> ns;  // a namespace(): mutable attributes
  static Value undef() {
    Value x;
    x.undefined = true;
    return x;
  }
  const json& data() const { return ns ? *ns : v; }
};

bool truthy(const Value& x) {
  if (x.undefined) return false;
  if (x.ns) return true;
  const json& j = x.v;
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<long long>() != 0;
  if (j.is_number()) return j.get<double>() != 0;
  if (j.is_string()) return !j.get_ref<const std::string&>().empty();
  return !j.empty();
}

std::string py_float(double d) {
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (std::isnan(d)) return "nan";
  if (d == std::floor(d) && std::fabs(d) < 1e16) {
    std::ostringstream o;
    o << static_cast<long long>(d) << ".0";
    return o.str();
  }
  std::ostringstream o;
  o.precision(17);
  o << d;
  return o.str();
}

std::string json_string(const std::string& s) {
  // json.dumps(ensure_ascii=False): escape quotes, backslash and control characters only.
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      case '\b': o += "\\b"; break;
      case '\f': o += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          o += buf;
        } else {
          o += static_cast<char>(c);
        }
    }
  }
  return o + "\"";
}

// Python's json.dumps layout: ", " and ": " without indent; newlines with indent.
void dump_json(const json& j, int indent, int depth, std::string& o) {
  auto nl = [&](int d) {
    if (indent >= 0) o += "\n" + std::string(static_cast<size_t>(indent * d), ' ');
  };
  if (j.is_object()) {
    if (j.empty()) {
      o += "{}";
      return;
    }
    o += "{";
    bool first = true;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!first) o += indent >= 0 ? "," : ", ";
      first = false;
      nl(depth + 1);
      o += json_string(it.key()) + ": ";
      dump_json(it.value(), indent, depth + 1, o);
    }
    nl(depth);
    o += "}";
  } else if (j.is_array()) {
    if (j.empty()) {
      o += "[]";
      return;
    }
    o += "[";
    for (size_t i = 0; i < j.size(); ++i) {
      if (i) o += indent >= 0 ? "," : ", ";
      nl(depth + 1);
      dump_json(j[i], indent, depth + 1, o);
    }
    nl(depth);
    o += "]";
  } else if (j.is_string()) {
    o += json_string(j.get_ref<const std::string&>());
  } else if (j.is_number_float()) {
    o += py_float(j.get<double>());
  } else {
    o += j.dump();
  }
}

std::string py_repr(const json& j);
std::string py_str(const Value& x) {
  if (x.undefined) return "";
  const json& j = x.data();
  if (j.is_string()) return j.get<std::string>();
  return py_repr(j);
}
std::string py_repr(const json& j) {
  if (j.is_null()) return "None";
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_number_float()) return py_float(j.get<double>());
  if (j.is_number()) return j.dump();
  if (j.is_string()) {
    std::string s = j.get<std::string>();
    return "'" + s + "'";
  }
  std::string o;
  if (j.is_array()) {
    o = "[";
    for (size_t i = 0; i < j.size(); ++i) o += (i ? ", " : "") + py_repr(j[i]);
    return o + "]";
  }
  o = "{";
  bool first = true;
  for (auto it = j.begin(); it != j.end(); ++it) {
    o += (first ? "" : ", ") + py_repr(json(it.key())) + ": " + py_repr(it.value());
    first = false;
  }
  return o + "}";
}

// Python strings index by code point: split UTF-8 text into characters.
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t j = i + 1;
    while (j < s.size() && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) ++j;
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// ---------------------------------------------------------------- AST

struct Expr;
using ExprP = std::shared_ptr<Expr>;
struct Expr {
  enum Kind { kLit, kName, kAttr, kIndex, kSlice, kCall, kFilter, kTest, kUnary, kBinary, kCond, kList, kDict } kind;
  int line = 0;
  json lit;
  std::string name;  // variable, attribute, filter, test, operator
  std::vector<ExprP> args;  // operands / call args / list items / dict k,v pairs
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negate = false;
};

}  // namespace

struct JinjaTemplate::Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue, kBlock } kind;
  int line = 0;
  std::string text;
  ExprP expr;                                     // output / set value / for iterable / for filter (cond)
  ExprP cond;                                     // for-if filter
  std::vector<std::string> vars;                  // for targets, set target (name or ns.attr)
  std::vector<std::pair<ExprP, std::vector<std::shared_ptr<Node>>>> branches;  // if
  std::vector<std::shared_ptr<Node>> body, else_body;
};

namespace {
using NodeP = std::shared_ptr<JinjaTemplate::Node>;
using Node = JinjaTemplate::Node;

// ---------------------------------------------------------------- parser

class ExprParser {
 public:
  ExprParser(std::vector<Token> toks, int line) : t_(std::move(toks)), line_(line) {}

  ExprP parse_all() {
    ExprP e = expr();
    if (peek().kind != Token::kEnd) fail(line_, "unexpected '" + peek().text + "'");
    return e;
  }
  ExprP expr() { return cond(); }
  const Token& peek(size_t k = 0) const { return t_[std::min(pos_ + k, t_.size() - 1)]; }
  bool is_name(const std::string& n, size_t k = 0) const { return peek(k).kind == Token::kName && peek(k).text == n; }
  bool is_op(const std::string& o) const { return peek().kind == Token::kOp && peek().text == o; }
  Token next() { return t_[std::min(pos_++, t_.size() - 1)]; }
  void expect_op(const std::string& o) {
    if (!is_op(o)) fail(line_, "expected '" + o + "', got '" + peek().text + "'");
    ++pos_;
  }
  std::string expect_name() {
    if (peek().kind != Token::kName) fail(line_, "expected a name, got '" + peek().text + "'");
    return next().text;
  }
  bool at_end() const { return peek().kind == Token::kEnd; }

 private:
  ExprP make(Expr::Kind k) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->line = line_;
    return e;
  }
  ExprP cond() {
    ExprP a = or_();
    if (is_name("if")) {
      ++pos_;
      ExprP c = or_();
      ExprP b;
      if (is_name("else")) {
        ++pos_;
        b = cond();
      } else {
        b = make(Expr::kLit);
        b->name = "undefined";
      }
      auto e = make(Expr::kCond);
      e->args = {c, a, b};
      return e;
    }
    return a;
  }
  ExprP binary(const std::string& op, ExprP l, ExprP r) {
    auto e = make(Expr::kBinary);
    e->name = op;
    e->args = {std::move(l), std::move(r)};
    return e;
  }
  ExprP or_() {
    ExprP l = and_();
    while (is_name("or")) {
      ++pos_;
      l = binary("or", l, and_());
    }
    return l;
  }
  ExprP and_() {
    ExprP l = not_();
    while (is_name("and")) {
      ++pos_;
      l = binary("and", l, not_());
    }
    return l;
  }
  ExprP not_() {
    if (is_name("not")) {
      ++pos_;
      auto e = make(Expr::kUnary);
      e->name = "not";
      e->args = {not_()};
      return e;
    }
    return compare();
  }
  ExprP compare() {
    ExprP l = concat();
    while (true) {
      if (peek().kind == Token::kOp &&
          (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">="))) {
        std::string op = next().text;
        l = binary(op, l, concat());
      } else if (is_name("in")) {
        ++pos_;
        l = binary("in", l, concat());
      } else if (is_name("not") && is_name("in", 1)) {
        pos_ += 2;
        l = binary("not in", l, concat());
      } else if (is_name("is")) {
        ++pos_;
        auto e = make(Expr::kTest);
        if (is_name("not")) {
          ++pos_;
          e->negate = true;
        }
        e->name = expect_name();
        e->args = {l};
        // A test may take one argument: `is equalto 3`, `is sameas x`, or `is divisibleby(2)`.
        if (is_op("(")) {
          ++pos_;
          if (!is_op(")")) e->args.push_back(expr());
          expect_op(")");
        } else if (peek().kind == Token::kString || peek().kind == Token::kInt || peek().kind == Token::kFloat ||
                   (peek().kind == Token::kName && !is_name("and") && !is_name("or") && !is_name("if") &&
                    !is_name("else") && !is_name("is") && !is_name("in") && !is_name("not"))) {
          e->args.push_back(concat());
        }
        l = e;
      } else {
        return l;
      }
    }
  }
  ExprP concat() {
    ExprP l = additive();
    while (is_op("~")) {
      ++pos_;
      l = binary("~", l, additive());
    }
    return l;
  }
  ExprP additive() {
    ExprP l = term();
    while (is_op("+") || is_op("-")) {
      std::string op = next().text;
      l = binary(op, l, term());
    }
    return l;
  }
  ExprP term() {
    ExprP l = unary();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = next().text;
      l = binary(op, l, unary());
    }
    return l;
  }
  ExprP unary() {
    if (is_op("-") || is_op("+")) {
      std::string op = next().text;
      auto e = make(Expr::kUnary);
      e->name = op;
      e->args = {unary()};
      return e;
    }
    return filtered();
  }
  ExprP filtered() {
    ExprP e = postfix();
    while (is_op("|")) {
      ++pos_;
      auto f = make(Expr::kFilter);
      f->name = expect_name();
      f->args = {e};
      if (is_op("(")) call_args(*f);
      e = f;
    }
    return e;
  }
  void call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == Token::kName && peek(1).kind == Token::kOp && peek(1).text == "=") {
        std::string k = next().text;
        ++pos_;
        e.kwargs.push_back({k, expr()});
      } else {
        e.args.push_back(expr());
      }
      if (!is_op(")")) expect_op(",");
    }
    expect_op(")");
  }
  ExprP postfix() {
    ExprP e = primary();
    while (true) {
      if (is_op(".")) {
        ++pos_;
        auto a = make(Expr::kAttr);
        a->name = expect_name();
        a->args = {e};
        e = a;
      } else if (is_op("[")) {
        ++pos_;
        ExprP parts[3];
        bool slice = false;
        int k = 0;
        while (!is_op("]")) {
          if (is_op(":")) {
            ++pos_;
            slice = true;
            if (++k > 2) fail(line_, "bad slice");
            continue;
          }
          parts[k] = expr();
        }
        expect_op("]");
        auto x = make(slice ? Expr::kSlice : Expr::kIndex);
        x->args = {e, parts[0], parts[1], parts[2]};
        e = x;
      } else if (is_op("(")) {
        auto c = make(Expr::kCall);
        c->args = {e};
        call_args(*c);
        e = c;
      } else {
        return e;
      }
    }
  }
  ExprP primary() {
    const Token t = next();
    if (t.kind == Token::kString) {
      auto e = make(Expr::kLit);
      e->lit = t.text;
      while (peek().kind == Token::kString) e->lit = e->lit.get<std::string>() + next().text;  // 'a' 'b'
      return e;
    }
    if (t.kind == Token::kInt || t.kind == Token::kFloat) {
      auto e = make(Expr::kLit);
      if (t.kind == Token::kInt) e->lit = t.i;
      else e->lit = t.f;
      return e;
    }
    if (t.kind == Token::kName) {
      auto e = make(Expr::kLit);
      if (t.text == "true" || t.text == "True") e->lit = true;
      else if (t.text == "false" || t.text == "False") e->lit = false;
      else if (t.text == "none" || t.text == "None") e->lit = nullptr;
      else {
        e->kind = Expr::kName;
        e->name = t.text;
      }
      return e;
    }
    if (t.kind == Token::kOp && t.text == "(") {
      ExprP e = expr();
      if (is_op(",")) {  // tuple: treated as a list
        auto l = make(Expr::kList);
        l->args.push_back(e);
        while (is_op(",")) {
          ++pos_;
          if (is_op(")")) break;
          l->args.push_back(expr());
        }
        e = l;
      }
      expect_op(")");
      return e;
    }
    if (t.kind == Token::kOp && t.text == "[") {
      auto l = make(Expr::kList);
      while (!is_op("]")) {
        l->args.push_back(expr());
        if (!is_op("]")) expect_op(",");
      }
      expect_op("]");
      return l;
    }
    if (t.kind == Token::kOp && t.text == "{") {
      auto d = make(Expr::kDict);
      while (!is_op("}")) {
        d->args.push_back(expr());
        expect_op(":");
        d->args.push_back(expr());
        if (!is_op("}")) expect_op(",");
      }
      expect_op("}");
      return d;
    }
    fail(line_, "unexpected '" + t.text + "'");
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
  int line_;
};

std::vector<Token> tokens_or_fail(const std::string& s, int line) {
  auto t = jinja::tokenize(s, line);
  if (!t.is_ok()) throw TemplateError{t.status().message()};
  return *t;
}

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Segment> segs) : s_(std::move(segs)) {}

  std::vector<NodeP> parse_body(const std::vector<std::string>& stops, std::string* stopped_at, ExprParser** tail) {
    std::vector<NodeP> body;
    while (i_ < s_.size()) {
      const Segment& seg = s_[i_];
      if (seg.kind == Segment::kText) {
        auto n = std::make_shared<Node>();
        n->kind = Node::kText;
        n->text = seg.body;
        body.push_back(n);
        ++i_;
        continue;
      }
      if (seg.kind == Segment::kExpr) {
        auto n = std::make_shared<Node>();
        n->kind = Node::kOutput;
        n->line = seg.line;
        n->expr = ExprParser(tokens_or_fail(seg.body, seg.line), seg.line).parse_all();
        body.push_back(n);
        ++i_;
        continue;
      }
      auto p = std::make_unique<ExprParser>(tokens_or_fail(seg.body, seg.line), seg.line);
      const std::string kw = p->expect_name();
      if (std::find(stops.begin(), stops.end(), kw) != stops.end()) {
        *stopped_at = kw;
        ++i_;
        parsers_.push_back(std::move(p));
        *tail = parsers_.back().get();
        return body;
      }
      ++i_;
      body.push_back(statement(kw, *p, seg.line));
    }
    if (!stops.empty()) fail(s_.empty() ? 1 : s_.back().line, "missing {% " + stops.back() + " %}");
    return body;
  }

 private:
  NodeP statement(const std::string& kw, ExprParser& p, int line) {
    auto n = std::make_shared<Node>();
    n->line = line;
    std::string stop;
    ExprParser* tail = nullptr;
    if (kw == "if") {
      n->kind = Node::kIf;
      ExprP c = p.expr();
      while (true) {
        auto body = parse_body({"elif", "else", "endif"}, &stop, &tail);
        n->branches.push_back({c, body});
        if (stop == "elif") {
          c = tail->expr();
          continue;
        }
        if (stop == "else") {
          n->else_body = parse_body({"endif"}, &stop, &tail);
        }
        break;
      }
    } else if (kw == "for") {
      n->kind = Node::kFor;
      n->vars.push_back(p.expect_name());
      while (p.is_op(",")) {
        p.next();
        n->vars.push_back(p.expect_name());
      }
      if (!p.is_name("in")) fail(line, "expected 'in' in for");
      p.next();
      n->expr = p.expr();  // `if` after the iterable is parsed by cond(): split it back out
      if (n->expr->kind == Expr::kCond && n->expr->args[2]->kind == Expr::kLit && n->expr->args[2]->name == "undefined") {
        n->cond = n->expr->args[0];
        n->expr = n->expr->args[1];
      }
      n->body = parse_body({"else", "endfor"}, &stop, &tail);
      if (stop == "else") n->else_body = parse_body({"endfor"}, &stop, &tail);
    } else if (kw == "set") {
      n->kind = Node::kSet;
      std::string target = p.expect_name();
      if (p.is_op(".")) {
        p.next();
        target += "." + p.expect_name();
      }
      n->vars.push_back(target);
      if (!p.is_op("=")) fail(line, "block set ({% set x %}...{% endset %}) is not supported");
      p.next();
      n->expr = p.expr();
    } else if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::kBreak : Node::kContinue;
    } else if (kw == "generation") {  // transformers' AssistantTracker marks: render the body as is
      n->kind = Node::kBlock;
      n->body = parse_body({"endgeneration"}, &stop, &tail);
    } else {
      fail(line, "unsupported statement '" + kw + "'");
    }
    return n;
  }

  std::vector<Segment> s_;
  size_t i_ = 0;
  std::vector<std::unique_ptr<ExprParser>> parsers_;
};

// ---------------------------------------------------------------- evaluator

constexpr int64_t kMaxIterations = 1'000'000;
constexpr size_t kMaxOutput = size_t{16} << 20;

class Renderer {
 public:
  explicit Renderer(const json& globals) { scopes_.push_back({}), globals_ = globals; }

  void run(const std::vector<NodeP>& body, std::string& out) {
    for (const auto& n : body) {
      if (flow_ != kNormal) return;
      exec(*n, out);
      if (out.size() > kMaxOutput) fail(n->line, "output exceeds 16 MiB");
    }
  }

 private:
  enum Flow { kNormal, kBreak, kContinue };

  Value lookup(const std::string& name) {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    if (globals_.contains(name)) return Value{globals_.at(name)};
    return Value::undef();
  }

  void exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::kText: out += n.text; return;
      case Node::kOutput: out += py_str(eval(*n.expr)); return;
      case Node::kBlock: run(n.body, out); return;
      case Node::kBreak: flow_ = kBreak; return;
      case Node::kContinue: flow_ = kContinue; return;
      case Node::kIf:
        for (const auto& [c, body] : n.branches)
          if (truthy(eval(*c))) {
            run(body, out);
            return;
          }
        run(n.else_body, out);
        return;
      case Node::kSet: {
        Value v = eval(*n.expr);
        const std::string& t = n.vars[0];
        auto dot = t.find('.');
        if (dot == std::string::npos) {
          scopes_.back()[t] = v;
        } else {
          Value ns = lookup(t.substr(0, dot));
          if (!ns.ns) fail(n.line, "cannot set an attribute of '" + t.substr(0, dot) + "' (not a namespace)");
          (*ns.ns)[t.substr(dot + 1)] = v.data();
        }
        return;
      }
      case Node::kFor: {
        Value it = eval(*n.expr);
        std::vector<json> items;
        const json& d = it.data();
        if (it.undefined || d.is_null()) items = {};
        else if (d.is_array()) items.assign(d.begin(), d.end());
        else if (d.is_object())
          for (auto x = d.begin(); x != d.end(); ++x) items.push_back(x.key());
        else if (d.is_string())
          for (auto& ch : utf8_chars(d.get<std::string>())) items.push_back(ch);
        else fail(n.line, "cannot iterate over " + py_repr(d));
        std::vector<json> kept;
        scopes_.emplace_back();
        for (auto& x : items) {
          bind(n, x);
          if (!n.cond || truthy(eval(*n.cond))) kept.push_back(x);
        }
        const size_t len = kept.size();
        for (size_t i = 0; i < len; ++i) {
          if (++iterations_ > kMaxIterations) fail(n.line, "more than 1,000,000 loop iterations");
          scopes_.back().clear();
          bind(n, kept[i]);
          scopes_.back()["loop"] = Value{json{{"index", i + 1}, {"index0", i}, {"first", i == 0}, {"last", i + 1 == len},
                                              {"length", len}, {"revindex", len - i}, {"revindex0", len - i - 1},
                                              {"previtem", i > 0 ? kept[i - 1] : json()},
                                              {"nextitem", i + 1 < len ? kept[i + 1] : json()}}};
          run(n.body, out);
          if (flow_ == kBreak) {
            flow_ = kNormal;
            break;
          }
          flow_ = kNormal;
        }
        scopes_.pop_back();
        if (len == 0) run(n.else_body, out);
        return;
      }
    }
  }

  void bind(const Node& n, const json& x) {
    if (n.vars.size() == 1) {
      scopes_.back()[n.vars[0]] = Value{x};
      return;
    }
    if (!x.is_array() || x.size() != n.vars.size()) fail(n.line, "cannot unpack " + py_repr(x));
    for (size_t k = 0; k < n.vars.size(); ++k) scopes_.back()[n.vars[k]] = Value{x[k]};
  }

  static long long to_int(const Value& v, int line) {
    const json& j = v.data();
    if (j.is_number_integer()) return j.get<long long>();
    if (j.is_number()) return static_cast<long long>(j.get<double>());
    if (j.is_boolean()) return j.get<bool>();
    fail(line, "expected an integer, got " + py_repr(j));
  }

  Value attr(const Value& obj, const std::string& name, int line) {
    if (obj.undefined) return Value::undef();
    const json& d = obj.data();
    if (d.is_object() && d.contains(name)) return Value{d.at(name)};
    (void)line;
    return Value::undef();
  }

  Value index(const Value& obj, const Value& key, int line) {
    if (obj.undefined) return Value::undef();
    const json& d = obj.data();
    const json& k = key.data();
    if (d.is_object()) {
      if (!k.is_string()) return Value::undef();
      return d.contains(k.get<std::string>()) ? Value{d.at(k.get<std::string>())} : Value::undef();
    }
    if (d.is_array() || d.is_string()) {
      long long i = to_int(key, line);
      const std::vector<std::string> chars = d.is_string() ? utf8_chars(d.get<std::string>()) : std::vector<std::string>{};
      const long long n = d.is_array() ? static_cast<long long>(d.size()) : static_cast<long long>(chars.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undef();
      if (d.is_array()) return Value{d[static_cast<size_t>(i)]};
      return Value{json(chars[static_cast<size_t>(i)])};
    }
    return Value::undef();
  }

  Value slice(const Value& obj, const Expr& e) {
    const json& d = obj.data();
    const std::vector<std::string> chars = d.is_string() ? utf8_chars(d.get<std::string>()) : std::vector<std::string>{};
    const long long n = d.is_array() ? static_cast<long long>(d.size()) : d.is_string() ? static_cast<long long>(chars.size()) : -1;
    if (n < 0) fail(e.line, "cannot slice " + py_repr(d));
    long long step = e.args[3] ? to_int(eval(*e.args[3]), e.line) : 1;
    if (step == 0) fail(e.line, "slice step cannot be zero");
    auto norm = [&](const ExprP& x, long long dflt) {
      if (!x) return dflt;
      long long v = to_int(eval(*x), e.line);
      if (v < 0) v += n;
      return step > 0 ? std::clamp(v, 0LL, n) : std::clamp(v, -1LL, n - 1);
    };
    long long a = norm(e.args[1], step > 0 ? 0 : n - 1), b = norm(e.args[2], step > 0 ? n : -1);
    json out = d.is_array() ? json::array() : json("");
    std::string s;
    for (long long i = a; step > 0 ? i < b : i > b; i += step) {
      if (d.is_array()) out.push_back(d[static_cast<size_t>(i)]);
      else s += chars[static_cast<size_t>(i)];
    }
    return d.is_array() ? Value{out} : Value{s};
  }

  bool test(const std::string& name, const Value& x, const std::vector<Value>& args, int line) {
    const json& d = x.data();
    if (name == "defined") return !x.undefined;
    if (name == "undefined") return x.undefined;
    if (x.undefined && name != "none") return false;
    if (name == "none") return !x.undefined && d.is_null();
    if (name == "string") return d.is_string();
    if (name == "number") return d.is_number();
    if (name == "integer") return d.is_number_integer();
    if (name == "float") return d.is_number_float();
    if (name == "boolean") return d.is_boolean();
    if (name == "mapping") return d.is_object() || static_cast<bool>(x.ns);
    if (name == "iterable") return d.is_array() || d.is_object() || d.is_string();
    if (name == "sequence") return d.is_array() || d.is_string() || d.is_object();
    if (name == "true") return d.is_boolean() && d.get<bool>();
    if (name == "false") return d.is_boolean() && !d.get<bool>();
    if (name == "equalto" || name == "eq" || name == "sameas") {
      if (args.empty()) fail(line, "test '" + name + "' needs an argument");
      return d == args[0].data();
    }
    if (name == "odd" || name == "even") return (to_int(x, line) % 2 != 0) == (name == "odd");
    fail(line, "unknown test '" + name + "'");
  }

  Value filter(const Expr& e) {
    Value x = eval(*e.args[0]);
    std::vector<Value> args;
    for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
    std::map<std::string, Value> kw;
    for (const auto& [k, v] : e.kwargs) kw[k] = eval(*v);
    const json& d = x.data();
    const std::string& f = e.name;
    auto str_of = [&](const Value& v) { return py_str(v); };
    if (f == "length" || f == "count") {
      if (d.is_string()) return Value{json(utf8_chars(d.get<std::string>()).size())};
      if (x.undefined) return Value{json(0)};
      return Value{json(d.size())};
    }
    if (f == "default" || f == "d") {
      const bool boolean = (args.size() > 1 && truthy(args[1])) || (kw.count("boolean") && truthy(kw["boolean"]));
      if (x.undefined || (boolean && !truthy(x))) return args.empty() ? Value{json("")} : args[0];
      return x;
    }
    if (f == "trim") {
      std::string s = str_of(x);
      const auto b = s.find_first_not_of(" \t\n\r\f\v");
      if (b == std::string::npos) return Value{json("")};
      return Value{json(s.substr(b, s.find_last_not_of(" \t\n\r\f\v") - b + 1))};
    }
    if (f == "upper" || f == "lower" || f == "capitalize" || f == "title") {
      std::string s = str_of(x);
      bool start = true;
      for (size_t i = 0; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (f == "upper") s[i] = static_cast<char>(std::toupper(c));
        else if (f == "lower") s[i] = static_cast<char>(std::tolower(c));
        else if (f == "capitalize") s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
        else {
          s[i] = static_cast<char>(start ? std::toupper(c) : std::tolower(c));
          start = !std::isalnum(c);
        }
      }
      return Value{json(s)};
    }
    if (f == "string") return Value{json(str_of(x))};
    if (f == "int") return Value{json(d.is_string() ? std::stoll(d.get<std::string>()) : to_int(x, e.line))};
    if (f == "float") return Value{json(d.is_number() ? d.get<double>() : std::stod(str_of(x)))};
    if (f == "safe" || f == "e" || f == "escape") return x;  // autoescape is off in transformers
    if (f == "tojson") {
      int indent = -1;
      if (kw.count("indent") && !kw["indent"].data().is_null()) indent = static_cast<int>(to_int(kw["indent"], e.line));
      else if (!args.empty() && !args[0].data().is_null()) indent = static_cast<int>(to_int(args[0], e.line));
      std::string o;
      dump_json(d, indent, 0, o);
      return Value{json(o)};
    }
    if (f == "items") {
      json out = json::array();
      if (d.is_object())
        for (auto it = d.begin(); it != d.end(); ++it) out.push_back(json::array({it.key(), it.value()}));
      return Value{out};
    }
    if (f == "list") {
      if (d.is_array()) return x;
      json out = json::array();
      if (d.is_string())
        for (auto& ch : utf8_chars(d.get<std::string>())) out.push_back(ch);
      else if (d.is_object())
        for (auto it = d.begin(); it != d.end(); ++it) out.push_back(it.key());
      return Value{out};
    }
    if (f == "first" || f == "last") {
      if (d.is_array()) return d.empty() ? Value::undef() : Value{f == "first" ? d.front() : d.back()};
      if (d.is_string()) {
        const auto chars = utf8_chars(d.get<std::string>());
        return chars.empty() ? Value::undef() : Value{json(f == "first" ? chars.front() : chars.back())};
      }
      return Value::undef();
    }
    if (f == "reverse") {
      if (d.is_string()) {
        auto chars = utf8_chars(d.get<std::string>());
        std::string r;
        for (auto it = chars.rbegin(); it != chars.rend(); ++it) r += *it;
        return Value{json(r)};
      }
      json out = d;
      if (out.is_array()) std::reverse(out.begin(), out.end());
      return Value{out};
    }
    if (f == "join") {
      const std::string sep = args.empty() ? "" : str_of(args[0]);
      std::string out;
      if (d.is_array())
        for (size_t i = 0; i < d.size(); ++i) {
          Value item{d[i]};
          if (kw.count("attribute")) item = attr(item, str_of(kw["attribute"]), e.line);
          out += (i ? sep : "") + py_str(item);
        }
      return Value{json(out)};
    }
    if (f == "replace") {
      if (args.size() < 2) fail(e.line, "replace needs two arguments");
      return Value{json(replace_all(str_of(x), str_of(args[0]), str_of(args[1])))};
    }
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject") {
      const bool by_attr = f == "selectattr" || f == "rejectattr";
      const bool keep = f == "selectattr" || f == "select";
      json out = json::array();
      if (!d.is_array()) return Value{out};
      const size_t base = by_attr ? 1 : 0;
      for (const auto& item : d) {
        Value v{item};
        if (by_attr) {
          if (args.empty()) fail(e.line, f + " needs an attribute name");
          v = attr(v, str_of(args[0]), e.line);
        }
        bool ok = args.size() > base ? test(str_of(args[base]), v, std::vector<Value>(args.begin() + base + 1, args.end()), e.line)
                                     : truthy(v);
        if (ok == keep) out.push_back(item);
      }
      return Value{out};
    }
    if (f == "map") {
      json out = json::array();
      if (!d.is_array()) return Value{out};
      for (const auto& item : d) {
        if (kw.count("attribute")) {
          Value v = attr(Value{item}, str_of(kw["attribute"]), e.line);
          out.push_back(v.undefined ? (kw.count("default") ? kw["default"].data() : json()) : v.data());
        } else if (!args.empty()) {
          Expr fe;
          fe.kind = Expr::kFilter;
          fe.line = e.line;
          fe.name = str_of(args[0]);
          auto lit = std::make_shared<Expr>();
          lit->kind = Expr::kLit;
          lit->lit = item;
          fe.args = {lit};
          out.push_back(filter(fe).data());
        }
      }
      return Value{out};
    }
    fail(e.line, "unknown filter '" + f + "'");
  }

  static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    if (from.empty()) return s;
    size_t p = 0;
    while ((p = s.find(from, p)) != std::string::npos) {
      s.replace(p, from.size(), to);
      p += to.size();
    }
    return s;
  }

  Value method(const Value& obj, const std::string& name, const std::vector<Value>& args, const Expr& e) {
    const json& d = obj.data();
    auto arg = [&](size_t i) { return i < args.size() ? py_str(args[i]) : std::string(); };
    if (d.is_string()) {
      const std::string& s = d.get_ref<const std::string&>();
      if (name == "startswith") return Value{json(s.rfind(arg(0), 0) == 0)};
      if (name == "endswith") {
        const std::string t = arg(0);
        return Value{json(s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0)};
      }
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        const std::string chars = args.empty() ? " \t\n\r\f\v" : arg(0);
        size_t b = name == "rstrip" ? 0 : s.find_first_not_of(chars);
        if (b == std::string::npos) return Value{json("")};
        size_t en = name == "lstrip" ? s.size() : s.find_last_not_of(chars) + 1;
        return Value{json(s.substr(b, en - b))};
      }
      if (name == "split") {
        json out = json::array();
        if (args.empty()) {
          std::istringstream in(s);
          std::string w;
          while (in >> w) out.push_back(w);
        } else {
          const std::string sep = arg(0);
          size_t p = 0, q;
          while (!sep.empty() && (q = s.find(sep, p)) != std::string::npos) {
            out.push_back(s.substr(p, q - p));
            p = q + sep.size();
          }
          out.push_back(s.substr(p));
        }
        return Value{out};
      }
      if (name == "replace") return Value{json(replace_all(s, arg(0), arg(1)))};
      if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        Expr fe;
        fe.kind = Expr::kFilter;
        fe.line = e.line;
        fe.name = name;
        auto lit = std::make_shared<Expr>();
        lit->kind = Expr::kLit;
        lit->lit = s;
        fe.args = {lit};
        return filter(fe);
      }
    }
    if (d.is_object()) {
      if (name == "get") {
        const std::string k = arg(0);
        if (d.contains(k)) return Value{d.at(k)};
        return args.size() > 1 ? args[1] : Value{json()};
      }
      if (name == "items") {
        json out = json::array();
        for (auto it = d.begin(); it != d.end(); ++it) out.push_back(json::array({it.key(), it.value()}));
        return Value{out};
      }
      if (name == "keys" || name == "values") {
        json out = json::array();
        for (auto it = d.begin(); it != d.end(); ++it) out.push_back(name == "keys" ? json(it.key()) : it.value());
        return Value{out};
      }
    }
    fail(e.line, "unknown method '" + name + "' on " + (d.is_string() ? "a string" : d.is_object() ? "a mapping" : "this value"));
  }

  Value call(const Expr& e) {
    std::vector<Value> args;
    for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::kAttr) return method(eval(*callee.args[0]), callee.name, args, e);
    if (callee.kind == Expr::kName) {
      const std::string& f = callee.name;
      if (f == "raise_exception") throw TemplateError{"raise_exception: " + (args.empty() ? std::string() : py_str(args[0]))};
      if (f == "namespace") {
        Value ns;
        ns.ns = std::make_shared<json>(json::object());
        for (const auto& [k, v] : e.kwargs) (*ns.ns)[k] = eval(*v).data();
        return ns;
      }
      if (f == "range") {
        long long a = 0, b = 0, st = 1;
        if (args.size() == 1) b = to_int(args[0], e.line);
        else if (args.size() >= 2) a = to_int(args[0], e.line), b = to_int(args[1], e.line);
        if (args.size() == 3) st = to_int(args[2], e.line);
        if (st == 0) fail(e.line, "range step cannot be zero");
        json out = json::array();
        for (long long i = a; st > 0 ? i < b : i > b; i += st) {
          out.push_back(i);
          if (out.size() > static_cast<size_t>(kMaxIterations)) fail(e.line, "range too large");
        }
        return Value{out};
      }
      if (f == "strftime_now") return Value{json("")};
      fail(e.line, "unknown function '" + f + "'");
    }
    fail(e.line, "this value cannot be called");
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::kLit: return e.name == "undefined" ? Value::undef() : Value{e.lit};
      case Expr::kName: return lookup(e.name);
      case Expr::kAttr: return attr(eval(*e.args[0]), e.name, e.line);
      case Expr::kIndex: return index(eval(*e.args[0]), eval(*e.args[1]), e.line);
      case Expr::kSlice: return slice(eval(*e.args[0]), e);
      case Expr::kCall: return call(e);
      case Expr::kFilter: return filter(e);
      case Expr::kTest: {
        std::vector<Value> args;
        for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
        return Value{json(test(e.name, eval(*e.args[0]), args, e.line) != e.negate)};
      }
      case Expr::kCond: return truthy(eval(*e.args[0])) ? eval(*e.args[1]) : eval(*e.args[2]);
      case Expr::kList: {
        json out = json::array();
        for (const auto& a : e.args) out.push_back(eval(*a).data());
        return Value{out};
      }
      case Expr::kDict: {
        json out = json::object();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) out[py_str(eval(*e.args[i]))] = eval(*e.args[i + 1]).data();
        return Value{out};
      }
      case Expr::kUnary: {
        Value v = eval(*e.args[0]);
        if (e.name == "not") return Value{json(!truthy(v))};
        if (e.name == "-") {
          const json& d = v.data();
          if (d.is_number_integer()) return Value{json(-d.get<long long>())};
          if (d.is_number()) return Value{json(-d.get<double>())};
          fail(e.line, "bad operand for unary -");
        }
        return v;
      }
      case Expr::kBinary: return binary(e);
    }
    fail(e.line, "bad expression");
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value l = eval(*e.args[0]);
      return truthy(l) ? eval(*e.args[1]) : l;
    }
    if (op == "or") {
      Value l = eval(*e.args[0]);
      return truthy(l) ? l : eval(*e.args[1]);
    }
    Value lv = eval(*e.args[0]), rv = eval(*e.args[1]);
    const json &l = lv.data(), &r = rv.data();
    if (op == "~") return Value{json(py_str(lv) + py_str(rv))};
    if (op == "==") return Value{json(lv.undefined == rv.undefined && l == r)};
    if (op == "!=") return Value{json(!(lv.undefined == rv.undefined && l == r))};
    if (op == "in" || op == "not in") {
      bool in = false;
      if (r.is_string()) in = r.get<std::string>().find(py_str(lv)) != std::string::npos;
      else if (r.is_array()) in = std::find(r.begin(), r.end(), l) != r.end();
      else if (r.is_object()) in = l.is_string() && r.contains(l.get<std::string>());
      return Value{json(op == "in" ? in : !in)};
    }
    if (op == "+" && l.is_string() && r.is_string()) return Value{json(l.get<std::string>() + r.get<std::string>())};
    if (op == "+" && l.is_array() && r.is_array()) {
      json out = l;
      for (const auto& x : r) out.push_back(x);
      return Value{out};
    }
    if (op == "*" && l.is_string() && r.is_number_integer()) {
      std::string out;
      for (long long i = 0; i < r.get<long long>(); ++i) out += l.get<std::string>();
      return Value{json(out)};
    }
    if (!(l.is_number() || l.is_boolean()) || !(r.is_number() || r.is_boolean())) {
      if ((op == "<" || op == ">" || op == "<=" || op == ">=") && l.is_string() && r.is_string()) {
        const int c = l.get<std::string>().compare(r.get<std::string>());
        return Value{json(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0)};
      }
      fail(e.line, "unsupported operand types for " + op + ": " + py_repr(l) + " and " + py_repr(r));
    }
    const bool ints = (l.is_number_integer() || l.is_boolean()) && (r.is_number_integer() || r.is_boolean());
    const double a = l.is_boolean() ? l.get<bool>() : l.get<double>(), b = r.is_boolean() ? r.get<bool>() : r.get<double>();
    if (op == "<") return Value{json(a < b)};
    if (op == ">") return Value{json(a > b)};
    if (op == "<=") return Value{json(a <= b)};
    if (op == ">=") return Value{json(a >= b)};
    if (op == "/") {
      if (b == 0) fail(e.line, "division by zero");
      return Value{json(a / b)};
    }
    if (ints) {
      const long long x = static_cast<long long>(a), y = static_cast<long long>(b);
      if (op == "+") return Value{json(x + y)};
      if (op == "-") return Value{json(x - y)};
      if (op == "*") return Value{json(x * y)};
      if (y == 0) fail(e.line, "division by zero");
      long long q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) --q, m += y;  // Python floors
      if (op == "//") return Value{json(q)};
      if (op == "%") return Value{json(m)};
    }
    if (op == "+") return Value{json(a + b)};
    if (op == "-") return Value{json(a - b)};
    if (op == "*") return Value{json(a * b)};
    if (op == "//") return Value{json(std::floor(a / b))};
    if (op == "%") return Value{json(a - b * std::floor(a / b))};
    fail(e.line, "unknown operator " + op);
  }

  std::vector<std::map<std::string, Value>> scopes_;
  json globals_;
  Flow flow_ = kNormal;
  int64_t iterations_ = 0;
};

}  // namespace

JinjaTemplate::JinjaTemplate() = default;
JinjaTemplate::~JinjaTemplate() = default;
JinjaTemplate::JinjaTemplate(JinjaTemplate&&) noexcept = default;
JinjaTemplate& JinjaTemplate::operator=(JinjaTemplate&&) noexcept = default;

Result<JinjaTemplate> JinjaTemplate::parse(std::string_view source) {
  auto segs = jinja::split_template(std::string(source));
  if (!segs.is_ok()) return segs.status();
  try {
    TemplateParser p(std::move(segs).value());
    std::string stop;
    ExprParser* tail = nullptr;
    JinjaTemplate t;
    t.root_ = std::make_shared<Node>();
    t.root_->kind = Node::kBlock;
    t.root_->body = p.parse_body({}, &stop, &tail);
    return t;
  } catch (const TemplateError& e) {
    return invalid_argument(e.message);
  } catch (const std::exception& e) {
    return invalid_argument(std::string("chat template: ") + e.what());
  }
}

Result<std::string> JinjaTemplate::render(const json& context) const {
  try {
    Renderer r(context);
    std::string out;
    r.run(root_->body, out);
    return out;
  } catch (const TemplateError& e) {
    return invalid_argument(e.message);
  } catch (const std::exception& e) {
    return invalid_argument(std::string("chat template: ") + e.what());
  }
}

Result<std::string> render_chat(const std::string& source, const json& messages, bool add_generation_prompt,
                                const std::string& bos_token, const std::string& eos_token, const json& extra) {
  TANDEM_ASSIGN_OR_RETURN(JinjaTemplate t, JinjaTemplate::parse(source));
  json ctx = extra.is_object() ? extra : json::object();
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = add_generation_prompt;
  ctx["bos_token"] = bos_token;
  ctx["eos_token"] = eos_token;
  return t.render(ctx);
}

}  // namespace tandem::model
