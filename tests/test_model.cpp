// End-to-end CPU forward pass against transformers' reference outputs (models/fixtures, written by
// tools/gen_fixtures.py), plus decode == prefill == chunked prefill, and the stories260K golden run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <nlohmann/json.hpp>

#include "mistral/backend.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/generator.h"
#include "mistral/model.h"
#include "mistral/sampler.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

using namespace mistral;
using json = nlohmann::json;

namespace {

const char* kFixtures[] = {"w8_gqa1_f32", "full_gqa2_tied_f32", "w16_gqa4_hd12_f32", "w8_gqa2_bf16",
                           "native_w8_gqa2_f32"};

struct Fixture {
  std::unique_ptr<Model> model;
  json ref;
  std::vector<int32_t> input_ids;
};

Fixture load_fixture(const std::string& name) {
  Fixture f;
  const std::string dir = testutil::source_path("models/fixtures/" + name);
  f.model = Model::load(dir);
  f.ref = json::parse(testutil::read_file(dir + "/reference.json"));
  f.input_ids = f.ref["input_ids"].get<std::vector<int32_t>>();
  return f;
}

std::vector<float> run_chunked(const Model& m, Backend& be, const std::vector<int32_t>& ids, int chunk) {
  SessionOptions so;
  so.chunk = chunk;
  Session s(m, be, so);
  return s.feed(ids, true);
}

class FixtureTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FixtureTest, LogitsMatchTransformers) {
  Fixture f = load_fixture(GetParam());
  auto be = make_cpu_backend(2);
  const std::vector<float> got = run_chunked(*f.model, *be, f.input_ids, 512);
  const int64_t V = f.model->config().vocab_size;
  const auto& ref = f.ref["logits"];
  ASSERT_EQ(ref.size(), f.input_ids.size());
  double worst = 0;
  int bad = 0;
  for (size_t t = 0; t < ref.size(); ++t) {
    ASSERT_EQ(int64_t(ref[t].size()), V);
    for (int64_t v = 0; v < V; ++v) {
      const double r = ref[t][size_t(v)].get<double>(), g = got[t * size_t(V) + size_t(v)];
      ASSERT_TRUE(std::isfinite(g));
      const double d = std::fabs(g - r);
      worst = std::max(worst, d / std::max(1.0, std::fabs(r)));
      // 1e-4 relative, with an absolute floor of 1e-5 for logits near zero.
      if (d > 1e-5 + 1e-4 * std::fabs(r) && bad++ < 5)
        ADD_FAILURE() << "position " << t << " token " << v << ": got " << g << ", transformers " << r;
    }
  }
  EXPECT_EQ(bad, 0) << "worst relative difference " << worst;
  RecordProperty("worst_rel_diff", std::to_string(worst));
}

// Greedy continuation from feed()'s logits, and through Session::feed_greedy (the backend's argmax_rows,
// the logits left where they were computed; the prompt in chunks of 3, only the last one's row asked
// for): both equal transformers' greedy ids, step by step.
TEST_P(FixtureTest, GreedyContinuationMatchesTransformers) {
  Fixture f = load_fixture(GetParam());
  auto be = make_cpu_backend(2);
  const auto prompt = f.ref["greedy"]["prompt_ids"].get<std::vector<int32_t>>();
  const auto want = f.ref["greedy"]["ids"].get<std::vector<int32_t>>();
  SessionOptions so, chunked;
  chunked.chunk = 3;
  Session s(*f.model, *be, so), g(*f.model, *be, chunked);
  std::vector<float> logits = s.feed(prompt);
  int32_t gid = g.feed_greedy(prompt);
  std::vector<int32_t> got, got_greedy;
  for (size_t i = 0; i < want.size(); ++i) {
    const int32_t id = argmax(logits.data(), int64_t(logits.size()));
    got.push_back(id), got_greedy.push_back(gid);
    if (i + 1 < want.size()) logits = s.feed({id}), gid = g.feed_greedy({gid});
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(got_greedy, want);
  EXPECT_EQ(g.n_past(), s.n_past());
}

// Backend::argmax_rows (the default, which the CPU backend uses) is mistral::argmax row by row: the first
// index of the largest value, ties and -inf included.
TEST(ArgmaxRows, DefaultIsFirstLargestPerRow) {
  auto be = make_cpu_backend(1);
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n : {int64_t(1), int64_t(2), int64_t(31), int64_t(1000), int64_t(32000)}) {
    const int rows = 4;
    std::vector<float> x(size_t(rows) * size_t(n));
    for (float& v : x) v = nd(rng);
    if (n > 2) {
      float* r1 = x.data() + n;  // row 1: the largest value three times
      r1[n - 1] = r1[n / 2] = r1[1] = 50.f;
    }
    std::fill(x.begin() + 2 * n, x.begin() + 3 * n, -INFINITY);  // row 2: all -inf
    float* p = be->alloc(x.size());
    be->to_device(p, x.data(), x.size());
    std::vector<int32_t> out(rows, -7);
    be->argmax_rows(p, rows, n, out.data());
    be->free(p);
    for (int r = 0; r < rows; ++r) EXPECT_EQ(out[size_t(r)], argmax(x.data() + size_t(r) * n, n)) << "n " << n;
    if (n > 2) EXPECT_EQ(out[1], 1);
    EXPECT_EQ(out[2], 0);
  }
}

TEST_P(FixtureTest, ChunkedAndIncrementalEqualOneShot) {
  Fixture f = load_fixture(GetParam());
  auto be = make_cpu_backend(2);
  const int W = int(f.model->config().sliding_window);
  const std::vector<float> full = run_chunked(*f.model, *be, f.input_ids, 4096);
  std::vector<int> chunks = {1, 3, 64};
  if (W > 0) chunks.insert(chunks.end(), {W - 1, W, W + 1, 2 * W + 3});
  for (int c : chunks) {
    const std::vector<float> got = run_chunked(*f.model, *be, f.input_ids, c);
    ASSERT_EQ(got.size(), full.size());
    size_t mism = 0;
    for (size_t i = 0; i < got.size(); ++i) mism += got[i] != full[i];
    EXPECT_EQ(mism, 0u) << "chunk " << c << ": " << mism << " logits differ from one-shot prefill";
  }
  // Incremental decode: one token per call, as generation does.
  SessionOptions so;
  Session s(*f.model, *be, so);
  const size_t V = size_t(f.model->config().vocab_size);
  for (size_t t = 0; t < f.input_ids.size(); ++t) {
    std::vector<float> l = s.feed({f.input_ids[t]});
    for (size_t v = 0; v < V; ++v) ASSERT_EQ(l[v], full[t * V + v]) << "decode step " << t << " token " << v;
  }
  // A prefill split between two feed() calls (cache + chunk) equals one-shot too.
  Session s2(*f.model, *be, so);
  const size_t half = f.input_ids.size() / 2 + 1;
  s2.feed(std::vector<int32_t>(f.input_ids.begin(), f.input_ids.begin() + long(half)));
  std::vector<float> rest = s2.feed(std::vector<int32_t>(f.input_ids.begin() + long(half), f.input_ids.end()), true);
  for (size_t i = 0; i < rest.size(); ++i) ASSERT_EQ(rest[i], full[half * V + i]);
}

// The fused ops (residual add + norm, RoPE + cache write before attention where that is allowed) give the
// bits of the unfused sequence: one-shot, in chunks that wrap the rolling cache or exceed the window, and
// in single-token decode steps.
TEST_P(FixtureTest, FusedEqualsUnfused) {
  Fixture f = load_fixture(GetParam());
  auto be = make_cpu_backend(2);
  const int W = int(f.model->config().sliding_window);
  std::vector<int> chunks = {1, 3, 4096};
  if (W > 0) chunks.insert(chunks.end(), {W - 1, W + 1, 2 * W + 3});
  for (int c : chunks)
    for (bool all : {true, false}) {
      SessionOptions fused, unfused;
      fused.chunk = unfused.chunk = c;
      unfused.fused = false;
      Session a(*f.model, *be, fused), b(*f.model, *be, unfused);
      const std::vector<float> la = a.feed(f.input_ids, all), lb = b.feed(f.input_ids, all);
      ASSERT_EQ(la.size(), lb.size());
      EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * 4), 0) << "chunk " << c << (all ? " all logits" : "");
      const std::vector<float> da = a.feed({f.input_ids[0]}), db = b.feed({f.input_ids[0]});
      EXPECT_EQ(std::memcmp(da.data(), db.data(), da.size() * 4), 0) << "decode after chunk " << c;
    }
}

// The CPU backend, but answering fuses_norm(T) for decode-sized T as a GPU backend that folds the norms
// into its GEMVs does (MISTRAL_CUDA_FUSED_NORM=1), and keeping Backend's default norm_matmul_multi /
// norm_matmul_swiglu / matmul_residual (the compositions they replace): the forward pass then takes its
// folded order. Everything else is the CPU backend's own.
class FoldedNormCpu final : public Backend {
 public:
  FoldedNormCpu() : b_(make_cpu_backend(2)) {}
  std::string name() const override { return "cpu (folded norms)"; }
  bool fuses_norm(int T) const override { return T <= 4; }
  int folded = 0;  // norm_matmul_multi calls: the folded order ran
  void norm_matmul_multi(const float* x, const Weight& norm, float eps, int T, const Weight* const* W, float* const* y,
                         int n, float* xn) override {
    ++folded;
    Backend::norm_matmul_multi(x, norm, eps, T, W, y, n, xn);
  }
  float* alloc(size_t n) override { return b_->alloc(n); }
  void free(float* p) override { b_->free(p); }
  void to_device(float* d, const float* s, size_t n) override { b_->to_device(d, s, n); }
  void to_host(float* d, const float* s, size_t n) override { b_->to_host(d, s, n); }
  void zero(float* p, size_t n) override { b_->zero(p, n); }
  void copy(float* d, const float* s, size_t n) override { b_->copy(d, s, n); }
  void argmax_rows(const float* x, int rows, int64_t n, int32_t* out) override { b_->argmax_rows(x, rows, n, out); }
  void top_candidates_rows(const float* x, int rows, int64_t n, const CandidateRequest* req, int kmax, int32_t* ids,
                           float* logits, double* z) override {
    b_->top_candidates_rows(x, rows, n, req, kmax, ids, logits, z);
  }
  void embed(const Weight& E, const int32_t* ids, int T, float* x) override { b_->embed(E, ids, T, x); }
  void rmsnorm(const float* x, const Weight& w, float eps, int T, float* y) override { b_->rmsnorm(x, w, eps, T, y); }
  void matmul(const float* x, int T, const Weight& W, float* y) override { b_->matmul(x, T, W, y); }
  void rope(float* q, float* k, int T, int64_t start, const AttnShape& s) override { b_->rope(q, k, T, start, s); }
  void attention(const float* q, const float* k, const float* v, const KVLayer& c, int T, int64_t start,
                 const AttnShape& s, float* out) override {
    b_->attention(q, k, v, c, T, start, s, out);
  }
  void cache_write(const float* k, const float* v, const KVLayer& c, int T, int64_t start,
                   const AttnShape& s) override {
    b_->cache_write(k, v, c, T, start, s);
  }
  void swiglu(const float* g, const float* u, size_t n, float* out) override { b_->swiglu(g, u, n, out); }
  void add(float* x, const float* y, size_t n) override { b_->add(x, y, n); }

 private:
  std::unique_ptr<Backend> b_;
};

// The folded order (norms inside the products, residual adds into the output and down projections, the
// final norm alone) gives the bits of the usual one on the CPU, whose add + norm is the add then the norm:
// prefill in chunks of 1, 3 and 4 (folded) and 5 (not), then decode steps, all logits compared.
TEST_P(FixtureTest, FoldedNormOrderEqualsUsualOrder) {
  Fixture f = load_fixture(GetParam());
  auto cpu = make_cpu_backend(2);
  FoldedNormCpu folded;
  for (int c : {1, 3, 4, 5})
    for (bool all : {true, false}) {
      SessionOptions so;
      so.chunk = c;
      Session a(*f.model, folded, so), b(*f.model, *cpu, so);
      const std::vector<float> la = a.feed(f.input_ids, all), lb = b.feed(f.input_ids, all);
      ASSERT_EQ(la.size(), lb.size());
      EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * 4), 0) << "chunk " << c << (all ? " all logits" : "");
      for (int step = 0; step < 3; ++step) {
        const std::vector<float> da = a.feed({f.input_ids[size_t(step)]}), db = b.feed({f.input_ids[size_t(step)]});
        ASSERT_EQ(da.size(), db.size());
        EXPECT_EQ(std::memcmp(da.data(), db.data(), da.size() * 4), 0)
            << "decode step " << step << " after chunk " << c;
      }
    }
  EXPECT_GT(folded.folded, 0);
}

// An fp16 KV cache (SessionOptions::kv_dtype): logits do not depend on the chunking (every key is read
// with its fp16 value, from the cache or from its chunk), and stay within fp16 rounding of the fp32
// cache's (which LogitsMatchTransformers checks against transformers).
TEST_P(FixtureTest, HalfKvCacheIsChunkInvariantAndCloseToF32) {
  Fixture f = load_fixture(GetParam());
  auto be = make_cpu_backend(2);
  auto run = [&](int chunk, DType kv) {
    SessionOptions so;
    so.chunk = chunk;
    so.kv_dtype = kv;
    Session s(*f.model, *be, so);
    return s.feed(f.input_ids, true);
  };
  const std::vector<float> f32 = run(4096, DType::F32), full = run(4096, DType::F16);
  const int W = int(f.model->config().sliding_window);
  std::vector<int> chunks = {1, 3};
  if (W > 0) chunks.insert(chunks.end(), {W - 1, W + 1, 2 * W + 3});
  for (int c : chunks) EXPECT_EQ(run(c, DType::F16), full) << "chunk " << c;
  double worst = 0, scale = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    ASSERT_TRUE(std::isfinite(full[i]));
    worst = std::max(worst, double(std::fabs(full[i] - f32[i])));
    scale = std::max(scale, double(std::fabs(f32[i])));
  }
  EXPECT_GT(worst, 0.0) << "the fp16 cache changed nothing: is it used?";
  // K and V carry a relative error of at most 2^-11 each; through a few layers that stays well under 1%
  // of the logits' range.
  EXPECT_LT(worst, 1e-2 * scale) << "largest |logit| " << scale;
  RecordProperty("worst_abs_diff_vs_f32_cache", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(kFixtures));

// The Backend's default fused ops are the unfused sequences, bit for bit (y aliasing delta included).
TEST(FusedOps, AddRmsNormDefaultEqualsAddThenNorm) {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.f, 2.f);
  auto be = make_cpu_backend(2);
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int D : {8, 100, 4096})
      for (int T : {1, 3, 17}) {
        std::vector<float> x(size_t(T) * D), d(x.size()), wf(static_cast<size_t>(D));
        for (auto* v : {&x, &d, &wf})
          for (float& e : *v) e = nd(rng);
        std::vector<uint16_t> w16(wf.size());
        for (size_t i = 0; i < wf.size(); ++i) w16[i] = t == DType::F16 ? f32_to_f16(wf[i]) : f32_to_bf16(wf[i]);
        Weight w;
        w.dtype = t, w.rows = 1, w.cols = D;
        w.data = t == DType::F32 ? static_cast<const void*>(wf.data()) : static_cast<const void*>(w16.data());
        std::vector<float> x1 = x, y1(x.size()), x2 = x, y2(x.size()), x3 = x, d3 = d;
        be->add(x1.data(), d.data(), x.size());
        be->rmsnorm(x1.data(), w, 1e-5f, T, y1.data());
        be->add_rmsnorm(x2.data(), d.data(), w, 1e-5f, T, y2.data());
        be->add_rmsnorm(x3.data(), d3.data(), w, 1e-5f, T, d3.data());  // y aliasing delta, as the forward pass
        const std::string what = std::string(dtype_name(t)) + " D " + std::to_string(D) + " T " + std::to_string(T);
        EXPECT_EQ(std::memcmp(x1.data(), x2.data(), x.size() * 4), 0) << what;
        EXPECT_EQ(std::memcmp(y1.data(), y2.data(), x.size() * 4), 0) << what;
        EXPECT_EQ(std::memcmp(x1.data(), x3.data(), x.size() * 4), 0) << what;
        EXPECT_EQ(std::memcmp(y1.data(), d3.data(), x.size() * 4), 0) << what;
      }
}

TEST(FusedOps, RopeCacheWriteDefaultEqualsRopeThenWrite) {
  std::mt19937 rng(22);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto be = make_cpu_backend(2);
  int cases = 0;
  for (int hd : {12, 64, 128})
    for (int ratio : {1, 2, 4, 8})
      for (int window : {0, 16})
        for (int64_t start : {int64_t(0), int64_t(5), int64_t(13), int64_t(40)})
          for (int T : {1, 3, 17, 37}) {
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 96;
            s.rope_theta = 1e6f;
            auto fill = [&](size_t n) {
              std::vector<float> v(n);
              for (float& e : v) e = nd(rng);
              return v;
            };
            const size_t cn = size_t(s.slots) * s.kv_dim();
            std::vector<float> q = fill(size_t(T) * s.q_dim()), k = fill(size_t(T) * s.kv_dim()),
                               v = fill(size_t(T) * s.kv_dim()), ck = fill(cn), cv = fill(cn);
            std::vector<float> q1 = q, k1 = k, ck1 = ck, cv1 = cv, q2 = q, k2 = k, ck2 = ck, cv2 = cv;
            be->rope(q1.data(), k1.data(), T, start, s);
            be->cache_write(k1.data(), v.data(), KVLayer{ck1.data(), cv1.data()}, T, start, s);
            be->rope_cache_write(q2.data(), k2.data(), v.data(), KVLayer{ck2.data(), cv2.data()}, T, start, s);
            ASSERT_EQ(q1, q2);
            ASSERT_EQ(k1, k2);
            ASSERT_EQ(ck1, ck2);
            ASSERT_EQ(cv1, cv2);
            ++cases;
          }
  EXPECT_EQ(cases, 3 * 4 * 2 * 4 * 4);
}

// The fp16 cache's ops against the fp32 ones on values rounded in the test (kv_round: saturate, round to
// nearest even): cache_write stores exactly those fp16 bits, and attention over an fp16 cache gives the
// bits of attention over an fp32 cache and chunk holding the rounded values. Windows, wraps, GQA 1-8,
// chunks longer than the cache, values past fp16's range.
TEST(HalfKvCache, OpsEqualF32OpsOnRoundedValues) {
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto be = make_cpu_backend(2);
  int cases = 0;
  for (int hd : {12, 64})
    for (int ratio : {1, 4, 8})
      for (int window : {0, 16})
        for (int64_t start : {int64_t(0), int64_t(13), int64_t(40)})
          for (int T : {1, 5, 37}) {
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 96;
            auto fill = [&](size_t n) {
              std::vector<float> v(n);
              for (float& e : v) e = nd(rng) * (nd(rng) > 2.5f ? 1e5f : 1.f);  // a few past 65504
              return v;
            };
            const size_t cn = size_t(s.slots) * s.kv_dim();
            const std::vector<float> q = fill(size_t(T) * s.q_dim()), k = fill(size_t(T) * s.kv_dim()),
                                     v = fill(size_t(T) * s.kv_dim()), old_k = fill(cn), old_v = fill(cn);
            auto rounded = [](std::vector<float> x) {
              for (float& e : x) e = kv_round(e);
              return x;
            };
            // Earlier positions: the same values in both caches (fp16 bits, and their rounded floats).
            AttnShape h = s;
            h.kv_half = true;
            std::vector<uint16_t> hk(cn), hv(cn);
            for (size_t i = 0; i < cn; ++i) hk[i] = f32_to_f16_sat(old_k[i]), hv[i] = f32_to_f16_sat(old_v[i]);
            std::vector<float> fk = rounded(old_k), fv = rounded(old_v);
            std::vector<float> out_h(size_t(T) * s.q_dim()), out_f(out_h.size());
            if (start + T <= s.slots || window > 0) {  // a full cache holds start + T positions
              be->attention(q.data(), k.data(), v.data(), KVLayer{hk.data(), hv.data()}, T, start, h, out_h.data());
              const std::vector<float> rk = rounded(k), rv = rounded(v);
              be->attention(q.data(), rk.data(), rv.data(), KVLayer{fk.data(), fv.data()}, T, start, s, out_f.data());
              ASSERT_EQ(out_h, out_f) << "hd " << hd << " ratio " << ratio << " window " << window << " start " << start
                                      << " T " << T;
            }
            be->cache_write(k.data(), v.data(), KVLayer{hk.data(), hv.data()}, T, start, h);
            const int64_t first = std::max<int64_t>(0, T - s.slots);
            for (int64_t t = first; t < T; ++t) {
              const size_t row = size_t((start + t) % s.slots) * s.kv_dim();
              for (int i = 0; i < s.kv_dim(); ++i) {
                ASSERT_EQ(hk[row + i], f32_to_f16_sat(k[size_t(t) * s.kv_dim() + i]));
                ASSERT_EQ(hv[row + i], f32_to_f16_sat(v[size_t(t) * s.kv_dim() + i]));
              }
            }
            ++cases;
          }
  EXPECT_EQ(cases, 2 * 3 * 2 * 3 * 3);
  // Saturation and rounding, against values fp16 represents exactly.
  EXPECT_EQ(f32_to_f16_sat(1e6f), 0x7bffu);       // 65504, not inf
  EXPECT_EQ(f32_to_f16_sat(-1e6f), 0xfbffu);      // -65504
  EXPECT_EQ(kv_round(1.0f + 1.0f / 4096), 1.0f);  // halfway below 1 + 2^-10: ties to even
  EXPECT_EQ(kv_round(0.1f), 0.0999755859375f);
}

// An fp16 cache takes half the bytes of an fp32 one.
TEST(HalfKvCache, HalvesTheCacheBytes) {
  const std::string dir = testutil::source_path("models/fixtures/w8_gqa1_f32");
  auto model = Model::load(dir);
  auto be = make_cpu_backend(1);
  SessionOptions so;
  ForwardPass f32(*model, *be, so);
  so.kv_dtype = DType::F16;
  ForwardPass f16(*model, *be, so);
  for (int64_t n : {0, 6, 40}) EXPECT_EQ(2 * f16.cache_bytes(n), f32.cache_bytes(n)) << n;
  Session s(*model, *be, so);
  EXPECT_EQ(s.cache_bytes(), f16.cache_bytes(0));
  // A cache holds one type: a pass of the other refuses it.
  std::unique_ptr<KVCache> c16 = f16.new_cache(8);
  const int32_t id = 1;
  BatchSegment seg;
  seg.cache = c16.get(), seg.ids = &id, seg.T = 1;
  std::vector<float> logits(size_t(model->config().vocab_size));
  EXPECT_THROW(f32.run({seg}, logits.data()), UsageError);
  EXPECT_NO_THROW(f16.run({seg}, logits.data()));
  so.kv_dtype = DType::BF16;
  EXPECT_THROW(ForwardPass(*model, *be, so), UsageError);
}

// cache_write_before_attention_ok against a simulation of the cache: where it allows writing first, every
// cached position any query of the chunk reads is still in its slot after the chunk's writes. It allows
// every single-token step and every chunk that does not wrap the cache. Caches: full (positions below
// slots), rolling (slots >= W) and windowed but bounded below W (positions below slots).
TEST(FusedOps, CacheWriteBeforeAttentionOnlyWhereNothingReadIsEvicted) {
  for (int window : {0, 1, 4, 8})
    for (int64_t slots : {int64_t(1), int64_t(4), int64_t(8), int64_t(12)})
      for (int64_t start = 0; start < 30; ++start)
        for (int T = 1; T <= 20; ++T) {
          // A full or bounded cache refuses a chunk past its rows (context full).
          if ((window == 0 || slots < window) && start + T > slots) continue;
          AttnShape s;
          s.n_heads = s.n_kv_heads = 1, s.head_dim = 2, s.window = window, s.slots = slots;
          const bool ok = cache_write_before_attention_ok(T, start, s);
          if (T == 1 || start + T <= slots)
            EXPECT_TRUE(ok) << "W " << window << " slots " << slots << " start " << start;
          if (!ok) continue;
          std::vector<int64_t> held(static_cast<size_t>(slots), -1);  // position held by each slot
          for (int64_t j = 0; j < start; ++j) held[size_t(j % slots)] = j;
          for (int64_t t = std::max<int64_t>(0, T - slots); t < T; ++t) held[size_t((start + t) % slots)] = start + t;
          for (int t = 0; t < T; ++t) {
            const int64_t p = start + t, j0 = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
            for (int64_t j = j0; j < start; ++j)
              ASSERT_EQ(held[size_t(j % slots)], j)
                  << "W " << window << " slots " << slots << " start " << start << " T " << T << " query " << p;
          }
        }
}

// The window must matter: with the window removed, windowed fixtures give different logits.
TEST(Model, SlidingWindowChangesLogits) {
  Fixture f = load_fixture("w8_gqa1_f32");
  ModelConfig cfg = f.model->config();
  ASSERT_EQ(cfg.sliding_window, 8);
  auto be = make_cpu_backend(1);
  const std::vector<float> windowed = run_chunked(*f.model, *be, f.input_ids, 7);
  // Position 8 is the first that sees a different key set.
  const size_t V = size_t(cfg.vocab_size);
  const auto& ref = f.ref["logits"];
  for (size_t v = 0; v < V; ++v) EXPECT_NEAR(windowed[8 * V + v], ref[8][v].get<double>(), 1e-3);
}

TEST(Model, RollingCacheKeepsConstantSizeAndFiniteLogits) {
  Fixture f = load_fixture("w8_gqa1_f32");
  auto be = make_cpu_backend(1);
  SessionOptions so;
  Session s(*f.model, *be, so);
  const int64_t bytes = s.cache_bytes();
  EXPECT_EQ(bytes, 2 * 2 * 8 * 64 * int64_t(sizeof(float)));  // layers x {k,v} x W x kv_dim x fp32
  std::vector<float> l = s.feed(f.input_ids);
  int32_t id = argmax(l.data(), int64_t(l.size()));
  for (int i = 0; i < 3000; ++i) {
    l = s.feed({id});
    id = argmax(l.data(), int64_t(l.size()));
  }
  EXPECT_EQ(s.cache_bytes(), bytes);
  EXPECT_EQ(s.n_past(), int64_t(f.input_ids.size()) + 3000);
  for (float x : l) ASSERT_TRUE(std::isfinite(x));
}

// A windowed model's cache bounded below W (a batch request that never leaves the window): fewer rows,
// the same logits bit for bit as the rolling cache of W rows, chunked or not, and "context full" past its
// bound; a bound of W or more gives the rolling cache.
TEST(Model, BoundedWindowedCacheEqualsRolling) {
  Fixture f = load_fixture("w8_gqa1_f32");
  auto be = make_cpu_backend(1);
  ForwardPass fp(*f.model, *be, SessionOptions());
  ASSERT_EQ(fp.shape().window, 8);
  EXPECT_EQ(fp.cache_slots(0), 8);
  EXPECT_EQ(fp.cache_slots(20), 8);
  EXPECT_EQ(fp.cache_slots(6), 6);
  EXPECT_EQ(fp.cache_bytes(6) * 8, fp.cache_bytes(0) * 6);
  auto bounded = fp.new_cache(7), rolling = fp.new_cache();
  EXPECT_EQ(bounded->capacity(), 7);
  EXPECT_EQ(rolling->capacity(), INT64_MAX);
  const size_t V = size_t(f.model->config().vocab_size);
  std::vector<float> lb(3 * V), lr(3 * V);
  const int32_t* ids = f.input_ids.data();
  for (const auto& [at, T] : std::vector<std::pair<int, int>>{{0, 3}, {3, 1}, {4, 2}, {6, 1}}) {
    BatchSegment sb{bounded.get(), ids + at, T, true, true}, sr{rolling.get(), ids + at, T, true, true};
    fp.run({sb}, lb.data());
    fp.run({sr}, lr.data());
    ASSERT_EQ(std::vector<float>(lb.begin(), lb.begin() + long(size_t(T) * V)),
              std::vector<float>(lr.begin(), lr.begin() + long(size_t(T) * V)))
        << "chunk at " << at;
  }
  BatchSegment past{bounded.get(), ids + 7, 1, false, true};
  EXPECT_THROW(fp.run({past}, lb.data()), UsageError);
}

// A session with a bound ends a generation at it ("length"), keeping what was generated, as at the end
// of the context: the bound is its capacity.
TEST(Model, BoundedSessionEndsGenerationAtItsBound) {
  Fixture f = load_fixture("full_gqa2_tied_f32");
  const std::string tok_dir = testutil::shared_data("models/stories260K");
  if (!testutil::exists(tok_dir + "/tokenizer.json")) GTEST_SKIP() << "stories260K tokenizer absent";
  auto be = make_cpu_backend(1);
  auto tok = Tokenizer::load_dir(tok_dir);
  Session s(*f.model, *be, SessionOptions(), 10);
  EXPECT_EQ(s.capacity(), 10);
  GenerateParams gp;
  gp.sampler.temperature = 0;
  gp.ignore_eos = true;
  gp.max_tokens = 20;
  const std::vector<int32_t> prompt(f.input_ids.begin(), f.input_ids.begin() + 5);
  GenerateResult r;
  ASSERT_NO_THROW(r = generate(s, *tok, prompt, gp));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.ids.size(), 6u);  // 5 prompt ids and 5 generated fill the 10 positions; the 6th is not fed
  Fixture w = load_fixture("w8_gqa1_f32");
  EXPECT_EQ(Session(*w.model, *be, SessionOptions(), 10).capacity(), INT64_MAX);  // 10 >= W: rolling
  EXPECT_EQ(Session(*w.model, *be, SessionOptions(), 6).capacity(), 6);
}

TEST(Model, FullCacheRefusesPastContext) {
  Fixture f = load_fixture("full_gqa2_tied_f32");
  auto be = make_cpu_backend(1);
  SessionOptions so;
  so.context = 16;
  Session s(*f.model, *be, so);
  s.feed(std::vector<int32_t>(f.input_ids.begin(), f.input_ids.begin() + 16));
  EXPECT_THROW(s.feed({1}), Error);
}

TEST(Model, DtypeCastAtLoadStaysClose) {
  const std::string dir = testutil::source_path("models/fixtures/w8_gqa1_f32");
  auto f32 = Model::load(dir);
  LoadOptions o;
  o.cast = LoadOptions::Cast::BF16;
  auto bf = Model::load(dir, o);
  EXPECT_EQ(bf->matmul_dtype(), DType::BF16);
  o.cast = LoadOptions::Cast::F16;
  auto f16 = Model::load(dir, o);
  EXPECT_EQ(f16->matmul_dtype(), DType::F16);
  auto be = make_cpu_backend(1);
  Fixture fx = load_fixture("w8_gqa1_f32");
  auto a = run_chunked(*f32, *be, fx.input_ids, 16);
  auto b = run_chunked(*bf, *be, fx.input_ids, 16);
  auto c = run_chunked(*f16, *be, fx.input_ids, 16);
  double db = 0, dc = 0, mx = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    db = std::max(db, double(std::fabs(a[i] - b[i])));
    dc = std::max(dc, double(std::fabs(a[i] - c[i])));
    mx = std::max(mx, double(std::fabs(a[i])));
  }
  EXPECT_LT(db, 0.05 * mx);  // bf16 keeps 8 bits of mantissa
  EXPECT_LT(dc, 0.01 * mx);  // fp16 keeps 11
  EXPECT_GT(db, 0.0);        // the cast really happened
}

TEST(Stories260K, GreedyMatchesLlama2cReference) {
  const std::string dir = testutil::shared_data("models/stories260K");
  if (!testutil::exists(dir)) GTEST_SKIP() << "../shared/data/models/stories260K is not present";
  json ref = json::parse(testutil::read_file(dir + "/reference/greedy_prompt_64.json"));
  auto model = Model::load(dir);
  auto tok = Tokenizer::load_dir(dir);
  const auto prompt_ids = tok->encode(ref["prompt"].get<std::string>(), true);
  EXPECT_EQ(prompt_ids, ref["prompt_ids"].get<std::vector<int32_t>>());
  auto be = make_cpu_backend(2);
  for (int chunk : {1, 2, 512}) {
    SessionOptions so;
    so.chunk = chunk;
    so.kv_dtype = chunk == 2 ? DType::F16 : DType::F32;  // an fp16 KV cache gives the same greedy ids
    Session s(*model, *be, so);
    GenerateParams gp;
    gp.max_tokens = int(ref["steps"].get<int>()) - int(prompt_ids.size()) + 1;
    gp.sampler.temperature = 0;
    gp.ignore_eos = true;
    GenerateResult r = generate(s, *tok, prompt_ids, gp);
    std::vector<int32_t> all = prompt_ids;
    all.insert(all.end(), r.ids.begin(), r.ids.end());
    EXPECT_EQ(all, ref["ids"].get<std::vector<int32_t>>()) << "chunk " << chunk;
    EXPECT_EQ(ref["prompt"].get<std::string>() + r.text, ref["text"].get<std::string>());
  }
}

// The CPU matmul gives every (row, token) the same bits whatever the number of tokens, the thread
// split and the row tiling of prefill (rows wide enough here to make tiles of a few rows), and agrees
// with a double-precision dot product.
TEST(CpuMatmul, DecodeEqualsPrefillBitwise) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int64_t K : {40, 2056, 5003})
      for (int threads : {1, 2, 3}) {
        auto be = make_cpu_backend(threads);
        const int64_t N = 37;
        const int T = 23;
        std::vector<float> wf(size_t(N * K)), x(size_t(T * K));
        for (float& v : wf) v = 0.1f * u(rng);
        for (float& v : x) v = u(rng);
        std::vector<uint16_t> w16(wf.size());
        for (size_t i = 0; i < wf.size(); ++i) {
          w16[i] = t == DType::F16 ? f32_to_f16(wf[i]) : f32_to_bf16(wf[i]);
          wf[i] = t == DType::F16 ? f16_to_f32(w16[i]) : t == DType::BF16 ? bf16_to_f32(w16[i]) : wf[i];
        }
        Weight w;
        w.dtype = t;
        w.rows = N;
        w.cols = K;
        w.data = t == DType::F32 ? static_cast<const void*>(wf.data()) : static_cast<const void*>(w16.data());
        std::vector<float> all(size_t(T) * size_t(N)), one(static_cast<size_t>(N)), part(size_t(9) * size_t(N));
        be->matmul(x.data(), T, w, all.data());
        for (int tt = 0; tt < T; ++tt) {
          be->matmul(x.data() + tt * K, 1, w, one.data());
          ASSERT_EQ(std::memcmp(one.data(), all.data() + tt * N, size_t(N) * 4), 0)
              << dtype_name(t) << " K " << K << " threads " << threads << " token " << tt;
          for (int64_t n = 0; n < N; ++n) {
            double ref = 0, mag = 0;
            for (int64_t k = 0; k < K; ++k) {
              ref += double(wf[size_t(n * K + k)]) * x[size_t(tt * K + k)];
              mag += std::fabs(double(wf[size_t(n * K + k)]) * x[size_t(tt * K + k)]);
            }
            ASSERT_NEAR(one[size_t(n)], ref, 1e-6 * mag + 1e-30) << dtype_name(t) << " K " << K << " n " << n;
          }
        }
        be->matmul(x.data() + 4 * K, 9, w, part.data());  // another grouping: tokens 4 .. 12
        ASSERT_EQ(std::memcmp(part.data(), all.data() + 4 * N, part.size() * 4), 0) << dtype_name(t) << " K " << K;
      }
}

}  // namespace
