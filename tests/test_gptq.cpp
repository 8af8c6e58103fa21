// GPTQ (mistral/gptq.h): the Hessian against x^T x in double; the inverse factor against its definition;
// round-to-nearest exactly when inputs are uncorrelated; a lower layer-output error than round-to-nearest
// on correlated inputs (held-out rows); the calibration observer against the first layer's input computed
// here; stories260K perplexity with the committed calibration text; the CLI (`quantize --calib`,
// `perplexity --calib`) and checkpoints of GPTQ weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "mistral/backend.h"
#include "mistral/engine.h"
#include "mistral/error.h"
#include "mistral/gptq.h"
#include "mistral/model.h"
#include "mistral/perplexity.h"
#include "mistral/quant.h"
#include "mistral/tokenizer.h"
#include "test_util.h"

using namespace mistral;

namespace {

const DType kQuantTypes[] = {DType::Q8, DType::NF4, DType::Q4};

std::vector<float> gaussian(std::mt19937& rng, size_t n, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

Weight f32_weight(const std::vector<float>& w, int64_t rows, int64_t cols) {
  Weight W;
  W.dtype = DType::F32;
  W.rows = rows;
  W.cols = cols;
  W.data = w.data();
  return W;
}

// Dequantized [rows, cols] matrix of a QuantizedMatrix.
std::vector<float> dequantize(const QuantizedMatrix& q) {
  std::vector<float> out(size_t(q.rows * q.cols));
  const size_t rb = quant_row_bytes(q.dtype, q.cols), sb = quant_scale_bytes(q.dtype, 1, q.cols);
  for (int64_t r = 0; r < q.rows; ++r)
    dequantize_row(q.dtype, q.data.data() + size_t(r) * rb, q.scales.data() + size_t(r) * sb, q.cols,
                   out.data() + r * q.cols);
  return out;
}

// Correlated inputs: rows of z M, z standard normal, M a fixed random mixing matrix.
std::vector<float> correlated_rows(std::mt19937& rng, const std::vector<float>& M, int64_t T, int64_t K) {
  const std::vector<float> z = gaussian(rng, size_t(T * K));
  std::vector<float> x(size_t(T * K), 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t a = 0; a < K; ++a)
      for (int64_t b = 0; b < K; ++b) x[size_t(t * K + b)] += z[size_t(t * K + a)] * M[size_t(a * K + b)];
  return x;
}

// sum over rows t of || (W - Q) x_t ||^2, in double.
double output_error(const std::vector<float>& W, const std::vector<float>& Q, int64_t N, int64_t K,
                    const std::vector<float>& X, int64_t T) {
  double e = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double y = 0;
      for (int64_t k = 0; k < K; ++k) y += (double(W[size_t(n * K + k)]) - Q[size_t(n * K + k)]) * X[size_t(t * K + k)];
      e += y * y;
    }
  return e;
}

TEST(Gptq, HessianIsXtX) {
  std::mt19937 rng(1);
  const int64_t K = 20;
  std::vector<float> x = gaussian(rng, size_t(37 * K));
  for (int t = 0; t < 37; ++t) x[size_t(t * K + 5)] = 0.0f;  // a column no row reaches
  Hessian a, b;
  a.K = b.K = K;
  a.add(x.data(), 17, 1);
  a.add(x.data() + 17 * K, 20, 1);
  b.add(x.data(), 37, 2);
  EXPECT_EQ(a.rows, 37);
  EXPECT_EQ(a.h, b.h);  // chunks and threads do not change a bit
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double want = 0;
      for (int t = 0; t < 37; ++t) want += double(x[size_t(t * K + i)]) * double(x[size_t(t * K + j)]);
      EXPECT_NEAR(a.h[size_t(i * K + j)], want, 1e-12 * (1 + std::fabs(want))) << i << "," << j;
    }
}

TEST(Gptq, InverseFactorIsTheUpperCholeskyFactorOfTheDampedInverse) {
  std::mt19937 rng(2);
  const int64_t K = 48, T = 200;
  std::vector<float> x = gaussian(rng, size_t(T * K));
  for (int64_t t = 0; t < T; ++t) x[size_t(t * K + 7)] = 0.0f;  // dead input: unit diagonal
  Hessian H;
  H.K = K;
  H.add(x.data(), int(T));
  const double damp = 0.01;
  const std::vector<float> U = gptq_inverse_factor(H, damp, 2);
  // The damped matrix, as the header describes it.
  std::vector<double> A = H.h;
  double mean = 0;
  for (int64_t i = 0; i < K; ++i) {
    if (A[size_t(i * K + i)] == 0) A[size_t(i * K + i)] = 1;
    mean += A[size_t(i * K + i)];
  }
  mean /= double(K);
  for (int64_t i = 0; i < K; ++i) A[size_t(i * K + i)] += damp * mean;
  for (int64_t i = 0; i < K; ++i) {
    EXPECT_GT(U[size_t(i * K + i)], 0.0f);
    for (int64_t j = 0; j < i; ++j) EXPECT_EQ(U[size_t(i * K + j)], 0.0f) << "below the diagonal at " << i << "," << j;
  }
  // U^T U A = I.
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double s = 0;
      for (int64_t m = 0; m < K; ++m) {
        double utu = 0;  // (U^T U)[i][m]
        for (int64_t r = 0; r <= std::min(i, m); ++r) utu += double(U[size_t(r * K + i)]) * U[size_t(r * K + m)];
        s += utu * A[size_t(m * K + j)];
      }
      EXPECT_NEAR(s, i == j ? 1.0 : 0.0, 2e-4) << i << "," << j;
    }
}

TEST(Gptq, InverseFactorInAnOrderIsThatOfThePermutedHessian) {
  std::mt19937 rng(5);
  const int64_t K = 40, T = 120;
  const std::vector<float> x = gaussian(rng, size_t(T * K));
  Hessian H;
  H.K = K;
  H.add(x.data(), int(T));
  const std::vector<int64_t> order = gptq_act_order(H);
  for (int64_t k = 1; k < K; ++k)
    EXPECT_GE(H.h[size_t(order[size_t(k - 1)] * K + order[size_t(k - 1)])], H.h[size_t(order[size_t(k)] * K + order[size_t(k)])]);
  EXPECT_EQ(gptq_inverse_factor(H, 0.01, 2, order), gptq_inverse_factor(permute_hessian(H, order), 0.01, 1));
  EXPECT_THROW(gptq_inverse_factor(H, 0.0), UsageError);  // no damping could never give up on a singular H
  EXPECT_THROW(gptq_inverse_factor(H, 0.01, 0, std::vector<int64_t>(3)), UsageError);
}

TEST(Gptq, DiagonalHessianGivesRoundToNearest) {
  std::mt19937 rng(3);
  for (DType t : kQuantTypes)
    for (int64_t cols : {64, 172, 300}) {
      const int64_t rows = 37;
      const std::vector<float> w = gaussian(rng, size_t(rows * cols), 0.05f);
      Hessian H;
      H.K = cols;
      H.h.assign(size_t(cols * cols), 0.0);
      std::uniform_real_distribution<double> u(0.1, 10.0);
      for (int64_t k = 0; k < cols; ++k) H.h[size_t(k * cols + k)] = k % 9 == 4 ? 0.0 : u(rng);
      const QuantizedMatrix rtn = quantize_matrix(t, DType::F32, w.data(), rows, cols, 1);
      SCOPED_TRACE(std::string(dtype_name(t)) + " cols " + std::to_string(cols));
      const QuantizedMatrix natural = gptq_quantize(t, f32_weight(w, rows, cols), gptq_inverse_factor(H, 0.01), 2);
      EXPECT_EQ(natural.data, rtn.data);
      EXPECT_EQ(natural.scales, rtn.scales);
      const std::vector<int64_t> order = gptq_act_order(H);
      const QuantizedMatrix act =
          gptq_quantize(t, f32_weight(w, rows, cols), gptq_inverse_factor(H, 0.01, 2, order), 2, order);
      EXPECT_EQ(act.data, rtn.data);
      EXPECT_EQ(act.scales, rtn.scales);
    }
}

TEST(Gptq, LowerOutputErrorThanRoundToNearestOnHeldOutRows) {
  std::mt19937 rng(4);
  const int64_t K = 256, N = 48, T = 768;
  const std::vector<float> M = gaussian(rng, size_t(K * K), 1.0f / 16.0f);
  const std::vector<float> calib = correlated_rows(rng, M, T, K), held_out = correlated_rows(rng, M, T, K);
  const std::vector<float> w = gaussian(rng, size_t(N * K), 0.05f);
  Hessian H;
  H.K = K;
  H.add(calib.data(), int(T));
  const std::vector<int64_t> order = gptq_act_order(H);
  const std::vector<float> U = gptq_inverse_factor(H, 0.01), Up = gptq_inverse_factor(H, 0.01, 0, order);
  for (DType t : kQuantTypes) {
    const double e_rtn = output_error(w, dequantize(quantize_matrix(t, DType::F32, w.data(), N, K)), N, K, held_out, T);
    const double e_nat = output_error(w, dequantize(gptq_quantize(t, f32_weight(w, N, K), U)), N, K, held_out, T);
    const double e_act = output_error(w, dequantize(gptq_quantize(t, f32_weight(w, N, K), Up, 0, order)), N, K, held_out, T);
    std::printf("%s: held-out output error, GPTQ / round-to-nearest: %.3f (natural order), %.3f (act-order)\n",
                dtype_name(t), e_nat / e_rtn, e_act / e_rtn);
    EXPECT_LT(e_nat, 0.8 * e_rtn) << dtype_name(t);
    EXPECT_LT(e_act, 0.8 * e_rtn) << dtype_name(t);
  }
}

TEST(Gptq, RejectsBadInputs) {
  std::vector<float> w(64 * 8, 0.1f);
  Hessian H;
  H.K = 64;
  H.h.assign(64 * 64, 0.0);
  const std::vector<float> U = gptq_inverse_factor(H, 0.01);  // all inputs dead: identity, damped
  EXPECT_THROW(gptq_quantize(DType::F32, f32_weight(w, 8, 64), U), UsageError);
  EXPECT_THROW(gptq_quantize(DType::NF4, f32_weight(w, 16, 32), U), UsageError);  // 32 columns, U for 64
  EXPECT_THROW(gptq_quantize(DType::NF4, f32_weight(w, 8, 64), U, 0, std::vector<int64_t>(3)), UsageError);
  w[70] = NAN;
  EXPECT_THROW(gptq_quantize(DType::NF4, f32_weight(w, 8, 64), U), WeightError);
  Hessian empty;
  EXPECT_THROW(gptq_inverse_factor(empty, 0.01), UsageError);
}

// ---- calibration through the model ----

class Recorder : public ActivationObserver {
 public:
  Recorder(int64_t l0, int64_t l1) : l0_(l0), l1_(l1) {}
  int64_t first_layer() const override { return l0_; }
  int64_t end_layer() const override { return l1_; }
  void observe(int64_t layer, LinearInput which, const float* x, int T, int64_t K) override {
    seen.push_back({layer, which, std::vector<float>(x, x + size_t(T) * size_t(K)), K});
  }
  struct Seen {
    int64_t layer;
    LinearInput which;
    std::vector<float> x;
    int64_t K;
  };
  std::vector<Seen> seen;

 private:
  int64_t l0_, l1_;
};

TEST(Gptq, ObserverSeesEachLinearInput) {
  auto m = Model::load(testutil::source_path("models/fixtures/w8_gqa1_f32"));
  const ModelConfig& c = m->config();
  auto be = make_cpu_backend(2);
  const std::vector<int32_t> ids = {1, 17, 99, 5, 64, 3, 3, 120, 42};
  SessionOptions so;
  so.chunk = 4;  // three chunks
  ForwardPass fp(*m, *be, so);
  Recorder rec(0, 1);  // layer 0 only: the pass stops there
  fp.set_observer(&rec);
  auto cache = fp.new_cache(32);
  for (size_t t = 0; t < ids.size(); t += 4) {
    BatchSegment s;
    s.cache = cache.get();
    s.ids = ids.data() + t;
    s.T = int(std::min<size_t>(4, ids.size() - t));
    s.want_logits = false;
    fp.run({s}, nullptr);
  }
  ASSERT_EQ(rec.seen.size(), 3u * kLinearInputs);
  EXPECT_EQ(cache->n_past, int64_t(ids.size()));
  const int64_t D = c.hidden_size, QD = c.q_dim(), F = c.intermediate_size;
  const int64_t widths[kLinearInputs] = {D, QD, D, F};
  std::vector<float> seen[kLinearInputs];  // all chunks of each input, rows in token order
  for (size_t i = 0; i < rec.seen.size(); ++i) {
    const auto& s = rec.seen[i];
    EXPECT_EQ(s.layer, 0);
    EXPECT_EQ(int(s.which), int(i % kLinearInputs));
    EXPECT_EQ(s.K, widths[i % kLinearInputs]);
    seen[i % kLinearInputs].insert(seen[i % kLinearInputs].end(), s.x.begin(), s.x.end());
  }
  for (int i = 0; i < kLinearInputs; ++i) ASSERT_EQ(seen[i].size(), ids.size() * size_t(widths[i]));
  // Each input recomputed here from the weights (f32 fixture) and the input before it, in double.
  const LayerWeights& L0 = m->weights().layers[0];
  auto f32 = [](const Weight& w) { return static_cast<const float*>(w.data); };
  auto rmsnorm = [&](const std::vector<double>& v, const float* g) {
    double ms = 0;
    for (double a : v) ms += a * a;
    const double inv = 1.0 / std::sqrt(ms / double(v.size()) + c.rms_norm_eps);
    std::vector<double> out(v.size());
    for (size_t d = 0; d < v.size(); ++d) out[d] = v[d] * inv * g[d];
    return out;
  };
  auto matvec = [](const float* W, int64_t N, int64_t K, const float* x) {  // W [N, K] times x
    std::vector<double> y(static_cast<size_t>(N), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) y[size_t(n)] += double(W[n * K + k]) * x[k];
    return y;
  };
  const float* E = f32(m->weights().embed);
  for (size_t t = 0; t < ids.size(); ++t) {
    // AttnIn = RMSNorm(embedding) * input_layernorm.
    const std::vector<double> e(E + size_t(ids[t]) * size_t(D), E + size_t(ids[t] + 1) * size_t(D));
    const std::vector<double> attn_in = rmsnorm(e, f32(L0.attn_norm));
    for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(seen[0][t * size_t(D) + size_t(d)], attn_in[size_t(d)], 1e-5) << t;
    // MlpIn = RMSNorm(embedding + o_proj(AttnOut)) * post_attention_layernorm.
    std::vector<double> h = matvec(f32(L0.wo), D, QD, seen[1].data() + t * size_t(QD));
    for (int64_t d = 0; d < D; ++d) h[size_t(d)] += e[size_t(d)];
    const std::vector<double> mlp_in = rmsnorm(h, f32(L0.ffn_norm));
    for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(seen[2][t * size_t(D) + size_t(d)], mlp_in[size_t(d)], 1e-4) << t;
    // MlpAct = silu(gate(MlpIn)) * up(MlpIn).
    const std::vector<double> g = matvec(f32(L0.w_gate), F, D, seen[2].data() + t * size_t(D)),
                              u = matvec(f32(L0.w_up), F, D, seen[2].data() + t * size_t(D));
    for (int64_t f = 0; f < F; ++f) {
      const double want = g[size_t(f)] / (1.0 + std::exp(-g[size_t(f)])) * u[size_t(f)];
      EXPECT_NEAR(seen[3][t * size_t(F) + size_t(f)], want, 1e-5 + 1e-4 * std::fabs(want)) << t;
    }
  }
}

std::string stories_dir() { return testutil::shared_data("models/stories260K"); }
#define REQUIRE_STORIES() \
  if (!testutil::exists(stories_dir())) GTEST_SKIP() << "../shared/data/models/stories260K is not present"

std::vector<int32_t> stories_ids(const std::string& file) {
  auto tok = Tokenizer::load_dir(stories_dir());
  return tok->encode(testutil::read_file(testutil::source_path("tests/data/perplexity/" + file)), true);
}

// Issue 7's accuracy goal on stories260K: NF4 and int4 within 10% of full precision on the committed
// evaluation text, with GPTQ calibrated on a separate text of the model's own samples (other seeds).
// Perplexity of the evaluation text under the weights tools/gptq_reference.py (an independent torch
// implementation) writes for stories260K and stories260K_calib.txt, evaluated by `mistral-run perplexity`:
//   tools/gptq_reference.py ../shared/data/models/stories260K tests/data/perplexity/stories260K_calib.txt OUT MODE
//   build/mistral-run perplexity -m OUT -f tests/data/perplexity/stories260K_samples.txt --json
const struct {
  Quant q;
  double ppl;
} kReferenceGptq[] = {{Quant::Int8, 3.345689118102547}, {Quant::NF4, 3.637845247500911}, {Quant::Int4, 3.6331956291454004}};

TEST(QuantAccuracy, GptqPerplexityOnStoriesText) {
  REQUIRE_STORIES();
  auto full = Model::load(stories_dir());
  const std::vector<int32_t> eval = stories_ids("stories260K_samples.txt"), calib = stories_ids("stories260K_calib.txt");
  ASSERT_EQ(eval.size(), 3257u);
  // x in fp32, as in the torch reference (the CPU's default int8 activations move int4's perplexity by 4e-4).
  auto be = testutil::cpu_backend_with("MISTRAL_CPU_QUANT_I8", "0", 2);
  PerplexityOptions po;
  for (Quant q : {Quant::Int8, Quant::NF4, Quant::Int4}) {
    LoadOptions lo;
    lo.quant = q;
    auto rtn = Model::load(stories_dir(), lo);
    auto gq = Model::load(stories_dir());
    GptqOptions go;
    go.quant = q;
    gptq_quantize_model(*gq, calib, go);
    EXPECT_EQ(gq->quant(), q);
    const PerplexityResult r_rtn = evaluate_perplexity(*rtn, *be, eval, po, full.get());
    const PerplexityResult r = evaluate_perplexity(*gq, *be, eval, po, full.get());
    const double ratio = r.ppl / r.ref_ppl, ratio_rtn = r_rtn.ppl / r_rtn.ref_ppl;
    std::printf("stories260K %s: GPTQ perplexity %.4f vs full precision %.4f (ratio %.4f, %s the 10%% target; "
                "round-to-nearest %.4f); mean KL %.5f nats\n",
                quant_name(q), r.ppl, r.ref_ppl, ratio, ratio <= 1.10 ? "within" : "OUTSIDE", ratio_rtn, r.kl);
    RecordProperty(std::string("gptq_ppl_ratio_") + quant_name(q), std::to_string(ratio));
    EXPECT_LE(ratio, q == Quant::Int8 ? 1.01 : 1.10) << quant_name(q);
    EXPECT_GT(ratio, 0.99) << quant_name(q);
    if (q != Quant::Int8) EXPECT_LT(ratio, ratio_rtn) << quant_name(q);
    for (const auto& ref : kReferenceGptq)  // float rounding aside, the same codes as the torch reference
      if (ref.q == q) EXPECT_NEAR(r.ppl, ref.ppl, 1e-4 * ref.ppl) << quant_name(q);
  }
}

// A GPTQ model saved and loaded back is the same model (native layout: q/k rows permuted at load and
// back when saved).
TEST(Gptq, CheckpointRoundTrip) {
  for (const char* fx : {"full_gqa2_tied_f32", "native_w8_gqa2_f32"}) {
    const std::string dir = testutil::source_path(std::string("models/fixtures/") + fx);
    auto m = Model::load(dir);
    std::vector<int32_t> calib;
    for (int i = 0; i < 300; ++i) calib.push_back(int32_t((i * 37 + 11) % m->config().vocab_size));
    GptqOptions go;
    go.quant = Quant::Int4;
    go.ctx = 64;
    go.hessian_budget = 1;  // one layer per calibration pass
    gptq_quantize_model(*m, calib, go);
    testutil::TempDir tmp;
    save_checkpoint(*m, tmp.file("q"));
    auto back = Model::load(tmp.file("q"));
    EXPECT_EQ(back->quant(), Quant::Int4);
    for (int64_t l = 0; l < m->config().num_layers; ++l)
      for (int k = 0; k < kLinearWeights; ++k) {
        const Weight& a = m->linear(l, LinearWeight(k));
        const Weight& b = back->linear(l, LinearWeight(k));
        ASSERT_EQ(a.nbytes(), b.nbytes());
        EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes())) << fx << " layer " << l << " weight " << k;
        EXPECT_EQ(0, std::memcmp(a.scales, b.scales, a.scale_bytes())) << fx << " layer " << l << " weight " << k;
      }
  }
}

TEST(GptqCli, QuantizeAndPerplexityAgree) {
  REQUIRE_STORIES();
  const std::string eval = testutil::source_path("tests/data/perplexity/stories260K_samples.txt");
  const std::string calib = testutil::source_path("tests/data/perplexity/stories260K_calib.txt");
  testutil::TempDir tmp;
  const auto q = testutil::run_cli({"quantize", "-m", stories_dir(), "-o", tmp.file("q"), "--quant", "int4", "--calib", calib});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_NE(q.out.find("int4 (GPTQ)"), std::string::npos) << q.out;
  EXPECT_NE(q.err.find("gptq: layer 5/5 quantized"), std::string::npos) << q.err;
  const auto saved = testutil::run_cli({"perplexity", "-m", tmp.file("q"), "-f", eval, "--json"});
  const auto direct = testutil::run_cli({"perplexity", "-m", stories_dir(), "-f", eval, "--json", "--quant", "int4", "--calib", calib});
  ASSERT_EQ(saved.exit_code, 0) << saved.err;
  ASSERT_EQ(direct.exit_code, 0) << direct.err;
  EXPECT_EQ(nlohmann::json::parse(saved.out)["ppl"], nlohmann::json::parse(direct.out)["ppl"]);
  // One-line errors.
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"perplexity", "-m", stories_dir(), "-f", eval, "--calib", calib},
        std::vector<std::string>{"perplexity", "-m", stories_dir(), "-f", eval, "--quant", "nf4", "--calib", "/nonexistent"},
        std::vector<std::string>{"perplexity", "-m", stories_dir(), "-f", eval, "--quant", "nf4", "--quant-lm-head",
                                 "--calib", calib},
        std::vector<std::string>{"perplexity", "-m", tmp.file("q"), "-f", eval, "--quant", "int4", "--calib", calib}}) {
    const auto r = testutil::run_cli(bad);
    EXPECT_NE(r.exit_code, 0) << bad.back();
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
