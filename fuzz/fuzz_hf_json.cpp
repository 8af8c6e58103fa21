// libFuzzer target: the tokenizer.json parser (tok::Build::hf_json) on arbitrary bytes. A FileError is the
// expected outcome for bad input; anything else escaping, a sanitizer report or a failed invariant in
// what loads is a finding.
#include "fuzz_common.h"
#include "tokenizer/internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<mistral::Tokenizer> tok;
  try {
    tok = mistral::tok::Build::hf_json(bytes, "tokenizer.json");
  } catch (const mistral::FileError&) {
    return 0;
  }
  fuzz::exercise(*tok);
  return 0;
}
