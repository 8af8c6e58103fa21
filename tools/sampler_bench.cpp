// Host cost of one draw over a row of logits: the default sampler (temperature 0.7, top-p 0.95) on
// peaked rows (N(0, 3): a nucleus of a few hundred tokens) and flat ones (N(0, 0.05): nearly the whole
// vocabulary), then pure temperature (top-p 1) and top-k 2000 on peaked rows, at the vocabularies of
// Mistral-7B (32,000) and tekken (131,072). The checksum (sum of the drawn ids) shows two builds draw
// the same tokens.
//
//   g++ -O2 -std=c++17 -Iinclude tools/sampler_bench.cpp src/engine/sampler.cpp -o /tmp/sampler_bench
//   /tmp/sampler_bench
// The full-sort sampler it replaced (commit 24bb207), for comparison:
//   mkdir -p /tmp/old/mistral && git show 24bb207:include/mistral/sampler.h >/tmp/old/mistral/sampler.h &&
//   git show 24bb207:src/engine/sampler.cpp >/tmp/old/sampler.cpp &&
//   g++ -O2 -std=c++17 -I/tmp/old tools/sampler_bench.cpp /tmp/old/sampler.cpp -o /tmp/sampler_bench_old
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "mistral/sampler.h"

int main() {
  struct Case {
    const char* name;
    float spread, top_p;
    int top_k;
  };
  const Case cases[] = {{"peaked", 3.0f, 0.95f, 0},
                        {"flat", 0.05f, 0.95f, 0},
                        {"top-p 1", 3.0f, 1.0f, 0},
                        {"top-k 2000", 3.0f, 1.0f, 2000}};
  for (const Case& c : cases)
    for (int V : {32000, 131072}) {
      std::mt19937 g(1);
      std::normal_distribution<float> nd(0.f, c.spread);
      std::vector<float> l(static_cast<size_t>(V));
      for (auto& x : l) x = nd(g);
      mistral::SamplerParams p;
      p.top_p = c.top_p, p.top_k = c.top_k;
      mistral::Sampler s(p);
      const std::vector<int32_t> history;
      const int reps = 40;
      long long sum = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) sum += s.sample(l.data(), V, history);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
      std::printf("%-10s V %6d: %7.3f ms a draw (checksum %lld)\n", c.name, V, ms, sum);
    }
  return 0;
}
