// Guided decoding's cost per sampled token at a production vocabulary size,
// against the sampling it guards: one cpu::sample of a full row (T = 1, no
// top-k/top-p) is the baseline, and its argmax (what a greedy row costs). The vocabulary is a byte-level BPE of
// --vocab entries built here (the words of the built-in corpus, their
// prefixes, with and without a leading space, then random strings): the
// tiny test models' vocabularies are too small to show the trie walk's cost.
// For each grammar a real answer is tokenized and walked token by token:
//   cold: a fresh guide; a state's first visit walks the vocabulary's trie;
//   warm: the same walk again; every state's mask is cached, so a token costs
//         the lookup, masking a copy of the row and advancing the automaton.
//
//   build/benchmarks/guided_bench [--vocab 151936] [--repeats 20]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/kernels/cpu.h"
#include "tandem/model/guided.h"
#include "tandem/model/tokenizer.h"
#include "tandem/model/tool_calls.h"

using namespace tandem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// GPT-2's byte-to-character table of byte-level BPE (published with the
// GPT-2 tokenizer): printable bytes stand for themselves, the others for
// U+0100 onwards in byte order.
std::vector<std::string> byte_chars() {
  std::vector<std::string> out(256);
  int next = 256;
  auto utf8 = [](int cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    out[static_cast<size_t>(b)] = utf8(printable ? b : next++);
  }
  return out;
}

std::string synthetic_tokenizer(int vocab) {
  const auto chars = byte_chars();
  auto encode = [&](const std::string& text) {
    std::string s;
    for (unsigned char c : text) s += chars[c];
    return s;
  };
  std::vector<std::string> pieces;
  std::set<std::string> seen;
  auto add = [&](const std::string& text) {
    if (static_cast<int>(pieces.size()) >= vocab - 1 || text.empty() || !seen.insert(text).second) return;
    pieces.push_back(text);
  };
  for (int b = 0; b < 256; ++b) add(std::string(1, static_cast<char>(b)));
  std::istringstream corpus{std::string(model::builtin_tokenizer_corpus())};
  for (std::string word; corpus >> word;) {
    if (!std::all_of(word.begin(), word.end(), [](unsigned char c) { return c < 0x80; })) continue;
    for (size_t n = 2; n <= word.size(); ++n) {
      add(word.substr(0, n));
      add(" " + word.substr(0, n));
    }
  }
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}[]\":,._-";
  std::mt19937 rng(1);
  while (static_cast<int>(pieces.size()) < vocab - 1) {
    std::string s;
    for (int k = 2 + static_cast<int>(rng() % 7); k > 0; --k) s += alphabet[rng() % alphabet.size()];
    add(s);
  }
  nlohmann::ordered_json v = nlohmann::ordered_json::object();
  for (size_t i = 0; i < pieces.size(); ++i) v[encode(pieces[i])] = i;
  nlohmann::ordered_json j = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", pieces.size()}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false},
         {"rstrip", false}, {"normalized", false}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", true},
        {"vocab", v}, {"merges", nlohmann::ordered_json::array()}}}};
  return j.dump();
}

// Greedy longest-match over the vocabulary's texts: a plausible way a model
// would spell the answer, without a trained merge table.
std::vector<int32_t> spell(const model::TokenVocabulary& vocab, const std::string& text) {
  std::vector<int32_t> out;
  size_t at = 0;
  const auto& trie = vocab.trie(false);
  while (at < text.size()) {
    int32_t node = 0, best = -1;
    size_t best_len = 0;
    for (size_t i = at; i < text.size(); ++i) {
      int32_t next = -1;
      for (int32_t e = trie.edge_begin[static_cast<size_t>(node)]; e < trie.edge_begin[static_cast<size_t>(node) + 1]; ++e)
        if (trie.edge_byte[static_cast<size_t>(e)] == static_cast<uint8_t>(text[i])) next = trie.edge_node[static_cast<size_t>(e)];
      if (next < 0) break;
      node = next;
      if (trie.token_begin[static_cast<size_t>(node)] < trie.token_begin[static_cast<size_t>(node) + 1]) {
        best = trie.tokens[static_cast<size_t>(trie.token_begin[static_cast<size_t>(node)])];
        best_len = i - at + 1;
      }
    }
    if (best < 0) return {};
    out.push_back(best);
    at += best_len;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int vocab_size = 151936, repeats = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--vocab") vocab_size = std::atoi(argv[i + 1]);
    else if (a == "--repeats") repeats = std::atoi(argv[i + 1]);
  }
  if (vocab_size < 1024) return std::fprintf(stderr, "--vocab must be at least 1024\n"), 2;
  auto tok = model::Tokenizer::from_json(synthetic_tokenizer(vocab_size));
  if (!tok.is_ok()) return std::fprintf(stderr, "%s\n", tok.status().to_string().c_str()), 1;
  auto t0 = Clock::now();
  auto vocab = model::TokenVocabulary::build(*tok, tok->vocab_size());
  std::printf("vocabulary: %d tokens (byte-level BPE built here), trie built in %.0f ms\n", vocab->size(),
              seconds_since(t0) * 1e3);

  // The baseline: sampling one row of the full vocabulary.
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> row(static_cast<size_t>(vocab->size())), copy(row.size()), scratch(2 * row.size());
  for (float& x : row) x = normal(rng);
  const kernels::cpu::SamplingParams sampling{1.0f, 0, 1.0f};
  std::vector<double> sample_us;
  for (int r = 0; r < 50; ++r) {
    t0 = Clock::now();
    volatile int32_t picked = kernels::cpu::sample(row.data(), vocab->size(), sampling, 0.37f, scratch.data());
    (void)picked;
    sample_us.push_back(seconds_since(t0) * 1e6);
  }
  std::vector<double> argmax_us;
  for (int r = 0; r < 50; ++r) {
    t0 = Clock::now();
    volatile int32_t picked = kernels::cpu::argmax(row.data(), vocab->size());
    (void)picked;
    argmax_us.push_back(seconds_since(t0) * 1e6);
  }
  std::sort(sample_us.begin(), sample_us.end());
  std::sort(argmax_us.begin(), argmax_us.end());
  const double sample = sample_us[sample_us.size() / 2], argmax = argmax_us[argmax_us.size() / 2];
  std::printf("baselines: one full-vocabulary sample (T = 1) %.1f us, its greedy argmax %.1f us (medians of 50)\n\n",
              sample, argmax);

  struct Grammar {
    const char* name;
    model::GuideSpec spec;
    std::string answer;
  };
  auto schema = model::json_schema_to_regex(R"({"type": "object", "properties": {
      "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string", "format": "email"},
      "tags": {"type": "array", "items": {"type": "string"}}, "active": {"type": "boolean"}},
      "required": ["name", "age", "tags", "active"]})");
  if (!schema.is_ok()) return std::fprintf(stderr, "%s\n", schema.status().to_string().c_str()), 1;
  const std::string person =
      R"({"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["mathematics", "engines", "notes"], "active": false})";
  // A forced tool call (tool_choice: required) among 8 tools, as the router builds it.
  std::vector<model::ToolSpec> tools = {
      {"get_weather", R"({"type": "object", "properties": {"city": {"type": "string"},
                         "days": {"type": "integer"}}, "required": ["city", "days"]})"}};
  for (const char* name : {"search", "open_url", "send_email", "calendar", "calculator", "translate", "now"})
    tools.push_back({name, R"({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]})"});
  auto tool_call = model::tool_call_regex(model::ToolCallFormat::kHermes, tools, /*parallel=*/true);
  if (!tool_call.is_ok()) return std::fprintf(stderr, "%s\n", tool_call.status().to_string().c_str()), 1;
  const std::vector<Grammar> grammars = {
      {"any JSON object", {model::GuideSpec::Kind::kJsonObject, ""}, person},
      {"JSON schema (5 properties)", {model::GuideSpec::Kind::kRegex, schema.value()}, person},
      {"regex [a-z ,.]+", {model::GuideSpec::Kind::kRegex, "[a-z ,.]+"}, "the analytical engine weaves algebraic patterns, as the loom weaves flowers."},
      {"choice of 4", {model::GuideSpec::Kind::kRegex, model::choice_regex({"positive", "negative", "neutral", "mixed"})}, "negative"},
      {"tool call (8 tools)", {model::GuideSpec::Kind::kRegex, tool_call.value()},
       "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}\n</tool_call>"}};
  std::printf("%-28s %7s %7s %14s %10s %14s %10s %10s\n", "grammar", "tokens", "states", "cold ms/state",
              "cold/smpl", "warm us/token", "warm/smpl", "warm/argmx");
  for (const Grammar& g : grammars) {
    const std::vector<int32_t> tokens = spell(*vocab, g.answer);
    if (tokens.empty()) return std::fprintf(stderr, "%s: cannot spell the answer\n", g.name), 1;
    auto automaton = model::compile_guide(g.spec);
    if (!automaton.is_ok()) return std::fprintf(stderr, "%s\n", automaton.status().to_string().c_str()), 1;
    model::TokenGuide guide(std::move(automaton).value(), vocab);
    // One walk: per token, the mask, the masked copy of the row, the step.
    auto walk = [&](std::set<int32_t>* new_states, double* cold_s) {
      model::TokenGuide::State s = guide.start();
      for (int32_t t : tokens) {
        const bool fresh = new_states && new_states->insert(s.automaton).second;
        const auto t1 = Clock::now();
        auto mask = guide.allowed(s);
        if (!mask.is_ok()) return false;
        if (fresh) *cold_s += seconds_since(t1);
        std::copy(row.begin(), row.end(), copy.begin());
        model::mask_logits(**mask, copy.data(), vocab->size());
        if (!model::mask_allows(**mask, t)) return false;
        s = guide.advance(s, t);
      }
      return guide.accepting(s);
    };
    std::set<int32_t> states;
    double cold_s = 0;
    if (!walk(&states, &cold_s)) return std::fprintf(stderr, "%s: the answer does not walk the grammar\n", g.name), 1;
    std::vector<double> per_token;
    for (int r = 0; r < repeats; ++r) {
      t0 = Clock::now();
      walk(nullptr, nullptr);
      per_token.push_back(seconds_since(t0) * 1e6 / static_cast<double>(tokens.size()));
    }
    std::sort(per_token.begin(), per_token.end());
    const double warm = per_token[per_token.size() / 2];
    const double cold_ms = cold_s * 1e3 / static_cast<double>(states.size());
    std::printf("%-28s %7zu %7zu %14.2f %10.1f %14.1f %10.3f %10.1f\n", g.name, tokens.size(), states.size(),
                cold_ms, cold_ms * 1e3 / sample, warm, warm / sample, warm / argmax);
  }
  std::printf("\ncold: the first visit of a state (then cached for every request with that grammar); warm: a\n"
              "cached state's lookup + masking a copy of the row + advancing, per token; smpl, argmx: the baselines.\n");
  return 0;
}
