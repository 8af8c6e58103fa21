// Token selection from fp32 logits: greedy, or temperature with top-k, top-p and min-p filters,
// after an optional repetition penalty. Deterministic for a given seed.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace mistral {

struct SamplerParams {
  float temperature = 0.7f;      // 0 = greedy
  int top_k = 0;                 // 0 = off
  float top_p = 0.95f;           // 1 = off
  float min_p = 0.0f;            // 0 = off; keep tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f;   // 1 = off; transformers' rule: logit > 0 ? /= : *=
  int repeat_last_n = 64;        // window of previous ids the penalty looks at (-1 = all)
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  // Picks a token from logits[V]; `history` holds ids seen so far (for the repetition penalty).
  int32_t sample(const float* logits, int64_t V, const std::vector<int32_t>& history);
  const SamplerParams& params() const { return p_; }
  void set_params(const SamplerParams& p) { p_ = p; }

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> idx_;
};

int32_t argmax(const float* logits, int64_t V);

}  // namespace mistral
