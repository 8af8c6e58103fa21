// Sampler: penalty, temperature, top-k, top-p, min-p, then one draw from the renormalised distribution,
// decided from the head of the distribution (the largest logits and the row's normaliser) so that no
// step sorts the whole vocabulary.
#include "mistral/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

namespace mistral {

int32_t argmax(const float* x, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

namespace {

// A candidate as one sortable number: ascending order is logit descending (-0 and +0 equal), then id
// ascending (the CUDA kernel sorts the same keys).
uint64_t sort_entry(float v, int64_t id) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (u == 0x80000000u) u = 0;
  const uint32_t key = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (uint64_t(~key) << 32) | uint64_t(uint32_t(id));
}

}  // namespace

void top_candidates(const float* row, int64_t n, const CandidateRequest& rq, int32_t* ids, float* logits, double* z) {
  thread_local std::vector<float> work, tmp;
  thread_local std::vector<uint64_t> picked;
  work.assign(row, row + n);
  for (auto& v : work)
    if (v != v) v = -INFINITY;  // NaN as -inf (the CUDA kernel does the same)
  for (int i = 0; i < rq.n_penalised; ++i) {
    float& l = work[size_t(rq.penalised[i])];
    l = l > 0 ? l / rq.penalty : l * rq.penalty;
  }
  const int64_t k = std::max<int64_t>(1, std::min<int64_t>(rq.k, n));
  picked.clear();
  if (k == 1) {
    picked.push_back(sort_entry(0.0f, argmax(work.data(), n)));
  } else if (k == n) {
    for (int64_t i = 0; i < n; ++i) picked.push_back(sort_entry(work[size_t(i)], i));
  } else {
    // The k-th largest value, then everything above it and the first of its ties by id.
    tmp = work;
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float thr = tmp[size_t(k - 1)];
    for (int64_t i = 0; i < n; ++i)
      if (work[size_t(i)] > thr) picked.push_back(sort_entry(work[size_t(i)], i));
    for (int64_t i = 0; i < n && int64_t(picked.size()) < k; ++i)
      if (work[size_t(i)] == thr) picked.push_back(sort_entry(thr, i));
  }
  std::sort(picked.begin(), picked.end());
  for (size_t i = 0; i < picked.size(); ++i) {
    ids[i] = int32_t(uint32_t(picked[i]));
    logits[i] = work[size_t(ids[i])];
  }
  double s = 0;
  if (rq.temperature > 0) {
    const double mx = logits[0], T = rq.temperature;
    for (int64_t i = 0; i < n; ++i) s += std::exp((double(work[size_t(i)]) - mx) / T);
  }
  *z = s;
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}

CandidateRequest Sampler::request(const std::vector<int32_t>& history, int64_t V, int max_k) {
  CandidateRequest rq;
  // The row's normaliser only matters without top_k (top_k's is over its own candidates).
  if (!(p_.top_k > 0 && p_.top_k < V)) rq.temperature = p_.temperature;
  penalised_.clear();
  if (p_.repeat_penalty != 1.0f && !history.empty()) {
    const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
    for (auto it = history.end() - long(n); it != history.end(); ++it)
      if (*it >= 0 && *it < V) penalised_.push_back(*it);
    std::sort(penalised_.begin(), penalised_.end());
    penalised_.erase(std::unique(penalised_.begin(), penalised_.end()), penalised_.end());
    rq.penalty = p_.repeat_penalty;
    rq.penalised = penalised_.data();
    rq.n_penalised = int(penalised_.size());
  }
  int64_t k = max_k;
  if (p_.temperature <= 0.0f)
    k = 1;
  else if (p_.top_k > 0)
    k = std::min<int64_t>(p_.top_k, max_k);
  rq.k = int(std::max<int64_t>(1, std::min(k, V)));
  return rq;
}

bool Sampler::needs_whole_row(int64_t V, int max_k) const {
  if (p_.temperature <= 0.0f) return false;
  if (p_.top_k > 0 && p_.top_k < V) return p_.top_k > max_k;
  return p_.top_p >= 1.0f && p_.min_p <= 0.0f && V > max_k;
}

int32_t Sampler::pick(const Candidates& c) {
  const int32_t id = pick_from(c);
  if (id >= 0) ++draws_;
  return id;
}

int32_t Sampler::pick_from(const Candidates& c) {
  if (c.n <= 0) return -1;
  if (p_.temperature <= 0.0f) return c.ids[0];
  const int64_t avail = c.n;
  // The kept count before the probability filters: top_k, else the whole row.
  int64_t n = p_.top_k > 0 && p_.top_k < c.vocab ? p_.top_k : c.vocab;
  const int64_t m = std::min(n, avail);
  // Softmax at the temperature (fp64) over the kept candidates, in descending order: normalised over
  // them when all are here, else (no top_k) by the row's normaliser.
  prob_.resize(size_t(m));
  const double mx = c.logits[0], T = p_.temperature;
  for (int64_t i = 0; i < m; ++i) prob_[size_t(i)] = std::exp((double(c.logits[i]) - mx) / T);
  double sum = 0;
  if (n <= avail) {
    for (int64_t i = 0; i < n; ++i) sum += prob_[size_t(i)];
  } else if (n == c.vocab) {
    sum = c.z;
  } else {
    return -1;  // top_k reaches past the candidates: its normaliser is not known
  }
  for (auto& x : prob_) x /= sum;
  if (p_.min_p > 0.0f) {
    const double thr = double(p_.min_p) * prob_[0];
    int64_t keep = 1;
    while (keep < n && keep < avail && prob_[size_t(keep)] >= thr) ++keep;
    if (keep == avail && keep < n) return -1;  // the cut may lie beyond the candidates
    n = keep;
  }
  if (p_.top_p < 1.0f) {
    double cum = 0;
    int64_t keep = 0;
    while (keep < n) {
      if (keep == avail) return -1;  // the nucleus is wider than the candidates
      cum += prob_[size_t(keep++)];
      if (cum >= double(p_.top_p)) break;
    }
    n = std::max<int64_t>(1, keep);
  }
  if (n > avail) return -1;
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += prob_[size_t(i)];
  std::uniform_real_distribution<double> u(0.0, total);
  const double r = u(rng_);
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += prob_[size_t(i)];
    if (r < acc) return c.ids[i];
  }
  return c.ids[n - 1];
}

int64_t Sampler::next_k(const Candidates& c) const {
  // A nucleus wider than the candidates: the rest of it holds top_p - (their mass), in tokens no more
  // likely than the last candidate, so at least that over its probability more are needed.
  int64_t k = int64_t(c.n) * 8;
  if (p_.top_k == 0 && p_.top_p < 1.0f && c.z > 0) {
    const double mx = c.logits[0], T = p_.temperature;
    double mass = 0;
    for (int i = 0; i < c.n; ++i) mass += std::exp((double(c.logits[i]) - mx) / T);
    mass /= c.z;
    const double last = std::exp((double(c.logits[c.n - 1]) - mx) / T) / c.z;
    if (mass < double(p_.top_p) && last > 0)
      k = std::max(k, int64_t(double(c.n) + 1.25 * (double(p_.top_p) - mass) / last));
  }
  return k;
}

int32_t Sampler::sample(const float* logits, int64_t V, const std::vector<int32_t>& history) {
  ++draws_, ++row_draws_;
  if (greedy()) return argmax(logits, V);
  CandidateRequest rq = request(history, V, kSampleCandidates);
  if (needs_whole_row(V, kSampleCandidates))  // top_k's own count, else the whole row: settled at once
    rq.k = int(p_.top_k > 0 && p_.top_k < V ? p_.top_k : V);
  for (;;) {
    ids_.resize(size_t(rq.k));
    logits_.resize(size_t(rq.k));
    Candidates c;
    top_candidates(logits, V, rq, ids_.data(), logits_.data(), &c.z);
    c.ids = ids_.data();
    c.logits = logits_.data();
    c.n = rq.k;
    c.vocab = V;
    const int32_t id = pick_from(c);
    if (id >= 0 || rq.k >= V) return id >= 0 ? id : ids_[0];  // all of the row always settles it
    rq.k = int(std::min<int64_t>(V, next_k(c)));
  }
}

}  // namespace mistral
