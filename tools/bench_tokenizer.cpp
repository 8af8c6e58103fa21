// Encode throughput of our tokenizer next to SentencePiece's, on the same text in one run.
//
//   bench_tokenizer [--model PATH] [--mb N] [--reps R] [--tekken PATH]
//
// Texts: N MB (default 4) of mixed text (English prose, code, several scripts, digits, emoji, whitespace
// runs), encoded line by line (prompt-sized calls) and as one string; a 1 MB string without spaces
// (words of several scripts glued together); 1 MB of random lowercase letters (one segment: our worst
// case).
// For each: MB/s of our encode and of sentencepiece::SentencePieceProcessor::Encode (best of R runs),
// the ratio, and whether the ids are equal. Then linear scaling: the time for 1x, 2x and 4x the input.
// Every timed run of ours starts with an empty segment cache. With --tekken, our tekken encode
// throughput on the same texts (no reference implementation in C++ to compare with).
//
// Build and run: cmake --build build --target bench_tokenizer && build/bench_tokenizer
#include <sentencepiece_processor.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "mistral/tokenizer.h"

namespace {

std::string mixed_text(size_t bytes, uint32_t seed) {
  static const char* words[] = {
      "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
      "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were",
      "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would",
      "who", "so", "no", "model", "tokenizer", "inference", "language", "attention", "performance", "Mistral",
      "throughput", "benchmark", "memory", "sequence", "efficiently", "representation", "international",
      "understanding", "however", "between", "government", "development", "information", "different", "because"};
  static const char* code[] = {"def encode(self, text):\n", "    return [self.vocab[t] for t in tokens]\n",
                               "for (int i = 0; i < n; ++i) {\n", "  sum += x[i] * y[i];\n", "}\n",
                               "#include <vector>\n", "if (ptr == nullptr) return -1;\n", "    // TODO: fix\n"};
  static const char* other[] = {"日本語のテキストです。", "Привет, как дела? ", "مرحبا بالعالم ", "Γειά σου κόσμε ",
                                "中文文本处理 ", "한국어 텍스트 ", "नमस्ते दुनिया ", "Ça va très bien. ", "Größe ", "😀 👍🏽 🦙 "};
  std::mt19937 rng(seed);
  std::string s;
  s.reserve(bytes + 64);
  while (s.size() < bytes) {
    const uint32_t r = rng() % 100;
    if (r < 72) {
      const int n = 5 + int(rng() % 15);
      for (int i = 0; i < n; ++i) {
        std::string w = words[rng() % (sizeof words / sizeof *words)];
        if (i == 0) w[0] = char(std::toupper(static_cast<unsigned char>(w[0])));
        s += w;
        s += (i + 1 == n) ? (rng() % 4 ? ". " : ".\n\n") : (rng() % 10 ? " " : ", ");
      }
    } else if (r < 84) {
      s += code[rng() % (sizeof code / sizeof *code)];
    } else if (r < 94) {
      s += other[rng() % (sizeof other / sizeof *other)];
    } else if (r < 97) {
      s += std::to_string(rng() % 100000) + " ";
    } else {
      s += std::string(1 + rng() % 12, rng() % 2 ? ' ' : '\n');
    }
  }
  s.resize(bytes);
  // Do not end inside a UTF-8 character.
  while (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xc0) == 0x80) s.pop_back();
  if (!s.empty() && static_cast<unsigned char>(s.back()) >= 0xc0) s.pop_back();
  return s;
}

std::string no_space_text(size_t bytes) {
  static const char* parts[] = {"the", "tokenizer", "Mistral", "日本語", "привет", "👍", "42", ".", "é", "ß", "-",
                                "ইংরেজি", "\n", "(x)", "abc", "Z"};
  std::mt19937 rng(5);
  std::string s;
  while (s.size() < bytes) s += parts[rng() % (sizeof parts / sizeof *parts)];
  return s;
}

// Our encoder keeps a per-thread cache of segments for the last tokenizer used; encoding with another
// instance empties it, so every timed run below starts cold (SentencePiece has no such cache).
std::function<void()> g_cold = [] {};

// Random lowercase letters: every adjacent pair occurs inside some piece, so the whole string is one
// segment for our encoder (its worst case: a heap over all characters).
std::string letters_text(size_t bytes) {
  std::mt19937 rng(9);
  std::string s(bytes, 'a');
  for (char& c : s) c = char('a' + rng() % 26);
  return s;
}

double seconds(const std::function<void()>& f, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    g_cold();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

struct Result {
  double ours_s, sp_s;
  bool equal;
};

// Encodes each line on its own (prompt-sized inputs, SentencePiece's best case); the ids of all lines.
Result run_lines(const mistral::Tokenizer& tok, const sentencepiece::SentencePieceProcessor& sp,
                 const std::string& text, int reps) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < text.size();) {
    size_t j = text.find('\n', i);
    j = j == std::string::npos ? text.size() : j + 1;
    lines.push_back(text.substr(i, j - i));
    i = j;
  }
  std::vector<int32_t> ours;
  std::vector<int> theirs, tmp;
  Result r;
  r.ours_s = seconds([&] {
    ours.clear();
    for (const std::string& l : lines) {
      const std::vector<int32_t> ids = tok.encode(l, false);
      ours.insert(ours.end(), ids.begin(), ids.end());
    }
  }, reps);
  r.sp_s = seconds([&] {
    theirs.clear();
    for (const std::string& l : lines) {
      (void)sp.Encode(l, &tmp);
      theirs.insert(theirs.end(), tmp.begin(), tmp.end());
    }
  }, reps);
  r.equal = std::vector<int>(ours.begin(), ours.end()) == theirs;
  return r;
}

Result run(const mistral::Tokenizer& tok, const sentencepiece::SentencePieceProcessor& sp, const std::string& text,
           int reps) {
  std::vector<int32_t> ours;
  std::vector<int> theirs;
  Result r;
  r.ours_s = seconds([&] { ours = tok.encode(text, false); }, reps);
  r.sp_s = seconds([&] { (void)sp.Encode(text, &theirs); }, reps);
  r.equal = std::vector<int>(ours.begin(), ours.end()) == theirs;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(MISTRAL_SHARED_DATA) + "/tokenizers/mistral-v0.1/tokenizer.model";
  std::string tekken;
  double mb = 4;
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") model = next();
    else if (a == "--mb") mb = std::atof(next().c_str());
    else if (a == "--reps") reps = std::atoi(next().c_str());
    else if (a == "--tekken") tekken = next();
    else {
      std::fprintf(stderr, "usage: %s [--model PATH] [--mb N] [--reps R] [--tekken PATH]\n", argv[0]);
      return 2;
    }
  }
  std::unique_ptr<mistral::Tokenizer> tok;
  try {
    tok = mistral::Tokenizer::load_sentencepiece(model);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::unique_ptr<mistral::Tokenizer> other = mistral::Tokenizer::load_sentencepiece(model);
  g_cold = [&] { (void)other->encode("x", false); };
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.Load(model).ok()) {
    std::fprintf(stderr, "sentencepiece cannot load %s\n", model.c_str());
    return 1;
  }
  std::printf("model %s\n", model.c_str());
  const size_t bytes = size_t(mb * 1024 * 1024);
  struct Named {
    const char* name;
    std::string text;
  };
  const std::vector<Named> texts = {{"mixed text", mixed_text(bytes, 1)},
                                    {"1 MB without spaces", no_space_text(1 << 20)},
                                    {"1 MB random letters", letters_text(1 << 20)}};
  bool all_equal = true;
  std::printf("%-26s %7s %12s %12s %7s %s\n", "text", "MB", "ours MB/s", "spm MB/s", "ratio", "ids");
  auto report = [&](const char* name, size_t size, const Result& r) {
    const double m = double(size) / (1024 * 1024);
    std::printf("%-26s %7.2f %12.2f %12.2f %6.2fx %s\n", name, m, m / r.ours_s, m / r.sp_s, r.sp_s / r.ours_s,
                r.equal ? "equal" : "DIFFERENT");
    all_equal = all_equal && r.equal;
  };
  report("mixed text, line by line", texts[0].text.size(), run_lines(*tok, sp, texts[0].text, reps));
  for (const Named& t : texts) report(t.name, t.text.size(), run(*tok, sp, t.text, reps));
  std::printf("\nscaling (seconds; linear means 2x and 4x take 2x and 4x as long)\n");
  std::printf("%-22s %6s %10s %10s %12s %12s\n", "text", "size", "ours s", "spm s", "ours ratio", "spm ratio");
  for (int which = 0; which < 3; ++which) {
    double base_o = 0, base_s = 0;
    for (int k : {1, 2, 4}) {
      const size_t n = (size_t(1) << 20) * size_t(k);
      const std::string text = which == 0 ? mixed_text(n, 7) : which == 1 ? no_space_text(n) : letters_text(n);
      const Result r = run(*tok, sp, text, reps);
      if (k == 1) base_o = r.ours_s, base_s = r.sp_s;
      std::printf("%-22s %5dM %10.4f %10.4f %11.2fx %11.2fx\n",
                  which == 0 ? "mixed text" : which == 1 ? "without spaces" : "random letters", k,
                  r.ours_s, r.sp_s, r.ours_s / base_o, r.sp_s / base_s);
      all_equal = all_equal && r.equal;
    }
  }
  if (!tekken.empty()) {
    auto tk = mistral::Tokenizer::load_tekken(tekken);
    std::printf("\ntekken %s\n", tekken.c_str());
    for (const Named& t : texts) {
      const double s = seconds([&] { (void)tk->encode(t.text, false); }, reps);
      std::printf("%-22s %9.2f MB %10.2f MB/s\n", t.name, double(t.text.size()) / (1024 * 1024),
                  double(t.text.size()) / (1024 * 1024) / s);
    }
  }
  if (!all_equal) std::printf("\nWARNING: ids differ from SentencePiece\n");
  return all_equal ? 0 : 1;
}
