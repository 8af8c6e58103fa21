// Accuracy of quantized weights and the perplexity evaluator: the strided-window recipe against a
// direct implementation; int8 greedy agreement with full precision over 256 steps (stories260K and
// the fixtures); NF4/int4/int8 perplexity against full precision on tests/data/perplexity.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "mistral/backend.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/model.h"
#include "mistral/perplexity.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

using namespace mistral;

namespace {

const char* kFixtures[] = {"w8_gqa1_f32", "full_gqa2_tied_f32", "w16_gqa4_hd12_f32", "w8_gqa2_bf16",
                           "native_w8_gqa2_f32"};

std::string fixture_dir(const std::string& name) { return testutil::source_path("models/fixtures/" + name); }
std::string stories_dir() { return testutil::shared_data("models/stories260K"); }
#define REQUIRE_STORIES() \
  if (!testutil::exists(stories_dir())) GTEST_SKIP() << "../shared/data/models/stories260K is not present"

// The committed stories text (tests/data/perplexity) as stories260K's token ids, with BOS.
std::vector<int32_t> stories_text_ids() {
  auto tok = Tokenizer::load_dir(stories_dir());
  return tok->encode(testutil::read_file(testutil::source_path("tests/data/perplexity/stories260K_samples.txt")), true);
}

int32_t argmax(const float* l, int64_t n) { return int32_t(std::max_element(l, l + n) - l); }

std::unique_ptr<Model> load(const std::string& dir, Quant q = Quant::None) {
  LoadOptions o;
  o.quant = q;
  return Model::load(dir, o);
}

// ---- perplexity evaluator ----

// transformers' strided recipe written out directly: window [begin, end), labels masked except the
// last trg_len = end - prev_end tokens, loss over positions whose label is kept (shifted by one).
double recipe_nll(const Model& m, Backend& be, const std::vector<int32_t>& ids, int64_t ctx, int64_t stride,
                  int64_t* scored) {
  const int64_t n = int64_t(ids.size()), V = m.config().vocab_size;
  double nll = 0;
  int64_t count = 0, prev_end = 0;
  for (int64_t begin = 0; begin < n; begin += stride) {
    const int64_t end = std::min(begin + ctx, n), trg_len = end - prev_end;
    SessionOptions so;
    so.context = ctx;
    Session s(m, be, so);
    const std::vector<int32_t> window(ids.begin() + begin, ids.begin() + end);
    const std::vector<float> logits = s.feed(window, true);  // [end - begin, V]
    const int64_t L = end - begin;
    for (int64_t i = 1; i < L; ++i) {  // label i (kept when among the last trg_len), predicted at i - 1
      if (i < L - trg_len) continue;
      const float* row = logits.data() + size_t(i - 1) * size_t(V);
      double mx = -INFINITY, z = 0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(row[v]));
      for (int64_t v = 0; v < V; ++v) z += std::exp(double(row[v]) - mx);
      nll += mx + std::log(z) - double(row[window[size_t(i)]]);
      ++count;
    }
    prev_end = end;
    if (end == n) break;
  }
  *scored = count;
  return nll / double(count);
}

TEST(Perplexity, StridedWindowsFollowTheTransformersRecipe) {
  auto m = load(fixture_dir("full_gqa2_tied_f32"));
  auto be = make_cpu_backend(2);
  std::vector<int32_t> ids;
  for (int i = 0; i < 150; ++i) ids.push_back(int32_t((i * 37 + 11) % 128));
  struct Case {
    int64_t ctx, stride;
    int chunk;
  };
  for (const Case& k : std::vector<Case>{{64, 32, 512}, {64, 64, 7}, {50, 17, 16}, {200, 100, 512}, {2, 1, 1}}) {
    PerplexityOptions po;
    po.ctx = k.ctx;
    po.stride = k.stride;
    po.chunk = k.chunk;
    const PerplexityResult r = evaluate_perplexity(*m, *be, ids, po);
    int64_t scored = 0;
    const double want = recipe_nll(*m, *be, ids, k.ctx, k.stride, &scored);
    // Every token after the first is scored once, except that windows which do not overlap (stride ==
    // ctx) cannot score their first token, as in the recipe.
    const int64_t unscored = k.stride < k.ctx ? 0 : (int64_t(ids.size()) - 1) / k.stride;
    EXPECT_EQ(r.tokens, int64_t(ids.size()) - 1 - unscored) << "ctx " << k.ctx << " stride " << k.stride;
    EXPECT_EQ(r.tokens, scored);
    EXPECT_NEAR(r.nll, want, 1e-9 * want) << "ctx " << k.ctx << " stride " << k.stride << " chunk " << k.chunk;
    EXPECT_NEAR(r.ppl, std::exp(want), 1e-9 * std::exp(want));
    EXPECT_FALSE(r.has_ref);
  }
}

TEST(Perplexity, AgainstItselfKLIsZero) {
  auto m = load(fixture_dir("w8_gqa1_f32"));
  auto be = make_cpu_backend(2);
  std::vector<int32_t> ids;
  for (int i = 0; i < 80; ++i) ids.push_back(int32_t((i * 53 + 5) % 128));
  PerplexityOptions po;
  po.ctx = 32;
  po.stride = 16;
  const PerplexityResult r = evaluate_perplexity(*m, *be, ids, po, m.get());
  EXPECT_TRUE(r.has_ref);
  EXPECT_EQ(r.ppl, r.ref_ppl);
  EXPECT_EQ(r.kl, 0.0);
  EXPECT_EQ(r.top1_agree, r.tokens);
  // A quantized model is measurably different but close.
  auto q = load(fixture_dir("w8_gqa1_f32"), Quant::Int8);
  const PerplexityResult rq = evaluate_perplexity(*q, *be, ids, po, m.get());
  EXPECT_EQ(rq.ref_ppl, r.ppl);
  EXPECT_GT(rq.kl, 0.0);
  EXPECT_LT(rq.kl, 0.01);
  EXPECT_LE(rq.kl, rq.kl_max);
}

// An fp16 KV cache against the fp32 one (the reference model: the same weights, whose fp32-cache logits
// the fixture tests check against transformers) over the committed stories260K text: measured perplexity
// ratio 1.0000 (3.3460 vs 3.3459), mean KL 3e-6 nats/token, top-1 agreement 99.94%.
TEST(Perplexity, HalfKvCacheStaysWithFp32OnStoriesText) {
  REQUIRE_STORIES();
  auto m = load(stories_dir());
  const std::vector<int32_t> ids = stories_text_ids();
  auto be = make_cpu_backend(2);
  PerplexityOptions po;
  po.kv_dtype = DType::F16;
  const PerplexityResult r = evaluate_perplexity(*m, *be, ids, po, m.get());
  EXPECT_GT(r.kl, 0.0) << "the fp16 cache changed nothing: is it used?";
  EXPECT_LT(r.kl, 1e-4);
  EXPECT_NEAR(r.ppl / r.ref_ppl, 1.0, 1e-3);
  EXPECT_GE(double(r.top1_agree), 0.99 * double(r.tokens));
}

TEST(Perplexity, RejectsBadWindows) {
  auto m = load(fixture_dir("full_gqa2_tied_f32"));
  auto be = make_cpu_backend(1);
  const std::vector<int32_t> ids = {1, 2, 3, 4};
  PerplexityOptions po;
  po.ctx = 8;
  po.stride = 9;
  EXPECT_THROW(evaluate_perplexity(*m, *be, ids, po), UsageError);
  po.stride = 4;
  EXPECT_THROW(evaluate_perplexity(*m, *be, std::vector<int32_t>{1}, po), UsageError);
  po.ctx = 1 << 20;  // beyond max_position_embeddings (32768) without a window
  EXPECT_THROW(evaluate_perplexity(*m, *be, ids, po), UsageError);
}

// ---- int8 greedy agreement ----

struct Agreement {
  int steps = 0, teacher_forced = 0, free_running = 0, first_divergence = -1;
};

// Full-precision greedy continuation of `prompt` for `steps` tokens; then (teacher-forced) the
// quantized model's argmax at each of those positions given the full-precision prefix, and (free
// running) the quantized model's own greedy continuation compared position by position.
Agreement greedy_agreement(const Model& full, const Model& quant, const std::vector<int32_t>& prompt, int steps,
                           Backend* on = nullptr) {
  std::unique_ptr<Backend> owned = on ? nullptr : make_cpu_backend(2);
  Backend* be = on ? on : owned.get();
  const int64_t V = full.config().vocab_size;
  SessionOptions so;
  so.context = int64_t(prompt.size()) + steps + 1;
  auto greedy = [&](const Model& m) {
    Session s(m, *be, so);
    std::vector<float> l = s.feed(prompt);
    std::vector<int32_t> out;
    for (int i = 0; i < steps; ++i) {
      out.push_back(argmax(l.data(), V));
      if (i + 1 < steps) l = s.feed({out.back()});
    }
    return out;
  };
  const std::vector<int32_t> ref = greedy(full), own = greedy(quant);
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), ref.begin(), ref.end() - 1);
  Session s(quant, *be, so);
  const std::vector<float> l = s.feed(seq, true);
  Agreement a;
  a.steps = steps;
  for (int i = 0; i < steps; ++i) {
    a.teacher_forced += argmax(l.data() + (prompt.size() - 1 + size_t(i)) * size_t(V), V) == ref[size_t(i)];
    a.free_running += own[size_t(i)] == ref[size_t(i)];
    if (a.first_divergence < 0 && own[size_t(i)] != ref[size_t(i)]) a.first_divergence = i;
  }
  return a;
}

void report(const std::string& what, const Agreement& a) {
  std::printf("%s: int8 teacher-forced agreement %d/%d (%.1f%%), free-running %d/%d (%.1f%%), first divergence %s\n",
              what.c_str(), a.teacher_forced, a.steps, 100.0 * a.teacher_forced / a.steps, a.free_running, a.steps,
              100.0 * a.free_running / a.steps,
              a.first_divergence < 0 ? "none" : ("at step " + std::to_string(a.first_divergence)).c_str());
  ::testing::Test::RecordProperty("teacher_forced", a.teacher_forced);
  ::testing::Test::RecordProperty("free_running", a.free_running);
  ::testing::Test::RecordProperty("first_divergence", a.first_divergence);
}

TEST(QuantAccuracy, Int8GreedyAgreesOnStories260K) {
  REQUIRE_STORIES();
  auto full = load(stories_dir()), q = load(stories_dir(), Quant::Int8);
  auto tok = Tokenizer::load_dir(stories_dir());
  const Agreement a = greedy_agreement(*full, *q, tok->encode("Once upon a time", true), 256);
  report("stories260K", a);
  EXPECT_GE(a.teacher_forced, 244) << "fewer than 95% of 256 steps";  // ceil(0.95 * 256) = 244
}

class Int8FixtureAgreement : public ::testing::TestWithParam<const char*> {};

TEST_P(Int8FixtureAgreement, GreedyAgrees) {
  const std::string dir = fixture_dir(GetParam());
  auto full = load(dir), q = load(dir, Quant::Int8);
  const auto ref = nlohmann::json::parse(testutil::read_file(dir + "/reference.json"));
  const Agreement a = greedy_agreement(*full, *q, ref["greedy"]["prompt_ids"].get<std::vector<int32_t>>(), 256);
  report(GetParam(), a);
  EXPECT_GE(a.teacher_forced, 244) << "fewer than 95% of 256 steps";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Int8FixtureAgreement, ::testing::ValuesIn(kFixtures));

// ---- perplexity on the committed text ----

TEST(QuantAccuracy, PerplexityOnStoriesText) {
  REQUIRE_STORIES();
  auto full = load(stories_dir());
  const std::vector<int32_t> ids = stories_text_ids();
  ASSERT_EQ(ids.size(), 3257u);
  auto be = make_cpu_backend(2);
  PerplexityOptions po;  // window 512 (max_position_embeddings), stride 256
  // Issue 7 asks for NF4 and int4 within 10% of full precision. On this 260K-parameter model (hidden
  // size 64) round-to-nearest 4-bit does not get there: NF4 +11.7%, int4 +15.4% (int8 +0.0%), the
  // same as an independent numpy emulation of the formats (tools/quant_reference.py). The bounds
  // below guard those measured values against regressions; GPTQ (--calib) meets the target:
  // tests/test_gptq.cpp, QuantAccuracy.GptqPerplexityOnStoriesText.
  struct Want {
    Quant q;
    double max_ratio;
  };
  for (const Want& w : {Want{Quant::Int8, 1.01}, Want{Quant::NF4, 1.13}, Want{Quant::Int4, 1.17}}) {
    auto qm = load(stories_dir(), w.q);
    const PerplexityResult r = evaluate_perplexity(*qm, *be, ids, po, full.get());
    const double ratio = r.ppl / r.ref_ppl;
    std::printf("stories260K %s: perplexity %.4f vs full precision %.4f (ratio %.4f, %s the 10%% target); mean KL "
                "%.5f nats, top-1 agreement %.1f%%\n",
                quant_name(w.q), r.ppl, r.ref_ppl, ratio, ratio <= 1.10 ? "within" : "OUTSIDE", r.kl,
                100.0 * double(r.top1_agree) / double(r.tokens));
    RecordProperty(std::string("ppl_ratio_") + quant_name(w.q), std::to_string(ratio));
    EXPECT_EQ(r.tokens, 3256);
    EXPECT_LE(ratio, w.max_ratio) << quant_name(w.q);
    EXPECT_GT(ratio, 0.99) << quant_name(w.q);
  }
}

// Int8 activations (the CPU's default for Q8 and Q4, MISTRAL_CPU_QUANT_I8=0 turns them off; the CUDA
// backend's MISTRAL_CUDA_QUANT_I8;
// quant_matmul.h ActInt8): int8 and int4 weights with x rounded to int8 per 16-byte chunk of the weights,
// on the stories text against full precision, beside the weight-only figures (same model, same text).
// Measured: int8 weights perplexity ratio 1.0000 (weights alone 1.0000), mean KL 0.00064 nats (0.00041);
// int4 1.1545 (1.1540), KL 0.1326 (0.1317): rounding x to 8 bits a chunk adds little to the weights'
// error. The bounds guard those values; and int8 greedy agreement over 256 steps with int8 activations
// (measured 255 of 256), at least 95% as for weights alone.
TEST(QuantAccuracy, Int8ActivationsOnStoriesText) {
  REQUIRE_STORIES();
  auto full = load(stories_dir());
  const std::vector<int32_t> ids = stories_text_ids();
  auto be = testutil::cpu_backend_with("MISTRAL_CPU_QUANT_I8", "1", 2);
  auto plain = testutil::cpu_backend_with("MISTRAL_CPU_QUANT_I8", "0", 2);
  PerplexityOptions po;  // window 512, stride 256
  struct Want {
    Quant q;
    double max_ratio, max_kl_ratio;  // perplexity / full precision's; mean KL / the weight-only KL
  };
  for (const Want& w : {Want{Quant::Int8, 1.01, 2.5}, Want{Quant::Int4, 1.17, 1.1}}) {
    auto qm = load(stories_dir(), w.q);
    const PerplexityResult r = evaluate_perplexity(*qm, *be, ids, po, full.get());
    const PerplexityResult r0 = evaluate_perplexity(*qm, *plain, ids, po, full.get());
    const double ratio = r.ppl / r.ref_ppl;
    std::printf(
        "stories260K %s weights, int8 activations: perplexity %.4f vs full precision %.4f (ratio %.4f; "
        "weights alone %.4f); mean KL %.5f nats (weights alone %.5f), top-1 agreement %.1f%% (%.1f%%)\n",
        quant_name(w.q), r.ppl, r.ref_ppl, ratio, r0.ppl / r0.ref_ppl, r.kl, r0.kl,
        100.0 * double(r.top1_agree) / double(r.tokens), 100.0 * double(r0.top1_agree) / double(r0.tokens));
    EXPECT_LE(ratio, w.max_ratio) << quant_name(w.q);
    EXPECT_GT(ratio, 0.99) << quant_name(w.q);
    EXPECT_LE(r.kl, w.max_kl_ratio * r0.kl) << quant_name(w.q);
    EXPECT_NE(r.kl, r0.kl) << quant_name(w.q);  // the switch took the int8 path
  }
  auto q8 = load(stories_dir(), Quant::Int8);
  auto tok = Tokenizer::load_dir(stories_dir());
  const Agreement a = greedy_agreement(*full, *q8, tok->encode("Once upon a time", true), 256, be.get());
  report("stories260K, int8 activations", a);
  EXPECT_GE(a.teacher_forced, 244) << "fewer than 95% of 256 steps";
}

// The fixtures (random weights, no tokenizer) read the committed text as byte ids modulo their vocabulary:
// NF4 and int4 perplexity at most 10% above full precision, round-to-nearest. Random models predict
// nothing (perplexity above the vocabulary size), so quantization noise moves it either way (measured:
// 0.90 to 1.08); broken weights would blow it up.
TEST(QuantAccuracy, PerplexityOnFixtures) {
  const std::string text = testutil::read_file(testutil::source_path("tests/data/perplexity/stories260K_samples.txt"));
  auto be = make_cpu_backend(2);
  for (const char* fx : kFixtures) {
    auto full = load(fixture_dir(fx));
    const int64_t V = full->config().vocab_size;
    std::vector<int32_t> ids;
    for (size_t i = 0; i < 1024 && i < text.size(); ++i) ids.push_back(int32_t(uint8_t(text[i]) % V));
    PerplexityOptions po;
    po.ctx = 256;
    for (Quant q : {Quant::Int8, Quant::NF4, Quant::Int4}) {
      auto qm = load(fixture_dir(fx), q);
      const PerplexityResult r = evaluate_perplexity(*qm, *be, ids, po, full.get());
      const double ratio = r.ppl / r.ref_ppl;
      std::printf("%s %s: perplexity %.4f vs %.4f (ratio %.4f), mean KL %.5f nats\n", fx, quant_name(q), r.ppl, r.ref_ppl,
                  ratio, r.kl);
      EXPECT_LE(ratio, 1.10) << fx << " " << quant_name(q);
      EXPECT_GT(r.kl, 0.0) << fx << " " << quant_name(q);  // the quantized model does differ
    }
  }
}

TEST(QuantAccuracy, PerplexityCli) {
  REQUIRE_STORIES();
  const auto r = testutil::run_cli({"perplexity", "-m", stories_dir(), "-f",
                                    testutil::source_path("tests/data/perplexity/stories260K_samples.txt"), "--quant",
                                    "int8", "--kl-ref", "--json", "--stride", "128", "--ctx", "256"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"], 3257);
  EXPECT_EQ(j["scored"], 3256);
  EXPECT_EQ(j["ctx"], 256);
  EXPECT_EQ(j["stride"], 128);
  EXPECT_EQ(j["windows"], 25);
  EXPECT_EQ(j["weights"], "int8");
  EXPECT_NEAR(j["ppl_ratio"].get<double>(), 1.0, 0.01);
  EXPECT_GT(j["top1_agreement"].get<double>(), 0.95);
  const auto bad = testutil::run_cli({"perplexity", "-m", stories_dir(), "-f", "/nonexistent/text.txt"});
  EXPECT_NE(bad.exit_code, 0);
}

}  // namespace
