// Sampler: greedy, seeded determinism, and the sampled frequencies against the distribution each
// filter defines (computed here independently from the logits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

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
