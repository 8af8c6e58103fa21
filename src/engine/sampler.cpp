// Sampler: penalty, temperature, top-k, top-p, min-p, then one draw from the renormalised distribution.
#include "mistral/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

namespace mistral {

int32_t argmax(const float* x, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}

int32_t Sampler::sample(const float* logits, int64_t V, const std::vector<int32_t>& history) {
  work_.assign(logits, logits + V);
  if (p_.repeat_penalty != 1.0f && !history.empty()) {
    const size_t n = p_.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p_.repeat_last_n));
    std::unordered_set<int32_t> seen(history.end() - long(n), history.end());
    for (int32_t id : seen)
      if (id >= 0 && id < V) work_[size_t(id)] = work_[size_t(id)] > 0 ? work_[size_t(id)] / p_.repeat_penalty
                                                                         : work_[size_t(id)] * p_.repeat_penalty;
  }
  if (p_.temperature <= 0.0f) return argmax(work_.data(), V);

  idx_.resize(size_t(V));
  std::iota(idx_.begin(), idx_.end(), 0);
  size_t n = size_t(V);
  auto by_logit = [&](int32_t a, int32_t b) {
    return work_[size_t(a)] > work_[size_t(b)] || (work_[size_t(a)] == work_[size_t(b)] && a < b);
  };
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    std::partial_sort(idx_.begin(), idx_.begin() + p_.top_k, idx_.end(), by_logit);
    n = size_t(p_.top_k);
  } else {
    std::sort(idx_.begin(), idx_.end(), by_logit);
  }
  // Softmax over the kept candidates, in descending order, at the given temperature (fp64).
  std::vector<double> prob(n);
  const double mx = work_[size_t(idx_[0])];
  double sum = 0;
  for (size_t i = 0; i < n; ++i) {
    prob[i] = std::exp((double(work_[size_t(idx_[i])]) - mx) / double(p_.temperature));
    sum += prob[i];
  }
  for (auto& x : prob) x /= sum;
  if (p_.min_p > 0.0f) {
    const double thr = double(p_.min_p) * prob[0];
    size_t keep = 1;
    while (keep < n && prob[keep] >= thr) ++keep;
    n = keep;
  }
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t keep = 0;
    while (keep < n) {
      cum += prob[keep++];
      if (cum >= double(p_.top_p)) break;
    }
    n = std::max<size_t>(1, keep);
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  const double r = u(rng_);
  double c = 0;
  for (size_t i = 0; i < n; ++i) {
    c += prob[i];
    if (r < c) return idx_[i];
  }
  return idx_[n - 1];
}

}  // namespace mistral
