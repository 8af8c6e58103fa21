// Generation: prefill the prompt, then sample and decode one token at a time, streaming text through
// a callback with stop strings held back until they can no longer match. `Generation` is the
// per-sequence state machine (used by one-shot, chat and the batch scheduler); generate() drives one.
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
  std::string finish_reason;         // "eos" | "length" | "stop" | "interrupted"
  double prefill_s = 0, decode_s = 0;
  int64_t decoded_tokens = 0;        // tokens that went through a decode step
};

class Generation {
 public:
  using TextFn = std::function<void(const std::string&)>;
  Generation(const Tokenizer& tok, std::vector<int32_t> prompt_ids, const GenerateParams& params, TextFn on_text = {});
  // Samples the next token from the logits of the latest position and records it. Returns true when
  // the generation is over (EOS, stop string, max tokens); otherwise last_id() must be fed next.
  bool step(const float* logits, int64_t V);
  // Records `id` as the next token (what step() would have sampled), with step()'s return value. The
  // caller may draw it where the logits are, with sampler() and history() (Session::feed_sample).
  bool step_id(int32_t id);
  Sampler& sampler() { return sampler_; }
  const std::vector<int32_t>& history() const { return history_; }
  // Ends the generation early (context full: "length"; Ctrl-C: "interrupted"), flushing the text.
  void finish(const std::string& reason);
  bool done() const { return done_; }
  int32_t last_id() const { return res_.ids.back(); }
  GenerateResult& result() { return res_; }

 private:
  bool check_stop();
  void emit_upto(size_t end);

  const Tokenizer& tok_;
  GenerateParams p_;
  TextFn on_text_;
  Sampler sampler_;
  StreamDecoder dec_;
  GenerateResult res_;
  std::vector<int32_t> history_;
  std::string text_;
  size_t emitted_ = 0, max_stop_ = 0;
  bool done_ = false;
};

// Runs one generation on `session` (which continues from its current position).
GenerateResult generate(Session& session, const Tokenizer& tok, const std::vector<int32_t>& prompt_ids,
                        const GenerateParams& params, const Generation::TextFn& on_text = {},
                        const std::function<bool()>& should_stop = {});

}  // namespace mistral
