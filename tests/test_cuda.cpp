// CUDA backend against the CPU backend (the reference): every op over randomized shapes (not
// multiples of 32, GQA ratios 1/2/4/8, KV lengths from 1 to 3x the window with wrap-around, head_dim
// 12/64/128, fp32/fp16/bf16 weights, int8/NF4/int4 quantized weights), the fused ops (add + RMSNorm, RoPE +
// cache write: eager, unfused and in a recorded graph), batched decode steps (decode_rows: many sequences,
// one token each), then whole models end to end (full precision and quantized; batched decode against each
// sequence alone). Label `gpu`: each test skips with the reason when no usable GPU is
// present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "mistral/backend.h"
#include "mistral/engine.h"
#include "mistral/generator.h"
#include "mistral/quant.h"
#include "mistral/sampler.h"
#include "mistral/tokenizer.h"
#include "quant_half_reference.h"
#include "quant_i8_reference.h"
#include "test_util.h"

using namespace mistral;
using json = nlohmann::json;

namespace {

#define REQUIRE_GPU()                                                           \
  do {                                                                          \
    const std::string why = cuda_unavailable_reason();                          \
    if (!why.empty()) GTEST_SKIP() << "no usable GPU: " << why;                 \
  } while (0)

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A weight in dtype t made from fp32 values, with its own storage.
struct HostWeight {
  std::vector<uint8_t> bytes;
  Weight w;
  HostWeight(const std::vector<float>& v, int64_t rows, int64_t cols, DType t) {
    bytes.resize(v.size() * dtype_size(t));
    for (size_t i = 0; i < v.size(); ++i) {
      if (t == DType::F32) std::memcpy(&bytes[4 * i], &v[i], 4);
      else {
        uint16_t h = t == DType::F16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
        std::memcpy(&bytes[2 * i], &h, 2);
      }
    }
    w.dtype = t, w.rows = rows, w.cols = cols, w.data = bytes.data();
  }
};

// Device buffer round trips through a backend.
struct Dev {
  Backend& be;
  float* p;
  size_t n;
  Dev(Backend& b, const std::vector<float>& h) : be(b), p(b.alloc(h.size())), n(h.size()) { b.to_device(p, h.data(), n); }
  Dev(Backend& b, size_t count) : be(b), p(b.alloc(count)), n(count) {
    std::vector<float> poison(count, std::nanf(""));  // every element must be written
    b.to_device(p, poison.data(), n);
  }
  ~Dev() { be.free(p); }
  std::vector<float> get() const {
    std::vector<float> h(n);
    be.to_host(h.data(), p, n);
    return h;
  }
};

// ||a - b|| / ||b||, with every element finite.
double rel_err(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  int shown = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) {
      if (shown++ < 3) ADD_FAILURE() << what << ": element " << i << " is " << a[i] << " (reference " << b[i] << ")";
      return 1e30;
    }
    num += double(a[i] - b[i]) * (a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// A quantized weight (quant.h layout) made from fp32 values with quantize_matrix, with its own storage.
struct HostQuant {
  QuantizedMatrix q;
  Weight w;
  HostQuant(const std::vector<float>& v, int64_t rows, int64_t cols, DType t)
      : q(quantize_matrix(t, DType::F32, v.data(), rows, cols, 1)) {
    w.dtype = t, w.rows = rows, w.cols = cols, w.data = q.data.data(), w.scales = q.scales.data();
    w.group = quant_group(t, cols);
  }
  // Row n dequantized (the values both backends multiply by).
  std::vector<float> row(int64_t n) const {
    std::vector<float> r(static_cast<size_t>(w.cols));
    dequantize_row(w.dtype, q.data.data() + size_t(n) * w.row_bytes(),
                   q.scales.data() + size_t(n) * (w.scale_bytes() / size_t(w.rows)), w.cols, r.data());
    return r;
  }
};

// A CUDA backend made with environment switches set (value nullptr: unset), which it reads when made; the
// variables are then put back as they were (gpu-check runs the whole suite under some of them).
std::unique_ptr<Backend> cuda_backend_with(std::initializer_list<std::pair<const char*, const char*>> env) {
  return testutil::backend_with(env, [] { return make_cuda_backend(0); });
}

// The op tests' backends. The GPU one without the decode-step folds (MISTRAL_CUDA_FUSED_NORM,
// MISTRAL_CUDA_DECODE_ROPE) and the quantized GEMVs' fp16 / int8 paths (MISTRAL_CUDA_QUANT_HALF,
// MISTRAL_CUDA_QUANT_I8), which gpu-check may set for the whole suite so that the model tests run through
// them: the op tests test each op as it is (the experiments have tests of their own). The CPU one with
// fp32 activations for quantized weights (MISTRAL_CPU_QUANT_I8=0, as the GPU one's default path), or with
// i8 both with int8 activations (MISTRAL_CPU_QUANT_I8=1, MISTRAL_CUDA_QUANT_I8=1).
struct Backends {
  std::unique_ptr<Backend> cpu, gpu;
  // place_weight keys device copies by host address: host weights must outlive the backend.
  std::deque<HostWeight> keep;
  std::deque<HostQuant> keep_q;
  explicit Backends(bool i8 = false)
      : cpu(testutil::cpu_backend_with("MISTRAL_CPU_QUANT_I8", i8 ? "1" : "0", 2)),
        gpu(cuda_backend_with({{"MISTRAL_CUDA_FUSED_NORM", nullptr},
                               {"MISTRAL_CUDA_DECODE_ROPE", nullptr},
                               {"MISTRAL_CUDA_QUANT_HALF", nullptr},
                               {"MISTRAL_CUDA_QUANT_I8", i8 ? "1" : nullptr}})) {}
  HostWeight& weight(const std::vector<float>& v, int64_t rows, int64_t cols, DType t) {
    keep.emplace_back(v, rows, cols, t);
    return keep.back();
  }
  HostQuant& quant(const std::vector<float>& v, int64_t rows, int64_t cols, DType t) {
    keep_q.emplace_back(v, rows, cols, t);
    return keep_q.back();
  }
};

TEST(CudaOps, RmsNorm) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(1);
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int D : {8, 100, 4096, 5003})
      for (int T : {1, 3, 17}) {
        auto x = randn(size_t(T) * D, rng, 3.0f);
        HostWeight& w = b.weight(randn(size_t(D), rng), 1, D, t);
        std::vector<float> ref(x.size());
        b.cpu->rmsnorm(x.data(), w.w, 1e-5f, T, ref.data());
        Dev dx(*b.gpu, x), dy(*b.gpu, x.size());
        b.gpu->rmsnorm(dx.p, b.gpu->place_weight(w.w), 1e-5f, T, dy.p);
        EXPECT_LT(rel_err(dy.get(), ref, "rmsnorm"), 1e-6) << "D " << D << " T " << T;
      }
}

TEST(CudaOps, Matmul) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(2);
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int K : {8, 100, 172, 4096})
      for (int N : {1, 33, 257})
        for (int T : {1, 2, 3, 4, 5, 17, 64}) {
          auto x = randn(size_t(T) * K, rng);
          HostWeight& w = b.weight(randn(size_t(N) * K, rng, 0.05f), N, K, t);
          std::vector<float> ref(size_t(T) * N);
          b.cpu->matmul(x.data(), T, w.w, ref.data());
          Dev dx(*b.gpu, x), dy(*b.gpu, ref.size());
          b.gpu->matmul(dx.p, T, b.gpu->place_weight(w.w), dy.p);
          // GEMV (T <= 4) and fp32 SGEMM accumulate in fp32 from the same inputs; the cuBLAS path
          // for fp16/bf16 rounds the activations to the weight dtype first.
          const double tol = T <= 4 || t == DType::F32 ? 1e-5 : t == DType::F16 ? 2e-3 : 1e-2;
          EXPECT_LT(rel_err(dy.get(), ref, "matmul"), tol)
              << dtype_name(t) << " T " << T << " N " << N << " K " << K;
        }
}

// Quantized weights: the GEMV (T <= 4, in-register dequantization, fp32 throughout) and the prefill path
// (T > 4: W dequantized to fp16, x converted to fp16, cuBLAS with fp32 accumulation) against the CPU's
// quantized matmul on the same Weight. K not a multiple of 16/32 nor of the group (partial chunks and
// groups), x misaligned for float4 loads in one shape; K = 1500 / 3000 / 4192 make the GEMV split K over
// 2, 4 and 8 warps. Each element must satisfy |gpu - cpu| <= rtol * S, S = sum_k |x_k| |w_nk| over the
// dequantized row: fp32 sums from the same products differ by a few ulps of S (1e-5 leaves a wide
// margin while one wrong element, ~S / K, still fails); with fp16 operands each product moves by at
// most (2u + u^2) |x w|, u = 2^-11, so 1e-3 more.
TEST(CudaOps, QuantMatmul) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(12);
  int cases = 0;
  for (DType t : {DType::Q8, DType::NF4, DType::Q4})
    for (int K : {40, 200, 333, 1500, 3000, 4096 + 96})
      for (int N : {1, 7, 130}) {
        HostQuant& w = b.quant(randn(size_t(N) * K, rng, 0.05f), N, K, t);
        const size_t before = b.gpu->weight_bytes();
        const Weight dw = b.gpu->place_weight(w.w);
        EXPECT_EQ(b.gpu->weight_bytes() - before, w.w.nbytes() + w.w.scale_bytes());  // data and scales
        EXPECT_EQ(dw.group, w.w.group);
        std::vector<std::vector<float>> rows;
        for (int n = 0; n < N; ++n) rows.push_back(w.row(n));
        for (int T : {1, 2, 3, 4, 5, 37}) {
          auto x = randn(size_t(T) * K, rng);
          std::vector<float> ref(size_t(T) * N);
          b.cpu->matmul(x.data(), T, w.w, ref.data());
          const int shift = K == 200 ? 1 : 0;  // x one float past a 16-byte boundary: scalar x loads
          std::vector<float> xs(size_t(shift), 0.f);
          xs.insert(xs.end(), x.begin(), x.end());
          Dev dx(*b.gpu, xs), dy(*b.gpu, ref.size());
          b.gpu->matmul(dx.p + shift, T, dw, dy.p);
          const std::vector<float> got = dy.get();
          const double rtol = T <= 4 ? 1e-5 : 1e-3 + 1e-5;
          int bad = 0;
          for (int tt = 0; tt < T; ++tt)
            for (int n = 0; n < N; ++n) {
              double S = 0;
              for (int k = 0; k < K; ++k) S += std::fabs(double(x[size_t(tt) * K + k]) * rows[size_t(n)][size_t(k)]);
              const size_t i = size_t(tt) * N + n;
              const double d = std::fabs(double(got[i]) - ref[i]);
              if (!std::isfinite(got[i]) || d > rtol * S + 1e-7) {
                if (bad++ < 3)
                  ADD_FAILURE() << dtype_name(t) << " T " << T << " N " << N << " K " << K << ": y[" << tt << "][" << n
                                << "] = " << got[i] << ", CPU " << ref[i] << " (|d| " << d << " > " << rtol * S << ")";
              }
            }
          ++cases;
        }
      }
  EXPECT_EQ(cases, 3 * 6 * 3 * 6);
}

// The fp16 and int8 paths of the Q8 and Q4 GEMVs (experiments: MISTRAL_CUDA_QUANT_HALF=1 and
// MISTRAL_CUDA_QUANT_I8=1; quant_gemv.cuh QuantXMath), each against its reference written from its
// definition (tests/quant_half_reference.h, tests/quant_i8_reference.h), to 2e-6 of the sum of the chunks'
// magnitudes (the kernel adds its chunks in fp32, in its own order), and against the CPU's fp32 product
// within the path's bound: fp16 17 * 2^-11 of sum |x w|; int8 the reference's quantization bound (half a
// step of each chunk's x, times sum |w|) plus 1e-5 of sum |x w|. Token rows of different sizes: one 1e-3
// smaller, one with an element of 3000 (a "massive activation": the fp16 staging scale must keep the sums
// finite; the int8 chunk holding it quantizes its other elements coarsely, within the bound). Launches
// whose copy of x would not fit the staging limit (K = 14336 at larger T) take the fp32 path: 1e-5 of
// sum |x w| as CudaOps.QuantMatmul. The gate/up/SwiGLU launch equals SwiGLU of the two single products bit
// for bit.
enum class XPath { f16, i8 };
void check_quant_path(XPath path, unsigned seed) {
  Backends b;
  const bool i8 = path == XPath::i8;
  auto gpu = i8 ? cuda_backend_with({{"MISTRAL_CUDA_QUANT_I8", "1"}, {"MISTRAL_CUDA_QUANT_HALF", nullptr}})
                : cuda_backend_with({{"MISTRAL_CUDA_QUANT_HALF", "1"}, {"MISTRAL_CUDA_QUANT_I8", nullptr}});
  std::mt19937 rng(seed);
  int cases = 0;
  for (DType t : {DType::Q8, DType::Q4})
    for (int K : {40, 200, 333, 1500, 3000, 4096 + 96, 14336})
      for (int N : {1, 7, 130}) {
        SCOPED_TRACE(std::string(dtype_name(t)) + " K " + std::to_string(K) + " N " + std::to_string(N));
        HostQuant& w = b.quant(randn(size_t(N) * K, rng, 0.05f), N, K, t);
        const Weight dw = gpu->place_weight(w.w);
        std::vector<std::vector<float>> rows;
        for (int n = 0; n < N; ++n) rows.push_back(w.row(n));
        const size_t rb = w.w.row_bytes(), sb = w.w.scale_bytes() / size_t(N);
        const size_t E = t == DType::Q8 ? 16 : 32, chunks = (size_t(K) + E - 1) / E;  // elements a 16-byte chunk
        for (int T = 1; T <= 4; ++T) {
          // The path needs its copy of x within the 72 KiB staging limit (quant_gemv.cu, kMaxStageBytes):
          // fp16 T rows of ceil(K / E) chunks of E + 8 halves; int8 T rows of that many chunks of
          // (16 or 48) + 8 bytes, rounded up to 16. Larger launches take the fp32 path.
          const size_t copy = i8 ? size_t(T) * ((chunks * ((t == DType::Q8 ? 16 : 48) + 8) + 15) / 16 * 16)
                                 : size_t(T) * chunks * (E + 8) * 2;
          const bool fast = copy <= 72 * 1024;
          auto x = randn(size_t(T) * K, rng);
          if (T >= 2)
            for (int k = 0; k < K; ++k) x[size_t(K) + size_t(k)] *= 1e-3f;
          if (T >= 3) x[2 * size_t(K) + size_t(K / 3)] = 3000.f;
          std::vector<float> ref(size_t(T) * N);
          b.cpu->matmul(x.data(), T, w.w, ref.data());
          Dev dx(*gpu, x), dy(*gpu, ref.size());
          gpu->matmul(dx.p, T, dw, dy.p);
          const std::vector<float> got = dy.get();
          int bad = 0;
          for (int tt = 0; tt < T; ++tt)
            for (int n = 0; n < N; ++n) {
              const float* xt = x.data() + size_t(tt) * K;
              double S = 0, pmag = 0, bound = 0;
              for (int k = 0; k < K; ++k) S += std::fabs(double(xt[k]) * rows[size_t(n)][size_t(k)]);
              const uint8_t* wr = w.q.data.data() + size_t(n) * rb;
              const void* ws = w.q.scales.data() + size_t(n) * sb;
              const double pref = i8 ? quant_i8_ref::dot(t, wr, ws, xt, K, &pmag, &bound)
                                     : quant_half_ref::dot(t, wr, ws, xt, K, &pmag);
              if (!i8) bound = 17.0 / 2048 * S;
              const size_t i = size_t(tt) * N + n;
              const double dp = std::fabs(got[i] - pref), d = std::fabs(double(got[i]) - ref[i]);
              const bool off = fast ? dp > 2e-6 * pmag + 1e-30 || d > bound + 1e-5 * S + 1e-30 : d > 1e-5 * S + 1e-30;
              if (!std::isfinite(got[i]) || off) {
                if (bad++ < 3)
                  ADD_FAILURE() << "T " << T << ": y[" << tt << "][" << n << "] = " << got[i] << ", path reference "
                                << pref << " (|d| " << dp << ", bound " << 2e-6 * pmag << "), CPU " << ref[i]
                                << " (|d| " << d << ", bound " << bound + 1e-5 * S << ")";
              }
            }
          ++cases;
        }
        if (N == 130) {  // the fused gate/up/SwiGLU launch, x of one token and of four
          HostQuant& u = b.quant(randn(size_t(N) * K, rng, 0.05f), N, K, t);
          const Weight du = gpu->place_weight(u.w);
          for (int T : {1, 4}) {
            const auto x = randn(size_t(T) * K, rng);
            const size_t n = size_t(T) * N;
            Dev dx(*gpu, x), dg(*gpu, n), du2(*gpu, n), sep(*gpu, n), fg(*gpu, n), fu(*gpu, n);
            gpu->matmul(dx.p, T, dw, dg.p);
            gpu->matmul(dx.p, T, du, du2.p);
            gpu->swiglu(dg.p, du2.p, n, sep.p);
            gpu->matmul_swiglu(dx.p, T, dw, du, fg.p, fu.p);
            const auto want = sep.get(), fused = fg.get();
            for (size_t i = 0; i < n; ++i)
              if (std::memcmp(&want[i], &fused[i], 4) != 0) {
                ADD_FAILURE() << "SwiGLU T " << T << " [" << i << "] = " << fused[i] << ", separate " << want[i];
                break;
              }
          }
        }
      }
  EXPECT_EQ(cases, 2 * 7 * 3 * 4);
}
TEST(CudaOps, QuantMatmulHalf) {
  REQUIRE_GPU();
  check_quant_path(XPath::f16, 41);
}
TEST(CudaOps, QuantMatmulI8) {
  REQUIRE_GPU();
  check_quant_path(XPath::i8, 47);
}

// A norm weight's values (its host bytes in fp32, fp16 or bf16) as floats.
std::vector<float> norm_values(const Weight& w) {
  std::vector<float> v(static_cast<size_t>(w.cols));
  const uint8_t* p = static_cast<const uint8_t*>(w.data);
  for (size_t k = 0; k < v.size(); ++k) {
    if (w.dtype == DType::F32) {
      std::memcpy(&v[k], p + 4 * k, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * k, 2);
      v[k] = w.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return v;
}

// quant_i8_ref::dot of row n of the host quantized weight W with xt [K], its chunk magnitudes in *mag.
double i8_ref_row(const Weight& W, int64_t n, const float* xt, int K, double* mag) {
  const size_t rb = W.row_bytes(), sb = W.scale_bytes() / size_t(W.rows);
  return quant_i8_ref::dot(W.dtype, static_cast<const uint8_t*>(W.data) + size_t(n) * rb,
                           static_cast<const uint8_t*>(W.scales) + size_t(n) * sb, xt, K, mag);
}

// Outputs got [T, W.rows] of the quantized GEMVs' int8 path on x [T, K] whose rows' results were scaled by
// f[t], against quant_i8_ref::dot(x_t) f[t] (W: a host quantized weight), to 1e-5 of the reference's chunk
// magnitudes; with base (the residual add), got against base + that, with 2^-23 |base| more for the sum's
// rounding.
void check_i8_rows(const Weight& W, const std::vector<float>& x, const std::vector<double>& f, int T, int K,
                   const std::vector<float>& got, const char* what, const std::vector<float>* base = nullptr) {
  const int N = int(W.rows);
  int bad = 0;
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n) {
      double mag = 0;
      const double ref = i8_ref_row(W, n, x.data() + size_t(t) * K, K, &mag) * f[size_t(t)];
      const double b0 = base ? double((*base)[size_t(t) * N + n]) : 0.0;
      const double g = got[size_t(t) * N + n] - b0;
      if (!(std::fabs(g - ref) <= 1e-5 * mag * f[size_t(t)] + std::ldexp(std::fabs(b0), -23) + 1e-30) && bad++ < 3)
        ADD_FAILURE() << what << " T " << T << ": y[" << t << "][" << n << "] = " << g << ", int8 reference " << ref
                      << " (bound " << 1e-5 * mag * f[size_t(t)] << ")";
    }
}

// The decode-step fusions (MISTRAL_CUDA_FUSED_NORM=1, an experiment; gemv.cuh GemvFusion): the RMSNorm
// folded into the q/k/v-style and gate/up/SwiGLU products, the residual add into a product, against the
// CPU backend's compositions (rmsnorm then the products; matmul then add), for fp32/fp16/bf16 and the three
// quantized formats, norms in the weights' dtype, T = 1..4, K with and without the vector path (and with a
// partial quantized chunk). The norm is a mean square over the row summed in another order than the
// separate kernel's, so 1e-5 (relative, over the outputs) as for the GEMVs; with the quantized fp16 path
// (MISTRAL_CUDA_QUANT_HALF=1 as well) 2e-3, its operands being fp16. With the int8 path
// (MISTRAL_CUDA_QUANT_I8=1), x being rounded to 8 bits a chunk, each output against
// tests/quant_i8_reference.h applied to x * g (rounded products, as the path quantizes them) times the
// row's 1 / rms (in double), to 1e-5 of its chunk magnitudes (the norm's sum of squares is taken in
// another order), and the relative errors over the outputs within 5e-2 as a sanity bound.
TEST(CudaOps, FusedNormMatmul) {
  REQUIRE_GPU();
  Backends b;
  auto fused = cuda_backend_with(
      {{"MISTRAL_CUDA_FUSED_NORM", "1"}, {"MISTRAL_CUDA_QUANT_HALF", nullptr}, {"MISTRAL_CUDA_QUANT_I8", nullptr}});
  auto fused_half = cuda_backend_with(
      {{"MISTRAL_CUDA_FUSED_NORM", "1"}, {"MISTRAL_CUDA_QUANT_HALF", "1"}, {"MISTRAL_CUDA_QUANT_I8", nullptr}});
  auto fused_i8 = cuda_backend_with({{"MISTRAL_CUDA_FUSED_NORM", "1"}, {"MISTRAL_CUDA_QUANT_I8", "1"}});
  ASSERT_TRUE(fused->fuses_norm(1) && fused->fuses_norm(4) && !fused->fuses_norm(5));
  // Scratch the folded calls must leave alone (the compositions they replace write it): NaN-filled by Dev.
  auto untouched = [](const Dev& d, const char* what) {
    for (float v : d.get())
      if (!std::isnan(v)) {
        ADD_FAILURE() << what << ": the scratch was written (the unfolded composition ran)";
        return;
      }
  };
  std::mt19937 rng(43);
  const float eps = 1e-5f;
  int cases = 0;
  for (Backend* gpu : {fused.get(), fused_half.get(), fused_i8.get()})
    for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8, DType::NF4, DType::Q4})
      for (int K : {100, 333, 3000})  // every launch's copy of x fits the quantized GEMVs' staging
        for (int T : {1, 2, 4}) {
          const bool quant = is_quantized(t);
          const bool half = gpu == fused_half.get(), i8 = gpu == fused_i8.get();
          if ((half || i8) && !(t == DType::Q8 || t == DType::Q4)) continue;
          SCOPED_TRACE(std::string(dtype_name(t)) + " K " + std::to_string(K) + " T " + std::to_string(T) +
                       (half ? " (fp16 path)"
                        : i8 ? " (int8 path)"
                             : ""));
          const double tol = half ? 2e-3 : i8 ? 5e-2 : 1e-5;
          const DType nt = quant ? DType::BF16 : t;  // the norm's dtype
          auto make = [&](int N) -> const Weight& {
            auto v = randn(size_t(N) * K, rng, 0.05f);
            return quant ? b.quant(v, N, K, t).w : b.weight(v, N, K, t).w;
          };
          const Weight& wq = make(37);
          const Weight& wk = make(8);
          const Weight& wv = make(8);
          std::vector<float> gv = randn(size_t(K), rng, 0.3f);
          for (auto& g : gv) g += 1.0f;
          const Weight& norm = b.weight(gv, 1, K, nt).w;
          auto x = randn(size_t(T) * K, rng, 2.0f);
          if (T > 1) x[size_t(K) + 3] = 300.f;  // an outlier in the second row
          // Norm, then q/k/v.
          std::vector<float> xn(x.size());
          b.cpu->rmsnorm(x.data(), norm, eps, T, xn.data());
          const Weight* W[3] = {&wq, &wk, &wv};
          std::vector<float> ref[3];
          for (int i = 0; i < 3; ++i) {
            ref[i].resize(size_t(T) * size_t(W[i]->rows));
            b.cpu->matmul(xn.data(), T, *W[i], ref[i].data());
          }
          const Weight dW[3] = {gpu->place_weight(wq), gpu->place_weight(wk), gpu->place_weight(wv)};
          const Weight* dWp[3] = {&dW[0], &dW[1], &dW[2]};
          const Weight dnorm = gpu->place_weight(norm);
          Dev dx(*gpu, x), dxn(*gpu, x.size()), y0(*gpu, ref[0].size()), y1(*gpu, ref[1].size()),
              y2(*gpu, ref[2].size());
          float* const ys[3] = {y0.p, y1.p, y2.p};
          gpu->norm_matmul_multi(dx.p, dnorm, eps, T, dWp, ys, 3, dxn.p);
          untouched(dxn, "norm + q/k/v");
          EXPECT_LT(rel_err(y0.get(), ref[0], "norm + q"), tol);
          EXPECT_LT(rel_err(y1.get(), ref[1], "norm + k"), tol);
          EXPECT_LT(rel_err(y2.get(), ref[2], "norm + v"), tol);
          // The int8 path's reference input: x * g (g as the GPU holds it, from its dtype), and each row's
          // 1 / rms (in double), by which the products are scaled.
          std::vector<float> xg(x.size());
          std::vector<double> inv_rms(static_cast<size_t>(T));
          {
            const std::vector<float> gq = norm_values(norm);
            for (int tt = 0; tt < T; ++tt) {
              double ss = 0;
              for (int k = 0; k < K; ++k) {
                const float v = x[size_t(tt) * K + k];
                ss += double(v) * v;
                xg[size_t(tt) * K + k] = v * gq[size_t(k)];
              }
              inv_rms[size_t(tt)] = 1.0 / std::sqrt(ss / K + eps);
            }
          }
          if (i8) {  // each output against the int8 path's reference
            const std::vector<float> got[3] = {y0.get(), y1.get(), y2.get()};
            for (int i = 0; i < 3; ++i)
              check_i8_rows(*W[i], xg, inv_rms, T, K, got[i], i == 0 ? "norm + q" : i == 1 ? "norm + k" : "norm + v");
          }
          // Norm, then gate/up + SwiGLU.
          const Weight& wg = make(41);
          const Weight& wu = make(41);
          std::vector<float> g(size_t(T) * 41), u(g.size());
          b.cpu->matmul_swiglu(xn.data(), T, wg, wu, g.data(), u.data());
          Dev dg(*gpu, g.size()), du(*gpu, g.size());
          gpu->norm_matmul_swiglu(dx.p, dnorm, eps, T, gpu->place_weight(wg), gpu->place_weight(wu), dg.p, du.p, dxn.p);
          untouched(dxn, "norm + SwiGLU");
          EXPECT_LT(rel_err(dg.get(), g, "norm + SwiGLU"), 4 * tol);
          if (i8) {  // silu(gate) * up from the reference's gate and up, within what their 1e-5 moves it
            const std::vector<float> got = dg.get();
            int bad = 0;
            for (int tt = 0; tt < T; ++tt)
              for (int n = 0; n < 41; ++n) {
                double mg = 0, mu = 0;
                const float* xt = xg.data() + size_t(tt) * K;
                const double rg = i8_ref_row(wg, n, xt, K, &mg) * inv_rms[size_t(tt)];
                const double ru = i8_ref_row(wu, n, xt, K, &mu) * inv_rms[size_t(tt)];
                const double sg = rg / (1.0 + std::exp(-rg)), want = sg * ru;
                const double lim = 1.2 * std::fabs(ru) * 1e-5 * mg * inv_rms[size_t(tt)] +
                                   std::fabs(sg) * 1e-5 * mu * inv_rms[size_t(tt)] + 1e-6 * std::fabs(want) + 1e-30;
                if (!(std::fabs(got[size_t(tt) * 41 + n] - want) <= lim) && bad++ < 3)
                  ADD_FAILURE() << "norm + SwiGLU (int8 path) y[" << tt << "][" << n
                                << "] = " << got[size_t(tt) * 41 + n] << ", reference " << want << " (bound " << lim
                                << ")";
              }
          }
          // Residual: x += a W^T (W of K columns: the output projection's shape).
          const Weight& wo = make(K);
          auto a = randn(size_t(T) * K, rng);
          std::vector<float> delta(size_t(T) * K);
          b.cpu->matmul(a.data(), T, wo, delta.data());
          Dev da(*gpu, a), tmp(*gpu, x.size());
          gpu->matmul_residual(da.p, T, gpu->place_weight(wo), dx.p, tmp.p);
          untouched(tmp, "residual");
          std::vector<float> got = dx.get(), dgot(got.size());
          for (size_t i = 0; i < got.size(); ++i) dgot[i] = got[i] - x[i];
          EXPECT_LT(rel_err(dgot, delta, "residual"), tol);
          if (i8) check_i8_rows(wo, a, std::vector<double>(size_t(T), 1.0), T, K, got, "residual", &x);
          ++cases;
        }
  EXPECT_EQ(cases, (6 + 2 + 2) * 3 * 3);
}

// The row argmax that greedy decoding runs on the device (only the ids come back): against the CPU
// backend's (mistral::argmax per row) over lengths around the block size, with the largest value repeated
// (the first index must win), a row of -inf, a row whose largest value is its last element and NaNs.
// The tensor-core Q4 and Q8 GEMVs (MISTRAL_CUDA_QUANT_MMA=1, an experiment): single-token products against
// the CPU's on the same quantized weights, x rounded to fp16 on its way to the tensor cores (relative error
// of the outputs below 2e-3; tools/q4_mma_host_check.cpp checks the tile layout against the PTX ISA's
// fragment table and the arithmetic on the host). The backend made with the switch holds the extra
// tile copies (its weight bytes grow by more than the plain copy), so the path is the one that ran.
TEST(CudaOps, QuantMmaGemv) {
  REQUIRE_GPU();
  Backends b;
  auto mma = cuda_backend_with({{"MISTRAL_CUDA_QUANT_MMA", "1"}});
  const std::string name = mma->name();  // "cuda:N (device, sm_XY)"
  const size_t sm = name.rfind("sm_");
  ASSERT_NE(sm, std::string::npos) << name;
  if (std::atoi(name.c_str() + sm + 3) < 80) GTEST_SKIP() << "mma.m16n8k16 needs sm_80 or later: " << name;
  std::mt19937 rng(31);
  // N = 1; K = 320 (Q4: the last group's second tile lies past K); odd K; 7B's shapes.
  const std::pair<int, int> shapes[] = {{1, 320}, {16, 128}, {40, 256}, {17, 999}, {33, 1000}, {1000, 4096}, {64, 14336}};
  for (DType t : {DType::Q4, DType::Q8})
    for (const auto& [N, K] : shapes) {
      SCOPED_TRACE(quant_name(t == DType::Q4 ? Quant::Int4 : Quant::Int8));
      HostQuant& q = b.quant(randn(size_t(N) * size_t(K), rng), N, K, t);
      const size_t before = mma->weight_bytes();
      const Weight dw = mma->place_weight(q.w);
      EXPECT_GT(mma->weight_bytes(), before + q.w.nbytes() + q.w.scale_bytes()) << "no tile copy for " << N << "x" << K;
      const std::vector<float> x = randn(size_t(K), rng);
      std::vector<float> ref(static_cast<size_t>(N));
      b.cpu->matmul(x.data(), 1, q.w, ref.data());
      Dev dx(*mma, x), dy(*mma, size_t(N));
      mma->matmul(dx.p, 1, dw, dy.p);
      EXPECT_LT(rel_err(dy.get(), ref, "tensor-core GEMV"), 2e-3) << N << "x" << K;
    }
}

TEST(CudaOps, ArgmaxRows) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(21);
  for (int n : {1, 2, 33, 1023, 1024, 1025, 5000, 32000, 131072})
    for (int rows : {1, 3, 7}) {
      std::vector<float> x = randn(size_t(rows) * size_t(n), rng);
      if (rows > 1 && n > 3) {
        float* r = x.data() + n;  // row 1: the largest value three times, the first of them wins
        r[n - 2] = r[n / 3] = r[2] = 40.f;
      }
      if (rows > 2) std::fill(x.begin() + 2 * size_t(n), x.begin() + 3 * size_t(n), -INFINITY);
      if (rows > 3) x[4 * size_t(n) - 1] = 60.f;  // row 3: its last element
      if (rows > 5) {  // NaN as the host scan treats it: at index 0 it wins (row 4), elsewhere not (row 5)
        x[4 * size_t(n)] = NAN;
        x[5 * size_t(n) + size_t(n) / 2] = NAN;
      }
      std::vector<int32_t> want(static_cast<size_t>(rows)), got(static_cast<size_t>(rows), -5);
      b.cpu->argmax_rows(x.data(), rows, n, want.data());
      Dev dx(*b.gpu, x);
      b.gpu->argmax_rows(dx.p, rows, n, got.data());
      EXPECT_EQ(got, want) << "n " << n << " rows " << rows;
    }
}

// Sampling's candidates (Backend::top_candidates_rows) against the host version: the same ids in the
// same order (ties by index across the k-th place: values rounded to quarters), the same penalised
// logits, the normaliser within fp32 rounding; rows with and without a penalty, with different k and
// temperatures (0 included) in one launch, and a row with a huge value, -inf and NaN (as -inf).
TEST(CudaOps, TopCandidatesRows) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(23);
  for (int n : {1, 2, 33, 1000, 1025, 32000, 131072})
    for (int k : {1, 5, 40, 1024})
      for (int rows : {1, 3, 5}) {
        std::vector<float> x = randn(size_t(rows) * size_t(n), rng, 3.0f);
        if (k != 40)
          for (auto& v : x) v = std::round(v * 4) / 4;  // many ties
        if (rows > 3) {
          float* r3 = x.data() + 3 * size_t(n);
          r3[n / 2] = 1e30f, r3[n / 3] = NAN, r3[0] = -INFINITY, r3[n - 1] = NAN;
        }
        std::vector<CandidateRequest> req(static_cast<size_t>(rows));
        std::vector<std::vector<int32_t>> pen(static_cast<size_t>(rows));
        for (int r = 0; r < rows; ++r) {
          CandidateRequest& q = req[size_t(r)];
          q.k = std::max(1, std::min(k, n) >> (r % 2));
          q.temperature = r == 2 ? 0.0f : 0.7f + 0.3f * float(r);
          if (r == 1 || r == 4) {  // a penalty on a few ids, the largest among them
            std::vector<int32_t>& pr = pen[size_t(r)];
            for (int i = 0; i < std::min(n, 20); ++i) pr.push_back(int32_t((i * 7919 + r) % n));
            std::sort(pr.begin(), pr.end());
            pr.erase(std::unique(pr.begin(), pr.end()), pr.end());
            q.penalty = 1.5f, q.penalised = pr.data(), q.n_penalised = int(pr.size());
          }
        }
        const int kmax = std::min(k, n);
        std::vector<int32_t> want_ids(size_t(rows) * size_t(kmax), -1), got_ids(want_ids.size(), -2);
        std::vector<float> want_l(want_ids.size()), got_l(want_ids.size());
        std::vector<double> want_z(static_cast<size_t>(rows)), got_z(static_cast<size_t>(rows));
        b.cpu->top_candidates_rows(x.data(), rows, n, req.data(), kmax, want_ids.data(), want_l.data(), want_z.data());
        Dev dx(*b.gpu, x);
        b.gpu->top_candidates_rows(dx.p, rows, n, req.data(), kmax, got_ids.data(), got_l.data(), got_z.data());
        SCOPED_TRACE("n " + std::to_string(n) + " k " + std::to_string(k) + " rows " + std::to_string(rows));
        for (int r = 0; r < rows; ++r)  // the slots past a row's k are not written
          for (int i = req[size_t(r)].k; i < kmax; ++i)
            got_ids[size_t(r * kmax + i)] = want_ids[size_t(r * kmax + i)] = 0,
                                      got_l[size_t(r * kmax + i)] = want_l[size_t(r * kmax + i)] = 0;
        EXPECT_EQ(got_ids, want_ids);
        EXPECT_EQ(got_l, want_l);
        for (int r = 0; r < rows; ++r)  // a row of only -inf and NaN (n <= 2 in row 3) has no normaliser
          if (std::isnan(want_z[size_t(r)]))
            EXPECT_TRUE(std::isnan(got_z[size_t(r)])) << "row " << r << ": " << got_z[size_t(r)];
          else
            EXPECT_NEAR(got_z[size_t(r)], want_z[size_t(r)], 2e-6 * want_z[size_t(r)]) << "row " << r;
      }
}

TEST(CudaOps, EmbedSwigluAdd) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(3);
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const int V = 37, D = 100, T = 5;
    HostWeight& E = b.weight(randn(size_t(V) * D, rng), V, D, t);
    const int32_t ids[T] = {0, 36, 5, 5, 17};
    std::vector<float> ref(size_t(T) * D);
    b.cpu->embed(E.w, ids, T, ref.data());
    Dev dy(*b.gpu, ref.size());
    b.gpu->embed(b.gpu->place_weight(E.w), ids, T, dy.p);
    EXPECT_EQ(dy.get(), ref);
  }
  const size_t n = 10007;
  auto g = randn(n, rng, 4.0f), u = randn(n, rng);
  std::vector<float> ref(n);
  b.cpu->swiglu(g.data(), u.data(), n, ref.data());
  Dev dg(*b.gpu, g), du(*b.gpu, u), dout(*b.gpu, n);
  b.gpu->swiglu(dg.p, du.p, n, dout.p);
  EXPECT_LT(rel_err(dout.get(), ref, "swiglu"), 1e-6);
  b.cpu->add(g.data(), u.data(), n);
  b.gpu->add(dg.p, du.p, n);
  EXPECT_LT(rel_err(dg.get(), g, "add"), 1e-7);
}

TEST(CudaOps, Rope) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(4);
  for (int hd : {12, 64, 128})
    for (int64_t start : {int64_t(0), int64_t(1000), int64_t(20000)})
      for (int T : {1, 5}) {
        AttnShape s;
        s.n_heads = 8, s.n_kv_heads = 2, s.head_dim = hd, s.rope_theta = hd == 12 ? 1e4f : 1e6f;
        auto q = randn(size_t(T) * s.q_dim(), rng), k = randn(size_t(T) * s.kv_dim(), rng);
        Dev dq(*b.gpu, q), dk(*b.gpu, k);
        b.cpu->rope(q.data(), k.data(), T, start, s);
        b.gpu->rope(dq.p, dk.p, T, start, s);
        EXPECT_LT(rel_err(dq.get(), q, "rope q"), 1e-6) << "hd " << hd << " start " << start;
        EXPECT_LT(rel_err(dk.get(), k, "rope k"), 1e-6);
      }
}

// One attention case: random q, k, v of a chunk of T tokens at `start` and a random cache, attended on
// the CPU (ref) and on the GPU (out); the buffers stay for a cache write after it.
struct AttnCase {
  std::vector<float> ck, cv, q, k, v, ref;
  KVLayer hc;
  Dev dq, dk, dv, dck, dcv, dout;
  AttnCase(Backends& b, std::mt19937& rng, const AttnShape& s, int T, int64_t start)
      : ck(randn(size_t(s.slots) * s.kv_dim(), rng)),
        cv(randn(ck.size(), rng)),
        q(randn(size_t(T) * s.q_dim(), rng)),
        k(randn(size_t(T) * s.kv_dim(), rng)),
        v(randn(k.size(), rng)),
        ref(q.size()),
        hc{ck.data(), cv.data()},
        dq(*b.gpu, q),
        dk(*b.gpu, k),
        dv(*b.gpu, v),
        dck(*b.gpu, ck),
        dcv(*b.gpu, cv),
        dout(*b.gpu, q.size()) {
    b.cpu->attention(q.data(), k.data(), v.data(), hc, T, start, s, ref.data());
    b.gpu->attention(dq.p, dk.p, dv.p, KVLayer{dck.p, dcv.p}, T, start, s, dout.p);
  }
};

TEST(CudaOps, AttentionAndCacheWrite) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(5);
  int cases = 0;
  for (int hd :
       {10, 12, 64, 128, 160, 256})  // the decode kernel: scalar loads below 4-aligned rows, 2 pieces above 128
    for (int ratio : {1, 2, 3, 4, 6, 8})  // groups of 3 and 6: the tiled decode block pads them to 4 and 8
      for (int window : {0, 8})
        for (int64_t start : {int64_t(0), int64_t(1), int64_t(7), int64_t(13), int64_t(23), int64_t(300)})
          for (int T : {1, 4, 9}) {
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 320;
            AttnCase c(b, rng, s, T, start);
            EXPECT_LT(rel_err(c.dout.get(), c.ref, "attention"), 1e-5)
                << "hd " << hd << " ratio " << ratio << " W " << window << " start " << start << " T " << T;
            b.cpu->cache_write(c.k.data(), c.v.data(), c.hc, T, start, s);
            b.gpu->cache_write(c.dk.p, c.dv.p, KVLayer{c.dck.p, c.dcv.p}, T, start, s);
            EXPECT_EQ(c.dck.get(), c.ck);
            EXPECT_EQ(c.dcv.get(), c.cv);
            ++cases;
          }
  EXPECT_EQ(cases, 6 * 6 * 2 * 6 * 3);
}

// Chunks longer than one 64-query tile, with keys from the cache and from the chunk over several
// 64-key tiles, window edges inside tiles: the fp32 tiled kernel (1e-5) and the tensor-core one
// (half_precision: q, k, v and the probabilities rounded to fp16, so 3e-3) against the CPU.
TEST(CudaOps, PrefillAttentionTiles) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(31);
  int cases = 0;
  for (bool half : {false, true})
    for (int hd : {12, 64, 128})
      for (int ratio : {1, 4})
        for (int window : {0, 50})
          for (auto st : {std::pair<int64_t, int>{0, 130}, {77, 200}, {260, 70}}) {
            const int64_t start = st.first;
            const int T = st.second;
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 400;
            s.half_precision = half;
            AttnCase c(b, rng, s, T, start);
            EXPECT_LT(rel_err(c.dout.get(), c.ref, "prefill attention"), half ? 3e-3 : 1e-5)
                << "half " << half << " hd " << hd << " ratio " << ratio << " W " << window << " start " << start
                << " T " << T;
            ++cases;
          }
  EXPECT_EQ(cases, 2 * 3 * 2 * 2 * 3);
}

// Whole models: CUDA logits close to the CPU's, greedy continuations identical. Prefill in chunks of 4
// runs the fp32 GEMV path (tight tolerance); chunks of 5 run cuBLAS with activations rounded to the
// weight dtype (tolerance by dtype).
void check_model(const std::string& dir, double tol, double gemm_tol, const LoadOptions& opt = LoadOptions(),
                 int steps = 30, DType kv = DType::F32, bool i8 = false) {
  auto model = Model::load(dir, opt);
  Backends b(i8);
  SessionOptions so, so4;
  so.chunk = 5;
  so4.chunk = 4;
  so.kv_dtype = so4.kv_dtype = kv;
  Session cpu(*model, *b.cpu, so), gpu(*model, *b.gpu, so), gpu4(*model, *b.gpu, so4);
  std::mt19937 rng(6);
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(int32_t(rng() % model->config().vocab_size));
  auto lc = cpu.feed(ids, true), lg = gpu.feed(ids, true), lg4 = gpu4.feed(ids, true);
  EXPECT_LT(rel_err(lg4, lc, "logits (gemv)"), tol) << dir;
  EXPECT_LT(rel_err(lg, lc, "logits (cublas)"), gemm_tol) << dir;
  std::vector<int32_t> gc, gg;
  std::vector<float> a = cpu.feed({ids[0]}), g = gpu.feed({ids[0]});
  for (int i = 0; i < steps; ++i) {
    gc.push_back(argmax(a.data(), int64_t(a.size())));
    gg.push_back(argmax(g.data(), int64_t(g.size())));
    a = cpu.feed({gc.back()});
    g = gpu.feed({gc.back()});  // teacher-forced on the CPU's ids so one near-tie cannot cascade
  }
  int same = 0;
  for (size_t i = 0; i < gc.size(); ++i) same += gc[i] == gg[i];
  EXPECT_EQ(same, int(gc.size())) << dir;
}

TEST(CudaModel, FixturesMatchCpu) {
  REQUIRE_GPU();
  for (const char* f : {"w8_gqa1_f32", "full_gqa2_tied_f32", "w16_gqa4_hd12_f32", "w8_gqa2_bf16", "native_w8_gqa2_f32"})
    check_model(testutil::source_path(std::string("models/fixtures/") + f), 1e-4,
                std::string(f).find("bf16") != std::string::npos ? 2e-2 : 1e-4);
}

TEST(CudaModel, Stories260KGreedyMatchesReference) {
  REQUIRE_GPU();
  const std::string dir = testutil::shared_data("models/stories260K");
  if (!testutil::exists(dir)) GTEST_SKIP() << "stories260K is not present";
  check_model(dir, 1e-4, 1e-4);
  json ref = json::parse(testutil::read_file(dir + "/reference/greedy_prompt_64.json"));
  auto model = Model::load(dir);
  auto tok = Tokenizer::load_dir(dir);
  auto gpu = make_cuda_backend(0);
  Session s(*model, *gpu, SessionOptions());
  GenerateParams gp;
  gp.sampler.temperature = 0;
  gp.ignore_eos = true;
  gp.max_tokens = 60;
  auto r = generate(s, *tok, ref["prompt_ids"].get<std::vector<int32_t>>(), gp);
  const auto want = ref["ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(r.ids, std::vector<int32_t>(want.begin() + 5, want.end()));
}

// Sampling on the device (Session::feed_sample: candidates found by the CUDA backend, the whole row
// only when they do not settle a draw) against the host sampler over the same CUDA logits (which the
// eager and graph paths give bit for bit): the same ids from the same seed, for a nucleus, top-k, min-p,
// a repetition penalty, a narrow nucleus, and pure temperature (which always takes the whole row); with the default
// candidates (all of the fixture's 128) and with 8 (the normaliser decides, or the whole row comes over).
TEST(CudaModel, DeviceSamplingEqualsHostSampling) {
  REQUIRE_GPU();
  auto model = Model::load(testutil::source_path("models/fixtures/w8_gqa2_bf16"));
  auto gpu = make_cuda_backend(0);
  const int64_t V = model->config().vocab_size;
  std::vector<SamplerParams> ps(6);
  ps[0].temperature = 0.8f, ps[0].top_p = 0.9f;
  ps[1].temperature = 1.0f, ps[1].top_k = 7, ps[1].top_p = 1.0f;
  ps[2].temperature = 0.6f, ps[2].min_p = 0.1f, ps[2].top_p = 1.0f;
  ps[3].temperature = 0.9f, ps[3].repeat_penalty = 1.3f;
  ps[4].temperature = 1.2f, ps[4].top_p = 1.0f;
  ps[5].temperature = 0.5f, ps[5].top_p = 0.3f;  // a nucleus 8 candidates can hold
  for (size_t c = 0; c < 2 * ps.size(); ++c) {
    SamplerParams p = ps[c % ps.size()];
    p.seed = 100 + c;
    SessionOptions dev_opt;
    if (c >= ps.size()) dev_opt.sample_candidates = 8;
    Session host(*model, *gpu, SessionOptions()), dev(*model, *gpu, dev_opt);
    Sampler hs(p), ds(p);
    std::vector<int32_t> hist = {1, 5, 9, 5};
    std::vector<float> l = host.feed(hist);
    int32_t got = dev.feed_sample(hist, ds, hist);
    for (int step = 0; step < 40; ++step) {
      const int32_t want = hs.sample(l.data(), V, hist);
      ASSERT_EQ(got, want) << "case " << c << " step " << step;
      hist.push_back(want);
      l = host.feed({want});
      got = dev.feed_sample({want}, ds, hist);
    }
  }
}

// Quantized models (--quant int8 / nf4 / int4, and lm_head quantized too): CUDA against the CPU on the
// same quantized weights. Greedy decoding (teacher-forced on the CPU's ids, so every one of the 32 steps
// compares the argmax after the same prefix: equal at each step means the free-running greedy sequences
// are equal) and prefill logits: the GEMV path (chunks of 4) in fp32 like the CPU; the cuBLAS path
// (chunks of 5) with fp16 weights and activations, which a CPU emulation of that rounding puts at a
// relative logits error of 2e-4 to 3e-4 for stories260K and about 1.2e-3 for the random fixtures.
TEST(CudaModel, QuantizedMatchesCpu) {
  REQUIRE_GPU();
  const std::string dir = testutil::shared_data("models/stories260K");
  std::vector<std::string> dirs = {testutil::source_path("models/fixtures/w8_gqa2_bf16"),
                                   testutil::source_path("models/fixtures/native_w8_gqa2_f32")};
  if (testutil::exists(dir)) dirs.insert(dirs.begin(), dir);
  else std::fprintf(stderr, "stories260K is not present: quantized fixtures only\n");
  for (const std::string& d : dirs)
    for (Quant q : {Quant::Int8, Quant::NF4, Quant::Int4})
      for (bool lm_head : {false, true}) {
        SCOPED_TRACE(d + " --quant " + quant_name(q) + (lm_head ? " --quant-lm-head" : ""));
        LoadOptions o;
        o.quant = q;
        o.quant_lm_head = lm_head;
        check_model(d, 1e-4, 5e-3, o, 32);
      }
}

// The same with int8 activations on both backends (MISTRAL_CUDA_QUANT_I8=1 against the CPU's int8 path,
// the same arithmetic): the GEMV path to 2e-3 (the two backends' x may differ in their last bits, so that
// a rounding to int8 may flip), the cuBLAS prefill (fp16 weights and activations, not the int8 path)
// against the CPU's int8 activations to 2e-2; greedy ids equal.
TEST(CudaModel, QuantizedInt8ActivationsMatchCpu) {
  REQUIRE_GPU();
  const std::string dir = testutil::shared_data("models/stories260K");
  std::vector<std::string> dirs = {testutil::source_path("models/fixtures/w8_gqa2_bf16")};
  if (testutil::exists(dir)) dirs.insert(dirs.begin(), dir);
  for (const std::string& d : dirs)
    for (Quant q : {Quant::Int8, Quant::Int4}) {
      SCOPED_TRACE(d + " --quant " + quant_name(q));
      LoadOptions o;
      o.quant = q;
      o.quant_lm_head = true;
      check_model(d, 2e-3, 2e-2, o, 32, DType::F32, true);
    }
}

}  // namespace

namespace {

// Recorded decode graphs replay exactly what the eager path computes, across window wrap-around and
// with two sequences (two graphs) interleaved; full-precision and quantized weights.
TEST(CudaModel, GraphEqualsEager) {
  REQUIRE_GPU();
  const std::pair<const char*, Quant> cases[] = {{"w8_gqa1_f32", Quant::None},
                                                 {"w8_gqa2_bf16", Quant::None},
                                                 {"full_gqa2_tied_f32", Quant::None},
                                                 {"w8_gqa2_bf16", Quant::Int4},
                                                 {"full_gqa2_tied_f32", Quant::NF4},
                                                 {"w8_gqa1_f32", Quant::Int8}};
  for (const auto& [f, q] : cases) {
    LoadOptions lo;
    lo.quant = q;
    lo.quant_lm_head = q != Quant::None;
    SCOPED_TRACE(std::string(f) + " --quant " + quant_name(q));
    auto model = Model::load(testutil::source_path(std::string("models/fixtures/") + f), lo);
    auto gpu = make_cuda_backend(0);
    SessionOptions eager_o, graph_o;
    eager_o.graphs = false;
    graph_o.graphs = true;
    Session e1(*model, *gpu, eager_o), g1(*model, *gpu, graph_o), g2(*model, *gpu, graph_o);
    std::mt19937 rng(9);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 5; ++i) prompt.push_back(int32_t(rng() % model->config().vocab_size));
    auto le = e1.feed(prompt), lg = g1.feed(prompt);
    g2.feed(prompt);
    for (int step = 0; step < 30; ++step) {
      if (step == 12) {  // a multi-token chunk in the middle: larger scratch, graphs reset
        std::vector<int32_t> chunk(7);
        for (auto& x : chunk) x = int32_t(rng() % model->config().vocab_size);
        le = e1.feed(chunk);
        lg = g1.feed(chunk);
        g2.feed(chunk);
        ASSERT_EQ(lg, le) << f;
      }
      const int32_t id = argmax(le.data(), int64_t(le.size()));
      le = e1.feed({id});
      lg = g1.feed({id});
      auto l2 = g2.feed({id});
      ASSERT_EQ(lg, le) << f << " step " << step;
      ASSERT_EQ(l2, le) << f << " step " << step;
    }
  }
}

}  // namespace

namespace {

// The split-KV decode kernel (T = 1) at long contexts: many splits, window wrap, Mistral-7B's
// head layout (32 query heads on 8 KV heads, head_dim 128) and a group of 8.
TEST(CudaOps, DecodeAttentionLongContext) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(10);
  for (int window : {0, 4096})
    for (int ratio : {4, 8})
      for (int64_t start : {int64_t(1), int64_t(100), int64_t(1000), int64_t(4095), int64_t(4096), int64_t(5000),
                            int64_t(9000)}) {
        AttnShape s;
        s.n_kv_heads = 8 / (ratio / 4), s.n_heads = s.n_kv_heads * ratio, s.head_dim = 128, s.window = window;
        s.slots = window > 0 ? window : 10000;
        const size_t cache_n = size_t(s.slots) * s.kv_dim();
        auto ck = randn(cache_n, rng), cv = randn(cache_n, rng);
        auto q = randn(size_t(s.q_dim()), rng, 0.3f), k = randn(size_t(s.kv_dim()), rng), v = randn(size_t(s.kv_dim()), rng);
        std::vector<float> ref(q.size());
        KVLayer hc{ck.data(), cv.data()};
        b.cpu->attention(q.data(), k.data(), v.data(), hc, 1, start, s, ref.data());
        Dev dq(*b.gpu, q), dk(*b.gpu, k), dv(*b.gpu, v), dck(*b.gpu, ck), dcv(*b.gpu, cv), dout(*b.gpu, q.size());
        KVLayer gc{dck.p, dcv.p};
        b.gpu->attention(dq.p, dk.p, dv.p, gc, 1, start, s, dout.p);
        EXPECT_LT(rel_err(dout.get(), ref, "decode attention"), 1e-5)
            << "W " << window << " ratio " << ratio << " start " << start;
      }
}

}  // namespace

namespace {

// Elements whose bits differ (the first few reported as failures).
size_t bit_mismatches(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
    if (std::memcmp(&got[i], &want[i], 4) != 0 && bad++ < 3)
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", expected " << want[i];
  return bad;
}

// An fp16 KV cache (AttnShape::kv_half) on both backends: the CPU's is the reference. RoPE + cache write
// store the same fp16 bits (values past 65504 saturate on both); attention reads them, and the chunk's own
// K/V rounded the same way: the fp32 kernels and the split-KV decode kernel within 1e-5 of the CPU, the
// tensor-core prefill kernels (half_precision, T > 4) within 3e-3 as over fp32 caches.
TEST(CudaOps, HalfKvCacheAttention) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(41);
  int cases = 0;
  for (bool half : {false, true})
    for (int hd : {10, 12, 64, 128, 160, 256})  // not a multiple of 4; one and two 128-dim pieces a row
      for (int ratio : {1, 3, 4, 8})
        for (int window : {0, 50})
          for (auto st : {std::pair<int64_t, int>{0, 1}, {13, 1}, {300, 1}, {4, 3}, {77, 9}, {260, 130}, {0, 70}}) {
            const int64_t start = st.first;
            const int T = st.second;
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 400;
            s.half_precision = half;
            s.kv_half = true;
            s.rope_theta = 1e6f;
            const size_t cn = size_t(s.slots) * s.kv_dim();  // even: kv_dim is
            std::vector<uint16_t> ck(cn), cv(cn);
            for (size_t i = 0; i < cn; ++i) {
              std::normal_distribution<float> nd(0.f, 1.f);
              ck[i] = f32_to_f16_sat(nd(rng)), cv[i] = f32_to_f16_sat(nd(rng));
            }
            std::vector<float> q = randn(size_t(T) * s.q_dim(), rng), k = randn(size_t(T) * s.kv_dim(), rng),
                               v = randn(k.size(), rng), ref(q.size());
            k[0] = 1e6f, v[v.size() - 1] = -1e6f;  // saturate when stored
            auto dev16 = [&](const std::vector<uint16_t>& h) {
              std::vector<float> words(h.size() / 2);
              std::memcpy(words.data(), h.data(), h.size() * 2);
              return words;
            };
            auto host16 = [](const std::vector<float>& words) {
              std::vector<uint16_t> h(words.size() * 2);
              std::memcpy(h.data(), words.data(), h.size() * 2);
              return h;
            };
            Dev dq(*b.gpu, q), dk(*b.gpu, k), dv(*b.gpu, v), dck(*b.gpu, dev16(ck)), dcv(*b.gpu, dev16(cv)),
                dout(*b.gpu, q.size());
            const std::string what = "half " + std::to_string(half) + " hd " + std::to_string(hd) + " ratio " +
                                     std::to_string(ratio) + " W " + std::to_string(window) + " start " +
                                     std::to_string(start) + " T " + std::to_string(T);
            // The chunk's attention (before its rows are stored), then RoPE + cache write.
            b.cpu->attention(q.data(), k.data(), v.data(), KVLayer{ck.data(), cv.data()}, T, start, s, ref.data());
            b.gpu->attention(dq.p, dk.p, dv.p, KVLayer{dck.p, dcv.p}, T, start, s, dout.p);
            EXPECT_LT(rel_err(dout.get(), ref, "attention over an fp16 cache"), half && T > 4 ? 3e-3 : 1e-5) << what;
            b.cpu->rope_cache_write(q.data(), k.data(), v.data(), KVLayer{ck.data(), cv.data()}, T, start, s);
            b.gpu->rope_cache_write(dq.p, dk.p, dv.p, KVLayer{dck.p, dcv.p}, T, start, s);
            EXPECT_EQ(bit_mismatches(dq.get(), q, "rotated q " + what), 0u);
            EXPECT_EQ(bit_mismatches(dk.get(), k, "rotated k " + what), 0u);
            EXPECT_TRUE(host16(dck.get()) == ck) << "fp16 cache k bits differ: " << what;
            EXPECT_TRUE(host16(dcv.get()) == cv) << "fp16 cache v bits differ: " << what;
            // The unfused write too.
            b.cpu->cache_write(v.data(), k.data(), KVLayer{ck.data(), cv.data()}, T, start, s);
            b.gpu->cache_write(dv.p, dk.p, KVLayer{dck.p, dcv.p}, T, start, s);
            EXPECT_TRUE(host16(dck.get()) == ck && host16(dcv.get()) == cv) << "cache_write bits differ: " << what;
            ++cases;
          }
  EXPECT_EQ(cases, 2 * 6 * 4 * 2 * 7);
}

// The RoPE fold (MISTRAL_CUDA_DECODE_ROPE=1, an experiment): a decode step's RoPE and cache write done by
// the split-KV attention kernel. Against the same GPU's rope_cache_write + attention: the output and both
// caches bit for bit, over fp32 and fp16 caches, head sizes 12 / 64 / 128, groups 1, 3, 4, 8, windows
// (the cache a window long, rows wrapping) and positions from 0 to past the window. The fold leaves q as
// it was (the composition rotates it in place): the check that it ran.
TEST(CudaOps, DecodeRopeFold) {
  REQUIRE_GPU();
  Backends b;
  auto fold = cuda_backend_with({{"MISTRAL_CUDA_DECODE_ROPE", "1"}});
  std::mt19937 rng(47);
  int cases = 0;
  for (bool kv_half : {false, true})
    for (int hd : {12, 64, 128})
      for (int ratio : {1, 3, 4, 8})
        for (int window : {0, 50})
          for (int64_t start : {0, 13, 49, 50, 300}) {
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 400;
            s.kv_half = kv_half;
            s.rope_theta = 1e6f;
            const std::string what = std::string(kv_half ? "fp16" : "fp32") + " cache, hd " + std::to_string(hd) +
                                     " ratio " + std::to_string(ratio) + " W " + std::to_string(window) + " start " +
                                     std::to_string(start);
            ASSERT_TRUE(cache_write_before_attention_ok(1, start, s)) << what;
            // Cache words: fp32 values, or two fp16 values a word.
            const size_t words = size_t(s.slots) * s.kv_dim() / (kv_half ? 2 : 1);
            std::vector<float> ck(words), cv(words);
            for (size_t i = 0; i < words; ++i) {
              std::normal_distribution<float> nd(0.f, 1.f);
              if (kv_half) {
                const uint32_t a = f32_to_f16(nd(rng)), bb = f32_to_f16(nd(rng)), c = f32_to_f16(nd(rng)),
                               d = f32_to_f16(nd(rng));
                const uint32_t wk = a | bb << 16, wv = c | d << 16;
                std::memcpy(&ck[i], &wk, 4), std::memcpy(&cv[i], &wv, 4);
              } else {
                ck[i] = nd(rng), cv[i] = nd(rng);
              }
            }
            const std::vector<float> q = randn(size_t(s.q_dim()), rng), k = randn(size_t(s.kv_dim()), rng),
                                     v = randn(size_t(s.kv_dim()), rng);
            auto run = [&](Backend& be, std::vector<float>* out, std::vector<float>* kc, std::vector<float>* vc,
                           std::vector<float>* qa) {
              Dev dq(be, q), dk(be, k), dv(be, v), dck(be, ck), dcv(be, cv), dout(be, q.size());
              be.rope_attend(dq.p, dk.p, dv.p, KVLayer{dck.p, dcv.p}, 1, start, s, dout.p);
              *out = dout.get(), *kc = dck.get(), *vc = dcv.get(), *qa = dq.get();
            };
            std::vector<float> o1, k1, v1, q1, o2, k2, v2, q2;
            run(*b.gpu, &o1, &k1, &v1, &q1);
            run(*fold, &o2, &k2, &v2, &q2);
            EXPECT_EQ(bit_mismatches(o2, o1, "output " + what), 0u);
            EXPECT_EQ(bit_mismatches(k2, k1, "K cache " + what), 0u);
            EXPECT_EQ(bit_mismatches(v2, v1, "V cache " + what), 0u);
            EXPECT_EQ(bit_mismatches(q2, q, "q after the fold " + what), 0u);  // the fold ran
            if (start > 0) EXPECT_NE(std::memcmp(q1.data(), q.data(), q.size() * 4), 0) << "q not rotated: " << what;
            ++cases;
          }
  EXPECT_EQ(cases, 2 * 3 * 4 * 2 * 5);
}

// Whole models over an fp16 KV cache: CUDA against the CPU's fp16 cache (eager prefill, recorded decode
// steps), as check_model does for fp32 caches.
// The tolerance of the fp32 paths is fp16's unit roundoff (2^-11) rather than 1e-4: a key or value that
// differs in its last fp32 bits between the backends can round to neighbouring fp16 values (the first H200
// run measured 1.02e-4 for stories260K's cuBLAS path).
TEST(CudaModel, HalfKvCacheMatchesCpu) {
  REQUIRE_GPU();
  const double tol = 1.0 / 2048;
  for (const char* f : {"w8_gqa1_f32", "full_gqa2_tied_f32", "w16_gqa4_hd12_f32", "w8_gqa2_bf16", "native_w8_gqa2_f32"})
    check_model(testutil::source_path(std::string("models/fixtures/") + f), tol,
                std::string(f).find("bf16") != std::string::npos ? 2e-2 : tol, LoadOptions(), 30, DType::F16);
  const std::string dir = testutil::shared_data("models/stories260K");
  if (testutil::exists(dir)) check_model(dir, tol, tol, LoadOptions(), 30, DType::F16);
}

// A host weight of any dtype (quantized ones through quantize_matrix), kept alive by b.
const Weight& host_weight(Backends& b, const std::vector<float>& v, int64_t rows, int64_t cols, DType t) {
  return is_quantized(t) ? b.quant(v, rows, cols, t).w : b.weight(v, rows, cols, t).w;
}

// Several products of one input in a launch (q, k, v; gate, up): each bit for bit what matmul gives
// alone, and for T > 4 (cuBLAS, one product at a time) too; quantized weights as well.
TEST(CudaOps, MatmulMulti) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(41);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8, DType::NF4, DType::Q4})
    for (int K : {100, 4096})
      for (int T : {1, 2, 3, 4, 5}) {
        const int N[3] = {257, 33, 8};
        auto x = randn(size_t(T) * K, rng);
        Dev dx(*b.gpu, x);
        Weight w[3];
        const Weight* wp[3];
        std::vector<std::unique_ptr<Dev>> multi, single;
        float* out[3];
        for (int i = 0; i < 3; ++i) {
          w[i] = b.gpu->place_weight(host_weight(b, randn(size_t(N[i]) * K, rng, 0.05f), N[i], K, t));
          wp[i] = &w[i];
          multi.emplace_back(new Dev(*b.gpu, size_t(T) * N[i]));
          single.emplace_back(new Dev(*b.gpu, size_t(T) * N[i]));
          out[i] = multi.back()->p;
        }
        b.gpu->matmul_multi(dx.p, T, wp, out, 3);
        for (int i = 0; i < 3; ++i) {
          b.gpu->matmul(dx.p, T, w[i], single[size_t(i)]->p);
          EXPECT_EQ(bit_mismatches(multi[size_t(i)]->get(), single[size_t(i)]->get(), "matmul_multi"), 0u)
              << dtype_name(t) << " K " << K << " T " << T << " part " << i;
        }
      }
}

// Gate, up and SwiGLU of a decode step in one launch: bit for bit the two matmuls and swiglu, for
// every weight dtype (quantized ones too), and for T > 4 (the separate path) too.
TEST(CudaOps, MatmulSwiglu) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(43);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8, DType::NF4, DType::Q4})
    for (int K : {100, 4096})
      for (int T : {1, 2, 3, 4, 5}) {
        const int N = 301;
        auto x = randn(size_t(T) * K, rng);
        const Weight wg = b.gpu->place_weight(host_weight(b, randn(size_t(N) * K, rng, 0.05f), N, K, t));
        const Weight wu = b.gpu->place_weight(host_weight(b, randn(size_t(N) * K, rng, 0.05f), N, K, t));
        Dev dx(*b.gpu, x), g1(*b.gpu, size_t(T) * N), u1(*b.gpu, size_t(T) * N), g2(*b.gpu, size_t(T) * N),
            u2(*b.gpu, size_t(T) * N);
        b.gpu->matmul_swiglu(dx.p, T, wg, wu, g1.p, u1.p);
        b.gpu->matmul(dx.p, T, wg, g2.p);
        b.gpu->matmul(dx.p, T, wu, u2.p);
        b.gpu->swiglu(g2.p, u2.p, size_t(T) * N, g2.p);
        EXPECT_EQ(bit_mismatches(g1.get(), g2.get(), "matmul_swiglu"), 0u) << dtype_name(t) << " K " << K << " T " << T;
      }
}

// Records `ops` as a decode-step graph while the step position reads capture_pos, then replays it once with
// the step position set to replay_pos, and waits. Every buffer must exist before (no allocation inside a
// capture); ops that take a position must follow the device-side one.
template <class F>
void run_captured(Backend& gpu, uint64_t key, int64_t capture_pos, int64_t replay_pos, F&& ops) {
  gpu.set_step_inputs(0, capture_pos);
  gpu.graph_capture_begin();
  try {
    ops();
  } catch (...) {
    gpu.graph_capture_abort();
    throw;
  }
  gpu.graph_capture_end(key);
  gpu.set_step_inputs(0, replay_pos);
  const bool launched = gpu.graph_launch(key);
  gpu.synchronize();
  gpu.graph_forget(key);
  EXPECT_TRUE(launched) << "graph " << key;
}

// Residual add fused with RMSNorm: x exact (fp32 adds), y as close to the CPU as rmsnorm alone; bit for bit
// the unfused CUDA add + rmsnorm; y aliasing delta (as the forward pass calls it) inside a recorded graph.
TEST(CudaOps, AddRmsNormFused) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(13);
  uint64_t key = uint64_t(1) << 40;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int D : {8, 100, 4096, 5003})
      for (int T : {1, 3, 17, 45}) {
        const std::string what = std::string(dtype_name(t)) + " D " + std::to_string(D) + " T " + std::to_string(T);
        const auto x = randn(size_t(T) * D, rng, 3.0f), d = randn(size_t(T) * D, rng, 3.0f);
        HostWeight& w = b.weight(randn(size_t(D), rng), 1, D, t);
        const Weight dw = b.gpu->place_weight(w.w);
        std::vector<float> xr = x, yr(x.size());
        b.cpu->add_rmsnorm(xr.data(), d.data(), w.w, 1e-5f, T, yr.data());
        Dev x1(*b.gpu, x), d1(*b.gpu, d), y1(*b.gpu, x.size());
        b.gpu->add_rmsnorm(x1.p, d1.p, dw, 1e-5f, T, y1.p);
        Dev x2(*b.gpu, x), d2(*b.gpu, d), y2(*b.gpu, x.size());
        b.gpu->add(x2.p, d2.p, x.size());
        b.gpu->rmsnorm(x2.p, dw, 1e-5f, T, y2.p);
        Dev x3(*b.gpu, x), d3(*b.gpu, d);
        run_captured(*b.gpu, key++, 0, 0, [&] { b.gpu->add_rmsnorm(x3.p, d3.p, dw, 1e-5f, T, d3.p); });
        const std::vector<float> gx = x1.get(), gy = y1.get();
        EXPECT_EQ(bit_mismatches(gx, xr, "x vs CPU " + what), 0u);
        EXPECT_LT(rel_err(gy, yr, "add_rmsnorm"), 1e-6) << what;
        EXPECT_EQ(bit_mismatches(x2.get(), gx, "x unfused " + what), 0u);
        EXPECT_EQ(bit_mismatches(y2.get(), gy, "y unfused " + what), 0u);
        EXPECT_EQ(bit_mismatches(x3.get(), gx, "x graph " + what), 0u);
        EXPECT_EQ(bit_mismatches(d3.get(), gy, "y=delta graph " + what), 0u);
      }
}

// RoPE fused with the cache write against the CPU's rope + cache_write (q, k and the cache within rope's
// tolerance, V rows exact, untouched cache rows unchanged), bit for bit the unfused CUDA rope +
// cache_write, and recorded in a graph at a wrong host position then replayed at the right device-side
// one. Full cache and a rolling one of 16 slots: chunks that wrap it and chunks longer than it (T 37).
TEST(CudaOps, RopeCacheWriteFused) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(14);
  uint64_t key = uint64_t(2) << 40;
  int cases = 0;
  for (int hd : {64, 128})
    for (int ratio : {1, 2, 4, 8})
      for (int window : {0, 16})
        for (int64_t start : {int64_t(0), int64_t(5), int64_t(13), int64_t(40), int64_t(1000)})
          for (int T : {1, 3, 17, 37}) {
            AttnShape s;
            s.n_kv_heads = 2, s.n_heads = 2 * ratio, s.head_dim = hd, s.window = window;
            s.slots = window > 0 ? window : 1040;
            s.rope_theta = hd == 64 ? 1e4f : 1e6f;
            const std::string what = "hd " + std::to_string(hd) + " ratio " + std::to_string(ratio) + " W " +
                                     std::to_string(window) + " start " + std::to_string(start) + " T " +
                                     std::to_string(T);
            const size_t cn = size_t(s.slots) * s.kv_dim();
            const auto q = randn(size_t(T) * s.q_dim(), rng), k = randn(size_t(T) * s.kv_dim(), rng),
                       v = randn(size_t(T) * s.kv_dim(), rng), ck = randn(cn, rng), cv = randn(cn, rng);
            std::vector<float> qr = q, kr = k, ckr = ck, cvr = cv;
            b.cpu->rope_cache_write(qr.data(), kr.data(), v.data(), KVLayer{ckr.data(), cvr.data()}, T, start, s);

            Dev q1(*b.gpu, q), k1(*b.gpu, k), v1(*b.gpu, v), ck1(*b.gpu, ck), cv1(*b.gpu, cv);
            b.gpu->rope_cache_write(q1.p, k1.p, v1.p, KVLayer{ck1.p, cv1.p}, T, start, s);
            Dev q2(*b.gpu, q), k2(*b.gpu, k), v2(*b.gpu, v), ck2(*b.gpu, ck), cv2(*b.gpu, cv);
            b.gpu->rope(q2.p, k2.p, T, start, s);
            b.gpu->cache_write(k2.p, v2.p, KVLayer{ck2.p, cv2.p}, T, start, s);
            Dev q3(*b.gpu, q), k3(*b.gpu, k), v3(*b.gpu, v), ck3(*b.gpu, ck), cv3(*b.gpu, cv);
            run_captured(*b.gpu, key++, start + 7, start, [&] {
              b.gpu->rope_cache_write(q3.p, k3.p, v3.p, KVLayer{ck3.p, cv3.p}, T, start + 7, s);
            });

            const std::vector<float> gq = q1.get(), gk = k1.get(), gck = ck1.get(), gcv = cv1.get();
            EXPECT_LT(rel_err(gq, qr, "rope_cache_write q"), 1e-6) << what;
            EXPECT_LT(rel_err(gk, kr, "rope_cache_write k"), 1e-6) << what;
            EXPECT_LT(rel_err(gck, ckr, "rope_cache_write cache k"), 1e-6) << what;
            EXPECT_EQ(bit_mismatches(gcv, cvr, "cache v vs CPU " + what), 0u);
            // Cache rows the chunk does not write keep their bits.
            std::vector<bool> written(size_t(s.slots), false);
            for (int64_t t = std::max<int64_t>(0, T - s.slots); t < T; ++t)
              written[size_t((start + t) % s.slots)] = true;
            size_t kept_bad = 0;
            for (int64_t r = 0; r < s.slots; ++r)
              if (!written[size_t(r)])
                kept_bad += std::memcmp(&gck[size_t(r) * s.kv_dim()], &ck[size_t(r) * s.kv_dim()],
                                        size_t(s.kv_dim()) * 4) != 0;
            EXPECT_EQ(kept_bad, 0u) << "rows the chunk does not own changed: " << what;

            EXPECT_EQ(bit_mismatches(q2.get(), gq, "q unfused " + what), 0u);
            EXPECT_EQ(bit_mismatches(k2.get(), gk, "k unfused " + what), 0u);
            EXPECT_EQ(bit_mismatches(ck2.get(), gck, "cache k unfused " + what), 0u);
            EXPECT_EQ(bit_mismatches(cv2.get(), gcv, "cache v unfused " + what), 0u);
            EXPECT_EQ(bit_mismatches(q3.get(), gq, "q graph " + what), 0u);
            EXPECT_EQ(bit_mismatches(k3.get(), gk, "k graph " + what), 0u);
            EXPECT_EQ(bit_mismatches(ck3.get(), gck, "cache k graph " + what), 0u);
            EXPECT_EQ(bit_mismatches(cv3.get(), gcv, "cache v graph " + what), 0u);
            ++cases;
          }
  EXPECT_EQ(cases, 2 * 4 * 2 * 5 * 4);
}

// The forward pass with fused ops gives the logits of the unfused sequence bit for bit on the GPU: prefill
// in chunks on the GEMV path (1, 4) and on cuBLAS (5, 19; with windows of 8 and 16 these wrap the cache and
// fall back to attending first), then decode steps recorded as graphs. Without the folded norms
// (MISTRAL_CUDA_FUSED_NORM, whose sums of squares round differently: CudaOps.FusedNormMatmul), which
// gpu-check's fused phase sets for the whole suite; the RoPE fold gives the same bits and stays as set.
TEST(CudaModel, FusedEqualsUnfused) {
  REQUIRE_GPU();
  for (const char* f :
       {"w8_gqa1_f32", "full_gqa2_tied_f32", "w16_gqa4_hd12_f32", "w8_gqa2_bf16", "native_w8_gqa2_f32"}) {
    auto model = Model::load(testutil::source_path(std::string("models/fixtures/") + f));
    auto gpu = cuda_backend_with({{"MISTRAL_CUDA_FUSED_NORM", nullptr}});
    std::mt19937 rng(15);
    std::vector<int32_t> ids;
    for (int i = 0; i < 40; ++i) ids.push_back(int32_t(rng() % model->config().vocab_size));
    for (int chunk : {1, 4, 5, 19}) {
      const std::string what = std::string(f) + " chunk " + std::to_string(chunk);
      SessionOptions fo, uo;
      fo.chunk = uo.chunk = chunk;
      uo.fused = false;
      Session a(*model, *gpu, fo), u(*model, *gpu, uo);
      std::vector<float> la = a.feed(ids, true), lu = u.feed(ids, true);
      ASSERT_EQ(bit_mismatches(la, lu, "prefill " + what), 0u);
      const size_t V = size_t(model->config().vocab_size);
      for (int step = 0; step < 12; ++step) {
        const int32_t id = argmax(la.data() + (la.size() - V), int64_t(V));
        la = a.feed({id});
        lu = u.feed({id});
        ASSERT_EQ(bit_mismatches(la, lu, "decode step " + std::to_string(step) + " " + what), 0u);
      }
    }
  }
}

}  // namespace

namespace {

// One batched decode step's inputs: n rows, each with its own cache (slot count: the window, or any size
// of a full-attention cache) and position; the caches lie one after another in ck/cv.
struct RowsCase {
  AttnShape s;
  int n = 0;
  std::vector<int64_t> pos, slots;
  std::vector<size_t> off;  // row i's cache starts at float off[i] of ck and cv
  std::vector<float> ck, cv, q, k, v;
  size_t qd() const { return size_t(s.q_dim()); }
  size_t kvd() const { return size_t(s.kv_dim()); }
  // The rows' table over caches at ck_base / cv_base (host or device copies of ck, cv).
  std::vector<DecodeRow> rows(float* ck_base, float* cv_base) const {
    std::vector<DecodeRow> r(pos.size());
    for (size_t i = 0; i < r.size(); ++i) {
      r[i].cache = KVLayer{ck_base + off[i], cv_base + off[i]};
      r[i].pos = pos[i];
      r[i].slots = slots[i];
    }
    return r;
  }
};

// Windowed caches hold W slots and positions 0 .. 3W-1 (the window full, then wrapped); full caches hold
// 1 .. 600 slots and any position below that (several KV splits per row at the longer ones).
RowsCase make_rows_case(std::mt19937& rng, int n, int hd, int ratio, int window) {
  RowsCase c;
  c.s.n_kv_heads = 2, c.s.n_heads = 2 * ratio, c.s.head_dim = hd, c.s.window = window;
  c.s.rope_theta = hd == 64 ? 1e4f : 1e6f;
  c.s.slots = 0;  // decode_rows reads each row's own
  c.n = n;
  size_t total = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t slots = window > 0 ? window : 1 + int64_t(rng() % 600);
    c.slots.push_back(slots);
    c.pos.push_back(int64_t(rng() % uint32_t(window > 0 ? 3 * window : slots)));
    c.off.push_back(total);
    total += size_t(slots) * c.kvd();
  }
  c.ck = randn(total, rng), c.cv = randn(total, rng);
  c.q = randn(size_t(n) * c.qd(), rng), c.k = randn(size_t(n) * c.kvd(), rng), c.v = randn(size_t(n) * c.kvd(), rng);
  return c;
}

// Cache rows that the step does not write (every slot but pos % slots of each row) keep their bits.
size_t rows_changed_elsewhere(const RowsCase& c, const std::vector<float>& ck, const std::vector<float>& cv) {
  size_t bad = 0;
  const size_t kvd = c.kvd();
  for (int i = 0; i < c.n; ++i)
    for (int64_t r = 0; r < c.slots[size_t(i)]; ++r) {
      if (r == c.pos[size_t(i)] % c.slots[size_t(i)]) continue;
      const size_t o = c.off[size_t(i)] + size_t(r) * kvd;
      bad += std::memcmp(&ck[o], &c.ck[o], kvd * 4) != 0 || std::memcmp(&cv[o], &c.cv[o], kvd * 4) != 0;
    }
  return bad;
}

// decode_rows on CUDA (the batched kernels: one RoPE + cache-write launch, one split-KV attention) against
// the CPU's default (the per-row ops) over randomized steps: 1 .. 70 rows, each with its own cache length,
// windowed (W 16 and 200) and full caches, GQA 1/2/4/8, head_dim 64 and 128. q, k and the cache K rows
// within RoPE's tolerance, V rows exact, other cache rows untouched, outputs within attention's tolerance;
// RoPE and the stores bit for bit the per-row CUDA path's (they share its code), attention close to it
// (another split plan). Every third case also runs the unfused order (fused = false: the per-row ops).
TEST(CudaOps, DecodeRows) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(16);
  const int ns[] = {1, 2, 70, 5, 33, 64, 17, 3};
  int cases = 0;
  for (int hd : {64, 128})
    for (int ratio : {1, 2, 4, 6, 8})
      for (int window : {0, 16, 200}) {
        const int n = ns[cases % 8];
        const RowsCase c = make_rows_case(rng, n, hd, ratio, window);
        const std::string what = "n " + std::to_string(n) + " hd " + std::to_string(hd) + " ratio " +
                                 std::to_string(ratio) + " W " + std::to_string(window);
        const size_t qd = c.qd(), kvd = c.kvd();
        std::vector<float> q = c.q, k = c.k, ck = c.ck, cv = c.cv, ref(size_t(n) * qd);
        b.cpu->decode_rows(q.data(), k.data(), c.v.data(), c.rows(ck.data(), cv.data()).data(), n, c.s, true,
                           ref.data());

        Dev q1(*b.gpu, c.q), k1(*b.gpu, c.k), v1(*b.gpu, c.v), ck1(*b.gpu, c.ck), cv1(*b.gpu, c.cv),
            o1(*b.gpu, ref.size());
        b.gpu->decode_rows(q1.p, k1.p, v1.p, c.rows(ck1.p, cv1.p).data(), n, c.s, true, o1.p);
        Dev q2(*b.gpu, c.q), k2(*b.gpu, c.k), v2(*b.gpu, c.v), ck2(*b.gpu, c.ck), cv2(*b.gpu, c.cv),
            o2(*b.gpu, ref.size());
        for (int i = 0; i < n; ++i) {
          AttnShape sh = c.s;
          sh.slots = c.slots[size_t(i)];
          const size_t r = size_t(i);
          b.gpu->attend_chunk(q2.p + r * qd, k2.p + r * kvd, v2.p + r * kvd,
                              KVLayer{ck2.p + c.off[r], cv2.p + c.off[r]}, 1, c.pos[r], sh, true, o2.p + r * qd);
        }

        const std::vector<float> gq = q1.get(), gk = k1.get(), gck = ck1.get(), gcv = cv1.get(), go = o1.get();
        EXPECT_LT(rel_err(go, ref, "decode_rows out"), 1e-5) << what;
        EXPECT_LT(rel_err(gq, q, "decode_rows q"), 1e-6) << what;
        EXPECT_LT(rel_err(gk, k, "decode_rows k"), 1e-6) << what;
        EXPECT_LT(rel_err(gck, ck, "decode_rows cache k"), 1e-6) << what;
        EXPECT_EQ(bit_mismatches(gcv, cv, "cache v vs CPU " + what), 0u);
        EXPECT_EQ(rows_changed_elsewhere(c, gck, gcv), 0u) << "cache rows the step does not own changed: " << what;
        EXPECT_EQ(bit_mismatches(q2.get(), gq, "q per-row " + what), 0u);
        EXPECT_EQ(bit_mismatches(k2.get(), gk, "k per-row " + what), 0u);
        EXPECT_EQ(bit_mismatches(ck2.get(), gck, "cache k per-row " + what), 0u);
        EXPECT_EQ(bit_mismatches(cv2.get(), gcv, "cache v per-row " + what), 0u);
        EXPECT_LT(rel_err(go, o2.get(), "decode_rows vs per-row"), 1e-5) << what;

        if (cases % 3 == 0) {
          Dev q3(*b.gpu, c.q), k3(*b.gpu, c.k), v3(*b.gpu, c.v), ck3(*b.gpu, c.ck), cv3(*b.gpu, c.cv),
              o3(*b.gpu, ref.size());
          b.gpu->decode_rows(q3.p, k3.p, v3.p, c.rows(ck3.p, cv3.p).data(), n, c.s, false, o3.p);
          EXPECT_LT(rel_err(o3.get(), ref, "decode_rows unfused out"), 1e-5) << what;
          EXPECT_EQ(bit_mismatches(ck3.get(), gck, "cache k unfused " + what), 0u);
          EXPECT_EQ(bit_mismatches(cv3.get(), gcv, "cache v unfused " + what), 0u);
        }
        ++cases;
      }
  EXPECT_EQ(cases, 2 * 5 * 3);
}

// Batched steps queued back to back without a host synchronisation: the 64-slot staging ring wraps twice,
// every call's table differs (positions advance, the rows and their number change) and grows mid-stream
// (120 rows at steps 70 and 140); all 150 steps must equal the CPU's. Windowed (wrapping) and full caches.
TEST(CudaOps, DecodeRowsBackToBack) {
  REQUIRE_GPU();
  Backends b;
  std::mt19937 rng(17);
  for (int window : {0, 16}) {
    AttnShape s;
    s.n_kv_heads = 2, s.n_heads = 4, s.head_dim = 64, s.window = window, s.rope_theta = 1e4f;
    const int pool = 120, steps = 150;
    const int64_t slots = window > 0 ? window : 400;  // full: start < 200, at most 150 steps
    const size_t qd = size_t(s.q_dim()), kvd = size_t(s.kv_dim()), cache_n = size_t(slots) * kvd;
    std::vector<int64_t> pos(static_cast<size_t>(pool));
    for (auto& p : pos) p = int64_t(rng() % 200);
    std::vector<std::vector<int>> plan(static_cast<size_t>(steps));  // rows of each step (distinct)
    size_t total = 0;
    for (int st = 0; st < steps; ++st) {
      const int n = st == 70 || st == 140 ? pool : 2 + int(rng() % 8);
      for (int j = 0; j < n; ++j) plan[size_t(st)].push_back((st * 3 + j) % pool);
      total += size_t(n);
    }
    const auto q = randn(total * qd, rng), k = randn(total * kvd, rng), v = randn(total * kvd, rng);
    const auto ck = randn(size_t(pool) * cache_n, rng), cv = randn(size_t(pool) * cache_n, rng);
    std::vector<float> hq = q, hk = k, hck = ck, hcv = cv, ref(total * qd);
    Dev dq(*b.gpu, q), dk(*b.gpu, k), dv(*b.gpu, v), dck(*b.gpu, ck), dcv(*b.gpu, cv), dout(*b.gpu, ref.size());
    std::vector<int64_t> p = pos;
    size_t off = 0;
    for (int st = 0; st < steps; ++st) {
      const std::vector<int>& rows = plan[size_t(st)];
      std::vector<DecodeRow> hr(rows.size()), gr(rows.size());
      for (size_t j = 0; j < rows.size(); ++j) {
        const size_t c = size_t(rows[j]) * cache_n;
        hr[j].cache = KVLayer{hck.data() + c, hcv.data() + c};
        gr[j].cache = KVLayer{dck.p + c, dcv.p + c};
        hr[j].pos = gr[j].pos = p[size_t(rows[j])];
        hr[j].slots = gr[j].slots = slots;
        ++p[size_t(rows[j])];
      }
      const int n = int(rows.size());
      b.cpu->decode_rows(hq.data() + off * qd, hk.data() + off * kvd, v.data() + off * kvd, hr.data(), n, s, true,
                         ref.data() + off * qd);
      b.gpu->decode_rows(dq.p + off * qd, dk.p + off * kvd, dv.p + off * kvd, gr.data(), n, s, true, dout.p + off * qd);
      off += rows.size();
    }
    const std::string what = "W " + std::to_string(window);
    EXPECT_LT(rel_err(dout.get(), ref, "back-to-back out"), 1e-5) << what;
    EXPECT_LT(rel_err(dck.get(), hck, "back-to-back cache k"), 1e-6) << what;
    EXPECT_EQ(bit_mismatches(dcv.get(), hcv, "back-to-back cache v " + what), 0u);
  }
}

// A batched decode step of n sequences (one token each: decode_rows) against each sequence stepped alone
// (single-segment passes, replayed as recorded graphs) on the same GPU, 20 steps teacher-forced on the
// solo greedy ids, across window wrap-around and full caches of different lengths. n = 3 keeps the
// matmuls on the fp32 GEMV path (T <= 4), so only the attention's split plan differs; n = 11 runs them
// through cuBLAS (fp32 SGEMM, or activations rounded to bf16 for bf16 weights, with a wider tolerance
// than check_model's one-pass 2e-2 since rounding errors build up in the caches over the steps). Greedy ids must be equal; on that bf16 path only, they may differ at a near-tie of the
// solo logits (top two closer than 4x the tolerance times the logits' RMS).
TEST(CudaModel, BatchedDecodeEqualsSolo) {
  REQUIRE_GPU();
  for (const char* f : {"w8_gqa1_f32", "full_gqa2_tied_f32", "w16_gqa4_hd12_f32", "w8_gqa2_bf16", "native_w8_gqa2_f32"})
    for (int n : {3, 11})
      for (DType kv : {DType::F32, DType::F16}) {  // the rows kernels over fp32 and fp16 caches
        const bool bf16 = std::string(f).find("bf16") != std::string::npos;
        const bool rounded = bf16 && n > 4;  // cuBLAS with activations rounded to bf16
        // bf16 activations: the first H200 run measured 0.0200 at step 2 of n 11 (each step's rounding
        // also goes into the cached keys and values of the next), so 3e-2; the fp32 paths hold 1e-4 over an
        // fp32 cache and fp16's unit roundoff over an fp16 one (batched cuBLAS and solo GEMV keys that differ
        // in their last bits can round to neighbouring fp16 values: 2.4e-4 measured at step 19 of n 11).
        const double tol = rounded ? 3e-2 : kv == DType::F16 ? 1.0 / 2048 : 1e-4;
        const std::string what = std::string(f) + " n " + std::to_string(n) + " kv " + dtype_name(kv);
        auto model = Model::load(testutil::source_path(std::string("models/fixtures/") + f));
        auto gpu = make_cuda_backend(0);
        const size_t V = size_t(model->config().vocab_size);
        SessionOptions so;
        so.kv_dtype = kv;
        ForwardPass batched(*model, *gpu, so), solo(*model, *gpu, so);
        std::mt19937 rng(18);
        std::vector<std::unique_ptr<KVCache>> bc, sc;
        std::vector<std::vector<float>> ls(static_cast<size_t>(n), std::vector<float>(V));
        for (int i = 0; i < n; ++i) {
          bc.push_back(batched.new_cache(48 + 5 * i));
          sc.push_back(solo.new_cache(48 + 5 * i));
          std::vector<int32_t> prompt(size_t(1 + (i * 7) % 20));
          for (auto& x : prompt) x = int32_t(rng() % V);
          BatchSegment seg;
          seg.ids = prompt.data();
          seg.T = int(prompt.size());
          std::vector<float> lb(V);
          seg.cache = bc[size_t(i)].get();
          batched.run({seg}, lb.data());
          seg.cache = sc[size_t(i)].get();
          solo.run({seg}, ls[size_t(i)].data());
          ASSERT_EQ(bit_mismatches(lb, ls[size_t(i)], "prefill " + what), 0u);
        }
        int ties = 0;
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (int step = 0; step < 20; ++step) {
          std::vector<BatchSegment> segs(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) {
            ids[size_t(i)] = argmax(ls[size_t(i)].data(), int64_t(V));
            segs[size_t(i)].cache = bc[size_t(i)].get();
            segs[size_t(i)].ids = &ids[size_t(i)];
            segs[size_t(i)].T = 1;
          }
          std::vector<float> lb(size_t(n) * V);
          ASSERT_EQ(batched.run(segs, lb.data()), size_t(n)) << what;
          for (int i = 0; i < n; ++i) {
            BatchSegment seg = segs[size_t(i)];
            seg.cache = sc[size_t(i)].get();
            std::vector<float>& l = ls[size_t(i)];
            solo.run({seg}, l.data());
            const std::vector<float> row(lb.begin() + long(size_t(i) * V), lb.begin() + long(size_t(i + 1) * V));
            const std::string at = what + " step " + std::to_string(step) + " sequence " + std::to_string(i);
            ASSERT_LT(rel_err(row, l, "batched logits"), tol) << at;
            const int32_t ab = argmax(row.data(), int64_t(V)), as = argmax(l.data(), int64_t(V));
            if (ab != as) {
              // Only where the activations are rounded to bf16, and only at a near-tie of the solo logits: a
              // gap below 4x the tolerance times their RMS.
              double ss = 0;
              for (float x : l) ss += double(x) * x;
              const double gap = double(l[size_t(as)]) - l[size_t(ab)];
              EXPECT_TRUE(rounded && gap <= 4 * tol * std::sqrt(ss / double(V)))
                  << "greedy id " << ab << " (batched) vs " << as << " (solo), solo gap " << gap << ": " << at;
              ++ties;
            }
            ASSERT_EQ(bc[size_t(i)]->n_past, sc[size_t(i)]->n_past) << at;
          }
        }
        if (ties) std::fprintf(stderr, "%s: %d greedy near-ties\n", what.c_str(), ties);
      }
}

}  // namespace

// Caches of a windowed model bounded below its window (batch requests that never leave it) on CUDA:
// one sequence at a time (eager prefill, then recorded decode steps) they give the rolling cache's
// logits bit for bit; decoded together (decode_rows while two or more have room) each is within the
// batched tolerance of its sequence alone.
TEST(CudaModel, BoundedWindowedCachesEqualRolling) {
  REQUIRE_GPU();
  for (const char* f : {"w8_gqa1_f32", "w16_gqa4_hd12_f32"}) {
    auto model = Model::load(testutil::source_path(std::string("models/fixtures/") + f));
    auto gpu = make_cuda_backend(0);
    const int64_t W = model->config().sliding_window;
    ASSERT_GT(W, 4) << f;
    const size_t V = size_t(model->config().vocab_size);
    ForwardPass fp(*model, *gpu, SessionOptions());
    const int n = 3;
    std::vector<std::unique_ptr<KVCache>> solo_b, batch_b, rolling;
    std::vector<std::vector<float>> lr(static_cast<size_t>(n), std::vector<float>(V));
    std::mt19937 rng(5);
    for (int i = 0; i < n; ++i) {
      solo_b.push_back(fp.new_cache(W - 1 - i));
      batch_b.push_back(fp.new_cache(W - 1 - i));
      rolling.push_back(fp.new_cache());
      ASSERT_EQ(solo_b.back()->slots(), W - 1 - i);
      ASSERT_EQ(rolling.back()->capacity(), INT64_MAX);
      std::vector<int32_t> prompt(size_t(2 + i));
      for (auto& x : prompt) x = int32_t(rng() % V);
      std::vector<float> lb(V), lbb(V);
      fp.run({BatchSegment{rolling.back().get(), prompt.data(), int(prompt.size()), false, true}},
             lr[size_t(i)].data());
      fp.run({BatchSegment{solo_b.back().get(), prompt.data(), int(prompt.size()), false, true}}, lb.data());
      fp.run({BatchSegment{batch_b.back().get(), prompt.data(), int(prompt.size()), false, true}}, lbb.data());
      ASSERT_EQ(bit_mismatches(lb, lr[size_t(i)], std::string(f) + " prefill"), 0u);
      ASSERT_EQ(bit_mismatches(lbb, lr[size_t(i)], std::string(f) + " prefill"), 0u);
    }
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int step = 0;; ++step) {
      std::vector<BatchSegment> segs;
      std::vector<int> who;
      for (int i = 0; i < n; ++i) {
        if (batch_b[size_t(i)]->n_past + 1 > batch_b[size_t(i)]->capacity()) continue;
        ids[size_t(i)] = argmax(lr[size_t(i)].data(), int64_t(V));
        segs.push_back(BatchSegment{batch_b[size_t(i)].get(), &ids[size_t(i)], 1, false, true});
        who.push_back(i);
      }
      if (segs.empty()) break;  // two or more: decode_rows; the last one alone
      std::vector<float> lb(segs.size() * V);
      ASSERT_EQ(fp.run(segs, lb.data()), segs.size());
      for (size_t j = 0; j < who.size(); ++j) {
        const size_t i = size_t(who[j]);
        const std::string at = std::string(f) + " step " + std::to_string(step) + " sequence " + std::to_string(i);
        std::vector<float> ls(V);
        fp.run({BatchSegment{solo_b[i].get(), &ids[i], 1, false, true}}, ls.data());
        fp.run({BatchSegment{rolling[i].get(), &ids[i], 1, false, true}}, lr[i].data());
        ASSERT_EQ(bit_mismatches(ls, lr[i], at), 0u);
        const std::vector<float> row(lb.begin() + long(j * V), lb.begin() + long((j + 1) * V));
        ASSERT_LT(rel_err(row, lr[i], "batched logits"), 1e-4) << at;
      }
    }
    EXPECT_EQ(batch_b[0]->n_past, W - 1) << f;  // the longest bound was filled
  }
}
