// Shared checks for the tokenizer fuzzers: whatever loaded must encode and decode without crashing,
// produce ids in range, never produce special tokens from text, and stream exactly the one-shot decode.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mistral/error.h"
#include "mistral/tokenizer.h"

namespace fuzz {

[[noreturn]] inline void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz invariant violated: %s %s\n", what, detail.c_str());
  std::abort();
}

// Encodes `text`, checks the ids, decodes them one-shot and streamed; returns the decode.
inline std::string check_encode(const mistral::Tokenizer& tok, const std::string& text, bool add_bos) {
  const std::vector<int32_t> ids = tok.encode(text, add_bos);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= tok.vocab_size()) fail("id out of range", std::to_string(id));
    // (A tokenizer.json may name a special token as its unk_token; tokenizers emits it for unknown bytes.)
    if (tok.type(id) == mistral::PieceType::Control && !(i == 0 && add_bos && id == tok.bos_id()) && id != tok.unk_id())
      fail("control token produced from text", std::to_string(id));
  }
  const std::string one = tok.decode(ids);
  mistral::StreamDecoder d(tok);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string part = d.push(id);
    if (mistral::utf8_sanitize(part) != part) fail("stream emitted invalid UTF-8");
    streamed += part;
  }
  streamed += d.flush();
  if (streamed != one) fail("streamed decode differs from one-shot decode");
  return one;
}

// Light exercise of a freshly parsed tokenizer.
inline void exercise(const mistral::Tokenizer& tok) {
  for (const char* s : {"", "Hello world", "  two  spaces\n\nline", "日本語 😀 e\xcc\x81", "\xff\xc0 bad", "[INST] <s>"})
    check_encode(tok, s, true);
  std::vector<int32_t> ids;
  const int n = tok.vocab_size();
  for (int i = 0; i < n && i < 300; ++i) ids.push_back(i);
  if (n > 0) ids.push_back(n - 1);
  tok.decode(ids);
  for (int id : {tok.bos_id(), tok.eos_id(), tok.unk_id()})
    if (id >= n) fail("special id out of range", std::to_string(id));
  bool threw = false;
  try {
    tok.decode({n});
  } catch (const mistral::UsageError&) {
    threw = true;
  }
  if (!threw) fail("decode accepted an id out of range");
}

}  // namespace fuzz
