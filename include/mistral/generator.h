// Generation loop: prefill the prompt, then sample and decode one token at a time, streaming text
// through a callback with stop strings held back until they can no longer match.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mistral/engine.h"
#include "mistral/sampler.h"
#include "mistral/tokenizer.h"

namespace mistral {

struct GenerateParams {
  int max_tokens = 256;              // -n; generation also ends when the context is full
  bool ignore_eos = false;
  std::vector<std::string> stop;     // stop strings: output ends before the first match
  std::vector<int32_t> eos_ids = {2};
  SamplerParams sampler;
};

struct GenerateResult {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> ids;          // completion ids (the EOS id included when it ended the run)
  std::string text;                  // completion text, cut before a stop string
  std::string finish_reason;         // "eos" | "length" | "stop"
  double prefill_s = 0, decode_s = 0;
  int64_t decoded_tokens = 0;        // tokens that went through a decode step
};

// Runs one generation on `session` (which continues from its current position). on_text receives
// each piece of completion text as soon as it is final; it may be empty.
GenerateResult generate(Session& session, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateParams& params, const std::function<void(const std::string&)>& on_text = {},
                        const std::function<bool()>& should_stop = {});

}  // namespace mistral
