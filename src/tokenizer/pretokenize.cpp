// Hand-coded matchers for the regex pre-tokenizers of byte-level BPE tokenizers (tekken, GPT-2,
// Llama-3), with Unicode classes from generated tables. Each pattern is an alternation of short
// sequences of character classes with greedy quantifiers, matched at the current position with the
// leftmost-first, backtracking semantics of the regex engines the reference tokenizers use (Rust
// regex/fancy-regex in tiktoken, Oniguruma in tokenizers). Every pattern here matches at every
// position, so the matches tile the text.
#include <algorithm>

#include "internal.h"

namespace mistral {
namespace tok {

namespace {
#include "unicode_tables.inc"

// Per-code-point class bits.
enum : uint16_t {
  kLu = 1 << 0,
  kLl = 1 << 1,
  kLt = 1 << 2,
  kLm = 1 << 3,
  kLo = 1 << 4,
  kM = 1 << 5,
  kN = 1 << 6,
  kWS = 1 << 7,  // \s (White_Space)
  kCR = 1 << 8,
  kLF = 1 << 9,
  kSpace = 1 << 10,  // U+0020
  kSlash = 1 << 11,
  kApos = 1 << 12,
  kL = kLu | kLl | kLt | kLm | kLo,
};
const uint16_t kClassBits[9] = {0, kLu, kLl, kLt, kLm, kLo, kM, kN, kWS};

uint16_t ascii_bits(uint32_t c) {
  uint16_t b = kClassBits[unicode_class(c)];
  if (c == '\r') b |= kCR;
  if (c == '\n') b |= kLF;
  if (c == ' ') b |= kSpace;
  if (c == '/') b |= kSlash;
  if (c == '\'') b |= kApos;
  return b;
}

struct AsciiTable {
  uint16_t bits[128];
  AsciiTable() {
    for (uint32_t c = 0; c < 128; ++c) bits[c] = ascii_bits(c);
  }
};
const AsciiTable kAscii;

// A character class: matches when ((bits & mask) != 0) != negate.
struct Cls {
  uint16_t mask;
  bool negate;
  bool has(uint16_t b) const { return ((b & mask) != 0) != negate; }
};
// One quantified class in a sequence.
struct Item {
  Cls cls;
  uint32_t min, max;
};
constexpr uint32_t kInf = 0xffffffffu;

// A sequence alternative; `not_followed_by_nonspace` is a trailing (?!\S).
struct Seq {
  int n;
  Item items[3];
  bool not_followed_by_nonspace;
};

const Cls kNotCrLfLN{kCR | kLF | kL | kN, true};  // [^\r\n\p{L}\p{N}]
const Cls kUpperish{kLu | kLt | kLm | kLo | kM, false};  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
const Cls kLowerish{kLl | kLm | kLo | kM, false};  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
const Cls kLetter{kL, false};
const Cls kNumber{kN, false};
const Cls kSpaceCls{kSpace, false};
const Cls kOther{kWS | kL | kN, true};  // [^\s\p{L}\p{N}]
const Cls kCrLfSlash{kCR | kLF | kSlash, false};
const Cls kCrLf{kCR | kLF, false};
const Cls kWhite{kWS, false};

// tekken:
// [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|
// [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|
// ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
const Seq kTekken[] = {
    {3, {{kNotCrLfLN, 0, 1}, {kUpperish, 0, kInf}, {kLowerish, 1, kInf}}, false},
    {3, {{kNotCrLfLN, 0, 1}, {kUpperish, 1, kInf}, {kLowerish, 0, kInf}}, false},
    {1, {{kNumber, 1, 1}}, false},
    {3, {{kSpaceCls, 0, 1}, {kOther, 1, kInf}, {kCrLfSlash, 0, kInf}}, false},
    {2, {{kWhite, 0, kInf}, {kCrLf, 1, kInf}}, false},
    {1, {{kWhite, 1, kInf}}, true},
    {1, {{kWhite, 1, kInf}}, false},
};
// GPT-2 (after the contractions 's|'t|'re|'ve|'m|'ll|'d):
// ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
const Seq kGpt2[] = {
    {2, {{kSpaceCls, 0, 1}, {kLetter, 1, kInf}}, false},
    {2, {{kSpaceCls, 0, 1}, {kNumber, 1, kInf}}, false},
    {2, {{kSpaceCls, 0, 1}, {kOther, 1, kInf}}, false},
    {1, {{kWhite, 1, kInf}}, true},
    {1, {{kWhite, 1, kInf}}, false},
};
// Llama-3 (after the case-insensitive contractions (?i:'s|'t|'re|'ve|'m|'ll|'d)):
// [^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
const Seq kLlama3[] = {
    {2, {{kNotCrLfLN, 0, 1}, {kLetter, 1, kInf}}, false},
    {1, {{kNumber, 1, 3}}, false},
    {3, {{kSpaceCls, 0, 1}, {kOther, 1, kInf}, {kCrLf, 0, kInf}}, false},
    {2, {{kWhite, 0, kInf}, {kCrLf, 1, kInf}}, false},
    {1, {{kWhite, 1, kInf}}, true},
    {1, {{kWhite, 1, kInf}}, false},
};

const char kTekkenPattern[] =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char kGpt2Pattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char kLlama3Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text as code points with class bits; `off[i]` is the byte offset of code point i (off[n] = size).
struct Cps {
  std::vector<uint32_t> cp;
  std::vector<uint16_t> bits;
  std::vector<uint32_t> off;
};

// Greedy backtracking match of items[k..] at position i; returns the end, or -1. Each pattern has at
// most three items and the last one never needs its own backtracking, so a failed attempt at a given
// split costs O(1) and a whole alternative costs O(run length).
long match_seq(const Seq& s, int k, const uint16_t* b, size_t i, size_t n) {
  if (k >= s.n || k >= 3) {
    if (s.not_followed_by_nonspace && i < n && !(b[i] & kWS)) return -1;
    return long(i);
  }
  const Item& it = s.items[k];
  size_t cnt = 0;
  while (cnt < it.max && i + cnt < n && it.cls.has(b[i + cnt])) ++cnt;
  if (cnt < it.min) return -1;
  for (size_t c = cnt;; --c) {
    const long r = match_seq(s, k + 1, b, i + c, n);
    if (r >= 0) return r;
    if (c == it.min) return -1;
  }
}

bool fold_eq(uint32_t c, char lower, bool ci) {
  if (c == uint32_t(lower)) return true;
  if (!ci) return false;
  if (c == uint32_t(lower - 'a' + 'A')) return true;
  return lower == 's' && c == 0x17f;  // LATIN SMALL LETTER LONG S folds to 's'
}

// 's|'t|'re|'ve|'m|'ll|'d at i (cp[i] == '\''); returns the length in code points or 0.
size_t match_contraction(const uint32_t* cp, size_t i, size_t n, bool ci) {
  if (i + 1 >= n) return 0;
  const uint32_t a = cp[i + 1];
  if (fold_eq(a, 's', ci) || fold_eq(a, 't', ci) || fold_eq(a, 'm', ci) || fold_eq(a, 'd', ci)) return 2;
  if (i + 2 >= n) return 0;
  const uint32_t b = cp[i + 2];
  if ((fold_eq(a, 'r', ci) && fold_eq(b, 'e', ci)) || (fold_eq(a, 'v', ci) && fold_eq(b, 'e', ci)) ||
      (fold_eq(a, 'l', ci) && fold_eq(b, 'l', ci)))
    return 3;
  return 0;
}

// Matches the pattern repeatedly over code points [lo, hi), appending chunk ends (byte offsets).
void split_range(Pattern p, const Cps& t, size_t lo, size_t hi, std::vector<uint32_t>* ends) {
  const Seq* seqs;
  size_t nseq;
  bool contractions = false, ci = false;
  switch (p) {
    case Pattern::Tekken: seqs = kTekken, nseq = sizeof kTekken / sizeof kTekken[0]; break;
    case Pattern::Gpt2: seqs = kGpt2, nseq = sizeof kGpt2 / sizeof kGpt2[0], contractions = true; break;
    default: seqs = kLlama3, nseq = sizeof kLlama3 / sizeof kLlama3[0], contractions = ci = true; break;
  }
  const uint16_t* b = t.bits.data() + lo;
  const uint32_t* cp = t.cp.data() + lo;
  const size_t n = hi - lo;
  size_t i = 0;
  while (i < n) {
    long end = -1;
    if (contractions && (b[i] & kApos)) {
      const size_t len = match_contraction(cp, i, n, ci);
      if (len) end = long(i + len);
    }
    for (size_t a = 0; end < 0 && a < nseq; ++a) end = match_seq(seqs[a], 0, b, i, n);
    if (end <= long(i)) end = long(i + 1);  // unreachable: every pattern matches somewhere at i
    i = size_t(end);
    ends->push_back(t.off[lo + i]);
  }
}

}  // namespace

uint8_t unicode_class(uint32_t cp) {
  const uint32_t* it = std::upper_bound(kUStart, kUStart + kURangeCount, cp);
  return kUClass[size_t(it - kUStart) - 1];
}

const char* pattern_string(Pattern p) {
  switch (p) {
    case Pattern::Tekken: return kTekkenPattern;
    case Pattern::Gpt2: return kGpt2Pattern;
    default: return kLlama3Pattern;
  }
}

bool pattern_from_string(const std::string& s, Pattern* out) {
  for (Pattern p : {Pattern::Tekken, Pattern::Gpt2, Pattern::Llama3})
    if (s == pattern_string(p)) {
      *out = p;
      return true;
    }
  return false;
}

void pretokenize(Pattern p, std::string_view text, std::vector<uint32_t>* ends, Digits digits) {
  thread_local Cps t;
  t.cp.clear(), t.bits.clear(), t.off.clear();
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    uint32_t c = s[i];
    size_t len = 1;
    if (c >= 0x80) {
      len = utf8_valid_len(s + i, n - i);
      if (len == 0) len = 1, c = 0xfffd;  // not reached for sanitised input
      else if (len == 2) c = ((c & 0x1f) << 6) | (s[i + 1] & 0x3f);
      else if (len == 3) c = ((c & 0x0f) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3f);
      else c = ((c & 0x07) << 18) | ((s[i + 1] & 0x3fu) << 12) | ((s[i + 2] & 0x3fu) << 6) | (s[i + 3] & 0x3f);
    }
    t.cp.push_back(c);
    t.bits.push_back(c < 128 ? kAscii.bits[c] : kClassBits[unicode_class(c)]);
    t.off.push_back(uint32_t(i));
    i += len;
  }
  t.off.push_back(uint32_t(n));
  const size_t m = t.cp.size();
  if (digits == Digits::None) {
    split_range(p, t, 0, m, ends);
    return;
  }
  // tokenizers' Digits: numeric characters (char::is_numeric, i.e. \p{N}) isolated one by one or in
  // runs; the pattern then splits each remaining piece.
  size_t i = 0;
  while (i < m) {
    size_t j = i;
    if (t.bits[i] & kN) {
      ++j;
      if (digits == Digits::Contiguous)
        while (j < m && (t.bits[j] & kN)) ++j;
    } else {
      while (j < m && !(t.bits[j] & kN)) ++j;
    }
    split_range(p, t, i, j, ends);
    i = j;
  }
}

}  // namespace tok
}  // namespace mistral
