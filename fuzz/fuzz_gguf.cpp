// libFuzzer target: the GGUF reader (mistral::GgufFile over caller-owned bytes) on arbitrary input. A
// FileError is the expected outcome for bad input; for a file that parses, the llama metadata mapping may
// throw ConfigError, and every tensor must dequantize within its bounds (the reader checked them). Any
// other exception escaping, a sanitizer report or an abort is a finding.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mistral/error.h"
#include "mistral/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exact-size heap buffer so AddressSanitizer sees any read past the end.
  std::vector<uint8_t> buf(data, data + size);
  std::unique_ptr<mistral::GgufFile> f;
  try {
    f.reset(new mistral::GgufFile(buf.data(), buf.size(), "fuzz.gguf"));
  } catch (const mistral::FileError&) {
    return 0;
  }
  for (const mistral::GgufTensor& t : f->tensors()) {
    if (t.data < buf.data() || t.data + t.nbytes > buf.data() + buf.size()) {
      std::fprintf(stderr, "fuzz invariant violated: tensor outside the file\n");
      std::abort();
    }
    // Dequantize up to a few blocks of every tensor (the whole tensor could be large).
    const int64_t blk = mistral::ggml_block_elems(t.type);
    const int64_t n = std::min<int64_t>(t.numel(), 4 * 32 / blk * blk);
    std::vector<float> out(static_cast<size_t>(n));
    mistral::gguf_dequantize(t.type, t.data, out.data(), size_t(n));
  }
  try {
    mistral::gguf_model_config(*f);
  } catch (const mistral::ConfigError&) {
  }
  for (const auto& kv : f->metadata()) (void)kv.second.describe();
  return 0;
}
