// Internals shared by the tokenizer sources: UTF-8 helpers, a byte-string hash map, and the
// hand-coded regex pre-tokenizers of the byte-level (tiktoken / GPT-2 style) tokenizers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mistral/tokenizer.h"

namespace mistral {
namespace tok {

// ---- UTF-8 ------------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence at p[0..n) (n > 0), or 0 if the bytes there are not one.
size_t utf8_valid_len(const unsigned char* p, size_t n);
// Length of the maximal subpart at p[0..n) (n > 0): the longest prefix of a valid sequence that is
// present, at least 1. Equals utf8_valid_len when that is non-zero.
size_t utf8_maximal_subpart(const unsigned char* p, size_t n);
// True if the whole string is valid UTF-8.
bool utf8_is_valid(std::string_view s);
// Replaces each maximal subpart of an ill-formed sequence by U+FFFD (the Unicode "best practice", as
// Python's bytes.decode(errors="replace") and Rust's String::from_utf8_lossy do). If `complete_only`,
// a valid but truncated sequence at the end is left in *rest instead.
std::string utf8_sanitize_maximal(std::string_view in, bool complete_only = false, std::string* rest = nullptr);

// ---- string -> id hash map -----------------------------------------------------------------------

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t(n) * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    p += 8, n -= 8;
  }
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0x94d049bb133111ebull;
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return h;
}

// Open-addressing map from byte strings (copied into an owned blob) to non-negative int32 values.
class StrMap {
 public:
  void reserve(size_t n);
  // Inserts or overwrites; returns false if the key was already present (value overwritten).
  bool insert(std::string_view key, int32_t value);
  // Inserts unless present (the first value stays); returns false if it was present.
  bool insert_new(std::string_view key, int32_t value) {
    if (find(key) >= 0) return false;
    return insert(key, value);
  }
  // The value, or -1.
  int32_t find(const char* p, size_t n) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(p, n);
    const uint32_t tag = uint32_t(h >> 32);
    for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.value < 0) return -1;
      if (s.tag == tag && s.len == n && std::memcmp(blob_.data() + s.off, p, n) == 0) return s.value;
    }
  }
  int32_t find(std::string_view k) const { return find(k.data(), k.size()); }
  size_t size() const { return count_; }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot());
    blob_.clear();
    count_ = 0;
  }

 private:
  struct Slot {
    uint32_t off = 0, len = 0, tag = 0;
    int32_t value = -1;
  };
  void grow();
  std::vector<Slot> slots_;
  std::string blob_;
  size_t mask_ = 0, count_ = 0;
};

// Open-addressing set of non-zero 64-bit keys.
class U64Set {
 public:
  void insert(uint64_t k) {
    if ((count_ + 1) * 2 > keys_.size()) grow();
    size_t i = slot(k);
    if (keys_[i] == k) return;
    keys_[i] = k;
    ++count_;
  }
  bool contains(uint64_t k) const { return !keys_.empty() && keys_[slot(k)] == k; }

 private:
  size_t slot(uint64_t k) const {
    uint64_t h = k * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
    for (size_t i = size_t(h) & (keys_.size() - 1);; i = (i + 1) & (keys_.size() - 1))
      if (keys_[i] == k || keys_[i] == 0) return i;
  }
  void grow() {
    std::vector<uint64_t> old;
    old.swap(keys_);
    keys_.assign(old.empty() ? 64 : old.size() * 2, 0);
    for (uint64_t k : old)
      if (k) keys_[slot(k)] = k;
  }
  std::vector<uint64_t> keys_;
  size_t count_ = 0;
};

// Key of two adjacent code points (never 0).
inline uint64_t bigram_key(uint32_t a, uint32_t b) { return ((uint64_t(a) << 21) | b) + 1; }

// ---- SentencePiece-kind encoder data --------------------------------------------------------------

struct SpModel {
  StrMap pieces;   // normal and user-defined pieces -> id (the first of equal pieces)
  int32_t ascii_id[128];  // pieces.find of each ASCII character
  U64Set bigrams;  // pairs of adjacent code points inside some piece
};

// ---- pre-tokenizer patterns -----------------------------------------------------------------------

// The regex pre-tokenizers we implement by hand (std::regex has no \p{..}). Each is identified by its
// exact pattern string; a file with any other pattern is rejected.
enum class Pattern {
  Tekken,  // mistral-common tekken.json (tiktoken)
  Gpt2,    // GPT-2 ByteLevel pre-tokenizer (tokenizers' ByteLevel use_regex=true)
  Llama3,  // Llama-3 Split pre-tokenizer
};
const char* pattern_string(Pattern p);
bool pattern_from_string(const std::string& s, Pattern* out);

// Unicode class of a code point (generated tables): 0 other, 1 Lu, 2 Ll, 3 Lt, 4 Lm, 5 Lo, 6 M, 7 N,
// 8 White_Space.
uint8_t unicode_class(uint32_t cp);

// tokenizers' Digits pre-tokenizer, applied before the pattern: numeric characters (\p{N}) isolated
// one by one (individual_digits) or in runs.
enum class Digits { None, Individual, Contiguous };

// Splits valid UTF-8 text into the pattern's matches (which cover the text: every pattern here matches
// at every position). Appends the end offset of each chunk to *ends.
void pretokenize(Pattern p, std::string_view text, std::vector<uint32_t>* ends, Digits digits = Digits::None);

// Largest token id a tokenizer file may use (real vocabularies are below 2^18); keeps a corrupt file from
// asking for gigabytes.
constexpr int64_t kMaxVocabId = (int64_t(1) << 22) - 1;

// ---- byte-level BPE (tekken and GPT-2-style tokenizer.json) ------------------------------------------

struct ByteLevelModel {
  StrMap vocab;                     // token bytes -> id (ordinary tokens only)
  std::vector<std::string> bytes;   // id -> token bytes ("" for special tokens)
  int32_t byte_id[256];             // id of each single-byte token; -1 if none (tokenizer.json only)
  Pattern pattern = Pattern::Tekken;
  Digits digits = Digits::None;
  bool add_prefix_space = false;    // tokenizers' ByteLevel(add_prefix_space)
  bool whole_chunk_first = true;    // a chunk that is itself a token is that token (tiktoken; ignore_merges)
  bool use_merge_list = false;      // tokenizers: merges list; tiktoken: any adjacent pair whose bytes are a token
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges;  // (left, right) -> (rank, merged id)
  bool fuse_unk = false;            // tokenizers' BPE fuse_unk (bytes without a token, with an unk_token)
  bool flush_on_special = false;    // tekken decodes each run between special tokens on its own
  int32_t num_special = 0;          // tekken: ids below this are special tokens
};

// Friend of Tokenizer: the loaders, from a file's bytes (`path` names it in errors and source()).
struct Build {
  static std::unique_ptr<Tokenizer> sentencepiece(const std::string& data, const std::string& path);  // loaders.cpp
  static std::unique_ptr<Tokenizer> hf_json(const std::string& text, const std::string& path);        // loaders.cpp
  static std::unique_ptr<Tokenizer> hf_byte_level(const std::string& path, const nlohmann::json& j);  // loaders.cpp
  static std::unique_ptr<Tokenizer> tekken(const std::string& text, const std::string& path);         // tekken.cpp
  // The same from a parsed document; may throw nlohmann::json::exception on values of unexpected types
  // (the two above turn those into FileError).
  static std::unique_ptr<Tokenizer> hf_json_doc(const nlohmann::json& j, const std::string& path);
  static std::unique_ptr<Tokenizer> tekken_doc(const nlohmann::json& j, const std::string& path);
};

// Standard base64 (RFC 4648, '=' padding optional); false on any other character.
bool base64_decode(std::string_view in, std::string* out);
// GPT-2's byte <-> printable code point mapping used by tokenizers' ByteLevel.
uint32_t gpt2_byte_to_cp(uint8_t b);
int gpt2_cp_to_byte(uint32_t cp);  // -1 if cp is not one of the 256

}  // namespace tok
}  // namespace mistral
