// Sampler: greedy, seeded determinism, and the sampled frequencies against the distribution each
// filter defines (computed here independently from the logits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "mistral/sampler.h"

using namespace mistral;

namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 2.9f};

std::map<int, double> frequencies(const SamplerParams& p, int n, const std::vector<int32_t>& hist = {}) {
  Sampler s(p);
  std::map<int, double> f;
  for (int i = 0; i < n; ++i) f[s.sample(kLogits.data(), int64_t(kLogits.size()), hist)] += 1.0 / n;
  return f;
}

// Softmax at temperature T over the given ids.
std::map<int, double> softmax(const std::vector<int>& ids, float T, const std::vector<float>& logits = kLogits) {
  std::map<int, double> p;
  double sum = 0;
  for (int i : ids) sum += std::exp(logits[size_t(i)] / T);
  for (int i : ids) p[i] = std::exp(logits[size_t(i)] / T) / sum;
  return p;
}

void expect_close(const std::map<int, double>& got, const std::map<int, double>& want) {
  for (const auto& kv : got) EXPECT_TRUE(want.count(kv.first)) << "token " << kv.first << " should be filtered out";
  for (const auto& kv : want) {
    const double g = got.count(kv.first) ? got.at(kv.first) : 0.0;
    EXPECT_NEAR(g, kv.second, 0.015) << "token " << kv.first;
  }
}

}  // namespace

TEST(Sampler, GreedyPicksArgmax) {
  SamplerParams p;
  p.temperature = 0;
  Sampler s(p);
  EXPECT_EQ(s.sample(kLogits.data(), 6, {}), 1);
}

TEST(Sampler, SameSeedSameSequence) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  p.seed = 42;
  Sampler a(p), b(p);
  std::vector<int> sa, sb;
  for (int i = 0; i < 200; ++i) sa.push_back(a.sample(kLogits.data(), 6, {})), sb.push_back(b.sample(kLogits.data(), 6, {}));
  EXPECT_EQ(sa, sb);
  p.seed = 43;
  Sampler c(p);
  std::vector<int> sc;
  for (int i = 0; i < 200; ++i) sc.push_back(c.sample(kLogits.data(), 6, {}));
  EXPECT_NE(sa, sc);
}

TEST(Sampler, TemperatureMatchesSoftmax) {
  SamplerParams p;
  p.temperature = 0.8f;
  p.top_p = 1.0f;
  expect_close(frequencies(p, 40000), softmax({0, 1, 2, 3, 4, 5}, 0.8f));
}

TEST(Sampler, TopKKeepsKBest) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  p.top_k = 2;
  expect_close(frequencies(p, 40000), softmax({1, 5}, 1.0f));
}

TEST(Sampler, TopPKeepsSmallestNucleus) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_p = 0.5f;
  // Sorted probabilities: token 1 (~0.33), 5 (~0.30): together >= 0.5, so exactly those two remain.
  auto full = softmax({0, 1, 2, 3, 4, 5}, 1.0f);
  ASSERT_LT(full[1], 0.5);
  ASSERT_GE(full[1] + full[5], 0.5);
  expect_close(frequencies(p, 40000), softmax({1, 5}, 1.0f));
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  p.min_p = 0.5f;
  // Keep tokens with p >= 0.5 * p_max, i.e. logit >= 3 - ln 2 = 2.307: tokens 1, 5, 2.
  expect_close(frequencies(p, 40000), softmax({1, 2, 5}, 1.0f));
}

TEST(Sampler, RepetitionPenaltyFollowsTransformersRule) {
  SamplerParams p;
  p.temperature = 0;
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  // Token 1 (logit 3.0) penalised to 1.5; the best is then token 5 (2.9).
  EXPECT_EQ(s.sample(kLogits.data(), 6, {1}), 5);
  // Negative logits are multiplied: token 3 goes from -1 to -2 (checked through sampling frequencies).
  p.temperature = 1.0f;
  p.top_p = 1.0f;
  std::vector<float> pen = kLogits;
  pen[3] = -2.0f;
  expect_close(frequencies(p, 40000, {3}), softmax({0, 1, 2, 3, 4, 5}, 1.0f, pen));
}

// The sampler's definition written out the direct way (sort the whole row, softmax in fp64 over
// what top-k keeps, min-p, top-p, one draw): the candidate route must pick the same ids from the same
// seed, whether the candidates settle a draw or the whole row is sampled after them.
namespace {

int32_t reference_sample(const SamplerParams& p, std::mt19937_64& rng, const std::vector<float>& logits,
                         const std::vector<int32_t>& history) {
  std::vector<float> w = logits;
  const size_t V = w.size();
  if (p.repeat_penalty != 1.0f && !history.empty()) {
    const size_t n = p.repeat_last_n < 0 ? history.size() : std::min(history.size(), size_t(p.repeat_last_n));
    std::vector<int32_t> seen(history.end() - long(n), history.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t id : seen)
      w[size_t(id)] = w[size_t(id)] > 0 ? w[size_t(id)] / p.repeat_penalty : w[size_t(id)] * p.repeat_penalty;
  }
  std::vector<int32_t> idx(V);
  for (size_t i = 0; i < V; ++i) idx[i] = int32_t(i);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return w[size_t(a)] > w[size_t(b)]; });
  if (p.temperature <= 0) return idx[0];
  size_t n = p.top_k > 0 && size_t(p.top_k) < V ? size_t(p.top_k) : V;
  std::vector<double> prob(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i)
    sum += prob[i] = std::exp((double(w[size_t(idx[i])]) - w[size_t(idx[0])]) / double(p.temperature));
  for (auto& x : prob) x /= sum;
  if (p.min_p > 0) {
    size_t keep = 1;
    while (keep < n && prob[keep] >= double(p.min_p) * prob[0]) ++keep;
    n = keep;
  }
  if (p.top_p < 1) {
    double cum = 0;
    size_t keep = 0;
    while (keep < n) {
      cum += prob[keep++];
      if (cum >= double(p.top_p)) break;
    }
    n = std::max<size_t>(1, keep);
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  const double r = u(rng);
  double c = 0;
  for (size_t i = 0; i < n; ++i)
    if (r < (c += prob[i])) return idx[i];
  return idx[n - 1];
}

struct Case {
  int64_t V;
  SamplerParams p;
  float spread;  // logits ~ N(0, spread), rounded to quarters (ties) when `ties`
  bool ties;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  uint64_t seed = 1;
  for (int64_t V : {1, 2, 7, 300, 5000, 40000})
    for (float T : {0.0f, 0.3f, 1.0f})
      for (int top_k : {0, 1, 5, 2000})
        for (float top_p : {1.0f, 0.95f, 0.5f})
          for (float min_p : {0.0f, 0.05f})
            for (float pen : {1.0f, 1.3f}) {
              if (V > 300 && (top_k == 1 || min_p > 0)) continue;  // keep the large rows few
              SamplerParams p;
              p.temperature = T, p.top_k = top_k, p.top_p = top_p, p.min_p = min_p, p.repeat_penalty = pen;
              p.repeat_last_n = pen != 1.0f && top_k == 5 ? -1 : 16;
              p.seed = seed++;
              out.push_back({V, p, V > 1000 ? 2.0f : 4.0f, (seed % 3) == 0});
            }
  return out;
}

std::vector<float> random_logits(const Case& c, std::mt19937& g) {
  std::normal_distribution<float> nd(0.0f, c.spread);
  std::vector<float> l(size_t(c.V));
  for (auto& x : l) x = c.ties ? std::round(nd(g) * 4) / 4 : nd(g);
  return l;
}

// Six draws of every case: `draw` (the sampler, the case, the logits, the history) makes the
// sampler's, which must equal the direct definition's from the same seed.
template <typename Draw>
void expect_draws_as_defined(Draw draw) {
  for (const Case& c : cases()) {
    std::mt19937 g(uint32_t(c.p.seed));
    Sampler s(c.p);
    std::mt19937_64 ref_rng(c.p.seed);
    std::vector<int32_t> hist;
    for (int step = 0; step < 6; ++step) {
      const std::vector<float> l = random_logits(c, g);
      const int32_t want = reference_sample(c.p, ref_rng, l, hist);
      ASSERT_EQ(draw(s, c, l, hist), want) << "V " << c.V << " seed " << c.p.seed << " step " << step;
      hist.push_back(want);
    }
  }
}

}  // namespace

TEST(Sampler, SamplesAsTheDirectDefinition) {
  EXPECT_GT(cases().size(), 300u);
  expect_draws_as_defined([](Sampler& s, const Case& c, const std::vector<float>& l, const std::vector<int32_t>& hist) {
    return s.sample(l.data(), c.V, hist);
  });
}

// The route a backend takes: a few candidates found, pick() from them, and the whole row sampled when
// they do not settle it; the draws line up with the direct definition either way.
TEST(Sampler, CandidateRouteFallsBackWithTheSameDraw) {
  int settled = 0, fell_back = 0;
  expect_draws_as_defined(
      [&](Sampler& s, const Case& c, const std::vector<float>& l, const std::vector<int32_t>& hist) {
        const CandidateRequest rq = s.request(hist, c.V, 8);
        std::vector<int32_t> ids(size_t(rq.k));
        std::vector<float> vals(size_t(rq.k));
        Candidates cand;
        top_candidates(l.data(), c.V, rq, ids.data(), vals.data(), &cand.z);
        cand.ids = ids.data(), cand.logits = vals.data(), cand.n = rq.k, cand.vocab = c.V;
        const int32_t got = s.pick(cand);
        if (got >= 0) return ++settled, got;
        ++fell_back;
        return s.sample(l.data(), c.V, hist);
      });
  EXPECT_GT(settled, 100);
  EXPECT_GT(fell_back, 100);
}

TEST(Sampler, TopCandidatesOrderTiesById) {
  // Values with ties across the k-th place: the k largest by value, ties broken by the lower id.
  const std::vector<float> l = {1, 3, 2, 3, 2, 2, -1, 3, 2};
  CandidateRequest rq;
  rq.k = 5;
  rq.temperature = 1.0f;
  int32_t ids[5];
  float vals[5];
  double z = 0;
  top_candidates(l.data(), int64_t(l.size()), rq, ids, vals, &z);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 5), (std::vector<int32_t>{1, 3, 7, 2, 4}));
  EXPECT_EQ(std::vector<float>(vals, vals + 5), (std::vector<float>{3, 3, 3, 2, 2}));
  double want_z = 0;
  for (float x : l) want_z += std::exp(double(x) - 3.0);
  EXPECT_NEAR(z, want_z, 1e-12);
  // The penalty applies before the choice: id 1 (3) drops to 1.5, id 6 (-1) to -2.
  const int32_t pen[] = {1, 6};
  rq.penalty = 2.0f, rq.penalised = pen, rq.n_penalised = 2, rq.k = 4;
  top_candidates(l.data(), int64_t(l.size()), rq, ids, vals, &z);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 4), (std::vector<int32_t>{3, 7, 2, 4}));
}
