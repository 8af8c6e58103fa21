// Token selection from fp32 logits: greedy, or temperature with top-k, top-p and min-p filters,
// after an optional repetition penalty. Deterministic for a given seed.
//
// The sampler decides from the head of the distribution: the largest logits (after the penalty), in
// order, and the softmax normaliser over the whole row. A backend can find those where the logits are
// (Backend::top_candidates) so that only a few KB reach the host; when they do not settle the draw (a
// nucleus wider than the candidates), the whole row is sampled instead, with the same draw.
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

// What to find in a row of logits for one draw: the k largest values after the repetition penalty
// (each penalised id's logit l becomes l > 0 ? l / penalty : l * penalty), and the normaliser at
// `temperature`.
struct CandidateRequest {
  int k = 1;
  float temperature = 0;  // <= 0: no normaliser (greedy, or top-k)
  float penalty = 1;
  const int32_t* penalised = nullptr;  // distinct ids in [0, n)
  int n_penalised = 0;
};

// What was found: `n` ids and their (penalised) logits, by logit descending then id ascending (a NaN
// logit counts as -inf), and z = sum over the whole row of exp((l - logits[0]) / temperature).
struct Candidates {
  const int32_t* ids = nullptr;
  const float* logits = nullptr;
  int n = 0;
  int64_t vocab = 0;  // the row's length: the candidates are the whole row when n == vocab
  double z = 0;
};

// The host version of Backend::top_candidates for one row of n host floats: writes min(k, n) ids and
// logits and *z (0 without a temperature).
void top_candidates(const float* row, int64_t n, const CandidateRequest& rq, int32_t* ids, float* logits, double* z);

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  // Picks a token from logits[V]; `history` holds ids seen so far (for the repetition penalty).
  int32_t sample(const float* logits, int64_t V, const std::vector<int32_t>& history);
  // The candidate route: request() says what to find in the next row (the penalised ids stay owned by
  // the sampler until the next request or sample()), pick() draws from what was found, or returns -1 without
  // drawing when the candidates do not settle it (then sample() on the whole row decides, with the
  // draw pick() would have made). At most max_k candidates are asked for.
  CandidateRequest request(const std::vector<int32_t>& history, int64_t V, int max_k);
  int32_t pick(const Candidates& c);
  // Temperature 0 without a penalty: the argmax of the raw logits.
  bool greedy() const { return p_.temperature <= 0.0f && p_.repeat_penalty == 1.0f; }
  // True when max_k candidates of a row of V can never settle a draw: a top_k above max_k (its
  // normaliser spans top_k tokens), or pure temperature (no top-p, min-p or top-k) over more than
  // max_k tokens. Such rows go to sample() whole, which starts with the candidates they need.
  bool needs_whole_row(int64_t V, int max_k) const;
  const SamplerParams& params() const { return p_; }
  void set_params(const SamplerParams& p) { p_ = p; }
  // Draws pick() and sample() made (greedy ones included; not an argmax found by the backend alone),
  // and those of them sample() made on a whole row.
  int64_t draws() const { return draws_; }
  int64_t row_draws() const { return row_draws_; }

 private:
  int32_t pick_from(const Candidates& c);     // pick() without the count
  int64_t next_k(const Candidates& c) const;  // candidates to find after c did not settle a draw
  int64_t draws_ = 0, row_draws_ = 0;
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<int32_t> penalised_, ids_;
  std::vector<float> logits_;
  std::vector<double> prob_;
};

int32_t argmax(const float* logits, int64_t V);

// Candidates asked for by default on the candidate route (more when top_k is larger).
constexpr int kSampleCandidates = 1024;

}  // namespace mistral
