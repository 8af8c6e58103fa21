// libFuzzer target: encode/decode of arbitrary bytes with real tokenizers: Mistral v1 and v3
// (tokenizer.model; ids compared with libsentencepiece when it is linked), tekken_240911.json from
// mistral-common when installed, and a byte-level tokenizer.json (Llama-3 style). Checks: ids in range,
// no control tokens from text, streaming == one-shot decode, decode(encode(x)) == x for valid UTF-8
// (SentencePiece: without U+2581; byte-level: after maximal-subpart replacement for invalid input).
#include <memory>

#include "fuzz_common.h"
#include "tokenizer/internal.h"

#ifdef MISTRAL_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace {

struct Loaded {
  std::unique_ptr<mistral::Tokenizer> tok;
#ifdef MISTRAL_HAVE_SENTENCEPIECE
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp;
#endif
};
std::vector<Loaded> g_toks;

void add(const std::string& path, bool sp_oracle) {
  try {
    Loaded l;
    const std::string name = path.substr(path.find_last_of('/') + 1);
    if (name.find("tekken") == 0) l.tok = mistral::Tokenizer::load_tekken(path);
    else if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) l.tok = mistral::Tokenizer::load_hf_json(path);
    else l.tok = mistral::Tokenizer::load_sentencepiece(path);
#ifdef MISTRAL_HAVE_SENTENCEPIECE
    if (sp_oracle) {
      l.sp.reset(new sentencepiece::SentencePieceProcessor());
      if (!l.sp->Load(path).ok()) l.sp.reset();
    }
#endif
    std::fprintf(stderr, "fuzz_encode: loaded %s\n", path.c_str());
    g_toks.push_back(std::move(l));
  } catch (const mistral::Error& e) {
    std::fprintf(stderr, "fuzz_encode: skipping %s (%s)\n", path.c_str(), e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  add(std::string(MISTRAL_SHARED_DATA) + "/tokenizers/mistral-v0.1/tokenizer.model", true);
  add(std::string(MISTRAL_SHARED_DATA) + "/tokenizers/mistral-v0.3/tokenizer.model.v3", true);
  if (std::string(MISTRAL_TEKKEN_JSON).size()) add(MISTRAL_TEKKEN_JSON, false);
  add(std::string(MISTRAL_SOURCE_DIR) + "/tests/data/bytelevel/llama3.json", false);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const bool valid = mistral::tok::utf8_is_valid(text);
  for (const Loaded& l : g_toks) {
    const mistral::Tokenizer& tok = *l.tok;
    const std::string dec = fuzz::check_encode(tok, text, true);
    if (tok.kind() == mistral::TokenizerKind::SentencePiece) {
      if (valid && text.find("\xe2\x96\x81") == std::string::npos && dec != text)
        fuzz::fail("SentencePiece round trip", tok.source());
#ifdef MISTRAL_HAVE_SENTENCEPIECE
      if (l.sp) {
        std::vector<int> want;
        if (!l.sp->Encode(text, &want).ok()) fuzz::fail("sentencepiece failed");
        const std::vector<int32_t> got = tok.encode(text, false);
        if (std::vector<int>(got.begin(), got.end()) != want) fuzz::fail("ids differ from SentencePiece", tok.source());
      }
#endif
    } else {
      const std::string want = valid ? text : mistral::tok::utf8_sanitize_maximal(text);
      if (dec != want) fuzz::fail("byte-level round trip", tok.source());
    }
  }
  return 0;
}
