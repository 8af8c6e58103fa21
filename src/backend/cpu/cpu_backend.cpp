// CPU backend: the reference implementation of every op. fp32 activations, weights converted to fp32
// inside the inner loops (AVX2/F16C where the compiler targets them), multi-threaded with ThreadPool.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "mistral/backend.h"
#include "mistral/threadpool.h"
#include "quant_matmul.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MISTRAL_X86_SIMD 1
#endif

namespace mistral {

namespace {

#ifdef MISTRAL_X86_SIMD
template <DType D>
inline __m256 load8(const void* p, int64_t i);
template <>
inline __m256 load8<DType::F32>(const void* p, int64_t i) {
  return _mm256_loadu_ps(static_cast<const float*>(p) + i);
}
template <>
inline __m256 load8<DType::F16>(const void* p, int64_t i) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
}
template <>
inline __m256 load8<DType::BF16>(const void* p, int64_t i) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

template <DType D>
inline float load1(const void* p, int64_t i) {
  if (D == DType::F32) return static_cast<const float*>(p)[i];
  if (D == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// Element i of a KV row of fp32, or of fp16 bits (an fp16 cache): as fp32, and 8 at a time.
inline float kv_at(const float* p, int i) { return p[i]; }
inline float kv_at(const uint16_t* p, int i) { return f16_to_f32(p[i]); }
#ifdef MISTRAL_X86_SIMD
inline __m256 kv_at8(const float* p, int i) { return _mm256_loadu_ps(p + i); }
inline __m256 kv_at8(const uint16_t* p, int i) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));  // exact
}
#endif

// q . k over n elements: 8-lane fp32 accumulation over the multiple-of-8 part, then the scalar tail (the
// same order for every call, so attention does not depend on how many tokens a pass has). An fp16 row
// gives the bits of the fp32 row holding its values.
template <typename K>
inline float dot(const float* a, const K* b, int n) {
  int i = 0;
  float d = 0;
#ifdef MISTRAL_X86_SIMD
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), kv_at8(b, i), acc);
  d = hsum(acc);
#endif
  for (; i < n; ++i) d = std::fma(a[i], kv_at(b, i), d);  // explicit: the same for either row type
  return d;
}

// dot() of a with four rows at once: each result the same bits as dot(a, b[r], n); four independent
// accumulation chains instead of one.
template <typename K>
inline void dot4(const float* a, const K* const* b, int n, float* out) {
  int i = 0;
  float d[4] = {0, 0, 0, 0};
#ifdef MISTRAL_X86_SIMD
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (; i + 8 <= n; i += 8) {
    const __m256 av = _mm256_loadu_ps(a + i);
    for (int r = 0; r < 4; ++r) acc[r] = _mm256_fmadd_ps(av, kv_at8(b[r], i), acc[r]);
  }
  for (int r = 0; r < 4; ++r) d[r] = hsum(acc[r]);
#endif
  for (int r = 0; r < 4; ++r) {
    for (int j = i; j < n; ++j) d[r] = std::fma(a[j], kv_at(b[r], j), d[r]);
    out[r] = d[r];
  }
}

// a[i] = fma(w[j], rows[j][i], a[i]) for j = 0 .. nr - 1 in order, i < n (each element's sum in key order,
// whatever the lanes), a kept in registers (eight 8-lane slices at a time) while the rows go by.
template <typename K>
inline void axpy_rows(float* a, const float* w, const K* const* rows, int64_t nr, int n) {
  int i = 0;
#ifdef MISTRAL_X86_SIMD
  for (; i + 8 <= n;) {
    const int slices = std::min(8, (n - i) / 8);
    __m256 acc[8];
    for (int s = 0; s < slices; ++s) acc[s] = _mm256_loadu_ps(a + i + 8 * s);
    if (slices == 8) {  // the common case (head_dim 64 and 128), unrolled by the compiler
      for (int64_t j = 0; j < nr; ++j) {
        const __m256 wv = _mm256_set1_ps(w[j]);
        for (int s = 0; s < 8; ++s) acc[s] = _mm256_fmadd_ps(wv, kv_at8(rows[j], i + 8 * s), acc[s]);
      }
    } else {
      for (int64_t j = 0; j < nr; ++j) {
        const __m256 wv = _mm256_set1_ps(w[j]);
        for (int s = 0; s < slices; ++s) acc[s] = _mm256_fmadd_ps(wv, kv_at8(rows[j], i + 8 * s), acc[s]);
      }
    }
    for (int s = 0; s < slices; ++s) _mm256_storeu_ps(a + i + 8 * s, acc[s]);
    i += 8 * slices;
  }
#endif
  for (; i < n; ++i)
    for (int64_t j = 0; j < nr; ++j) a[i] = std::fma(w[j], kv_at(rows[j], i), a[i]);
}

// y[t, n] for n in [n0, n1), all t. Every (row, token) dot product is accumulated the same way
// (one 8-lane fp32 accumulator over k in order, then a horizontal sum, then the scalar tail), so
// results do not depend on T or on how rows and tokens are grouped: decode equals prefill bitwise.
// Groups of four tokens share each converted weight vector (prefill); with fewer tokens, four rows
// are processed at once so that four independent FMA chains hide the FMA latency (decode).
template <DType D>
void matmul_tile(const float* x, int T, int64_t K, const void* W, int64_t N, int64_t n0, int64_t n1, float* y) {
  const size_t es = dtype_size(D);
  auto row_ptr = [&](int64_t n) { return static_cast<const uint8_t*>(W) + size_t(n) * size_t(K) * es; };
  auto tail = [&](const void* row, const float* xu, int64_t k, float acc) {
    for (; k < K; ++k) acc += load1<D>(row, k) * xu[k];
    return acc;
  };
  [[maybe_unused]] int64_t kv = 0;  // where the vector loop stops (SIMD builds)
#ifdef MISTRAL_X86_SIMD
  kv = K / 8 * 8;
#endif
  int t0 = 0;
#ifdef MISTRAL_X86_SIMD
  for (; t0 + 4 <= T; t0 += 4) {
    const float* x0 = x + size_t(t0) * K;
    int64_t n = n0;
    // Two rows x four tokens: eight independent FMA chains, each weight vector converted once.
    for (; n + 2 <= n1; n += 2) {
      const void *r0 = row_ptr(n), *r1 = row_ptr(n + 1);
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t k = 0; k < kv; k += 8) {
        const __m256 w0 = load8<D>(r0, k), w1 = load8<D>(r1, k);
        const __m256 x0v = _mm256_loadu_ps(x0 + k), x1v = _mm256_loadu_ps(x0 + K + k);
        const __m256 x2v = _mm256_loadu_ps(x0 + 2 * K + k), x3v = _mm256_loadu_ps(x0 + 3 * K + k);
        a0 = _mm256_fmadd_ps(w0, x0v, a0);
        a1 = _mm256_fmadd_ps(w0, x1v, a1);
        a2 = _mm256_fmadd_ps(w0, x2v, a2);
        a3 = _mm256_fmadd_ps(w0, x3v, a3);
        b0 = _mm256_fmadd_ps(w1, x0v, b0);
        b1 = _mm256_fmadd_ps(w1, x1v, b1);
        b2 = _mm256_fmadd_ps(w1, x2v, b2);
        b3 = _mm256_fmadd_ps(w1, x3v, b3);
      }
      y[size_t(t0) * N + n] = tail(r0, x0, kv, hsum(a0));
      y[size_t(t0 + 1) * N + n] = tail(r0, x0 + K, kv, hsum(a1));
      y[size_t(t0 + 2) * N + n] = tail(r0, x0 + 2 * K, kv, hsum(a2));
      y[size_t(t0 + 3) * N + n] = tail(r0, x0 + 3 * K, kv, hsum(a3));
      y[size_t(t0) * N + n + 1] = tail(r1, x0, kv, hsum(b0));
      y[size_t(t0 + 1) * N + n + 1] = tail(r1, x0 + K, kv, hsum(b1));
      y[size_t(t0 + 2) * N + n + 1] = tail(r1, x0 + 2 * K, kv, hsum(b2));
      y[size_t(t0 + 3) * N + n + 1] = tail(r1, x0 + 3 * K, kv, hsum(b3));
    }
    for (; n < n1; ++n) {
      const void* row = row_ptr(n);
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = 0; k < kv; k += 8) {
        const __m256 w = load8<D>(row, k);
        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + k), a0);
        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + K + k), a1);
        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + 2 * K + k), a2);
        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + 3 * K + k), a3);
      }
      y[size_t(t0) * N + n] = tail(row, x0, kv, hsum(a0));
      y[size_t(t0 + 1) * N + n] = tail(row, x0 + K, kv, hsum(a1));
      y[size_t(t0 + 2) * N + n] = tail(row, x0 + 2 * K, kv, hsum(a2));
      y[size_t(t0 + 3) * N + n] = tail(row, x0 + 3 * K, kv, hsum(a3));
    }
  }
  for (; t0 < T; ++t0) {
    const float* xu = x + size_t(t0) * K;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      const void *r0 = row_ptr(n), *r1 = row_ptr(n + 1), *r2 = row_ptr(n + 2), *r3 = row_ptr(n + 3);
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t k = 0; k < kv; k += 8) {
        const __m256 xv = _mm256_loadu_ps(xu + k);
        a0 = _mm256_fmadd_ps(load8<D>(r0, k), xv, a0);
        a1 = _mm256_fmadd_ps(load8<D>(r1, k), xv, a1);
        a2 = _mm256_fmadd_ps(load8<D>(r2, k), xv, a2);
        a3 = _mm256_fmadd_ps(load8<D>(r3, k), xv, a3);
      }
      y[size_t(t0) * N + n] = tail(r0, xu, kv, hsum(a0));
      y[size_t(t0) * N + n + 1] = tail(r1, xu, kv, hsum(a1));
      y[size_t(t0) * N + n + 2] = tail(r2, xu, kv, hsum(a2));
      y[size_t(t0) * N + n + 3] = tail(r3, xu, kv, hsum(a3));
    }
    for (; n < n1; ++n) {
      const void* row = row_ptr(n);
      __m256 a = _mm256_setzero_ps();
      for (int64_t k = 0; k < kv; k += 8) a = _mm256_fmadd_ps(load8<D>(row, k), _mm256_loadu_ps(xu + k), a);
      y[size_t(t0) * N + n] = tail(row, xu, kv, hsum(a));
    }
  }
#else
  for (; t0 < T; ++t0)
    for (int64_t n = n0; n < n1; ++n) y[size_t(t0) * N + n] = tail(row_ptr(n), x + size_t(t0) * K, 0, 0.0f);
#endif
}

// Rows [n0, n1) in tiles of about 64 KiB of weights, each tile run against every token: with many
// tokens (prefill) a tile is read from memory once and then from cache, instead of once per group of
// four tokens. The grouping does not change any dot product's accumulation (see matmul_tile).
template <DType D>
void matmul_rows(const float* x, int T, int64_t K, const void* W, int64_t N, int64_t n0, int64_t n1, float* y) {
  if (T < 8) return matmul_tile<D>(x, T, K, W, N, n0, n1, y);
  const int64_t row_bytes = std::max<int64_t>(1, K * int64_t(dtype_size(D)));
  const int64_t tile = std::max<int64_t>(4, (int64_t(64) << 10) / row_bytes / 4 * 4);
  for (int64_t b = n0; b < n1; b += tile) matmul_tile<D>(x, T, K, W, N, b, std::min(n1, b + tile), y);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int n_threads) : pool_(n_threads) {}
  std::string name() const override { return "cpu"; }
  int threads() const { return pool_.size(); }

  float* alloc(size_t n) override { return new float[n == 0 ? 1 : n](); }
  void free(float* p) override { delete[] p; }
  void to_device(float* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * 4); }
  void to_host(float* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * 4); }
  void zero(float* p, size_t n) override { std::memset(p, 0, n * 4); }
  void copy(float* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * 4); }
  // The rows are host memory already: no copy before the argmax or the candidates.
  void argmax_rows(const float* x, int rows, int64_t n, int32_t* out) override { host_argmax_rows(x, rows, n, out); }
  void top_candidates_rows(const float* x, int rows, int64_t n, const CandidateRequest* req, int kmax, int32_t* ids,
                           float* logits, double* z) override {
    host_top_candidates_rows(x, rows, n, req, kmax, ids, logits, z);
  }

  void embed(const Weight& E, const int32_t* ids, int T, float* x) override {
    const size_t es = dtype_size(E.dtype);
    for (int t = 0; t < T; ++t)
      to_f32(E.dtype, static_cast<const uint8_t*>(E.data) + size_t(ids[t]) * size_t(E.cols) * es, x + size_t(t) * E.cols,
             size_t(E.cols));
  }

  void rmsnorm(const float* x, const Weight& w, float eps, int T, float* y) override {
    const int64_t D = w.cols;
    std::vector<float> wf(static_cast<size_t>(D));
    to_f32(w.dtype, w.data, wf.data(), size_t(D));
    for (int t = 0; t < T; ++t) {
      const float* xr = x + size_t(t) * D;
      float* yr = y + size_t(t) * D;
      double ss = 0;  // fp64 sum: the reference must not be the source of error
      for (int64_t i = 0; i < D; ++i) ss += double(xr[i]) * xr[i];
      const float r = float(1.0 / std::sqrt(ss / double(D) + double(eps)));
      for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] * r) * wf[i];
    }
  }

  void matmul(const float* x, int T, const Weight& W, float* y) override {
    const int64_t N = W.rows, K = W.cols;
    auto run = [&](int64_t b, int64_t e) {
      switch (W.dtype) {
        case DType::F32: matmul_rows<DType::F32>(x, T, K, W.data, N, b, e, y); break;
        case DType::F16: matmul_rows<DType::F16>(x, T, K, W.data, N, b, e, y); break;
        case DType::BF16: matmul_rows<DType::BF16>(x, T, K, W.data, N, b, e, y); break;
        case DType::Q8:
        case DType::NF4:
        case DType::Q4: cpu::matmul_rows_quant(x, T, W, b, e, y); break;
        case DType::I8:
        case DType::U8: break;  // rejected below: raw storage dtypes never reach a Weight
      }
    };
    if (W.dtype == DType::I8 || W.dtype == DType::U8)
      throw std::invalid_argument(std::string("matmul: weight dtype ") + dtype_name(W.dtype) + " is not a weight format");
    if (quant_i8_ && (W.dtype == DType::Q8 || W.dtype == DType::Q4)) {  // x quantized once, then the rows
      const cpu::ActInt8 a = cpu::quantize_act_int8(W.dtype, x, T, K);
      pool_.parallel_for(
          N, [&](int64_t b, int64_t e) { cpu::matmul_rows_quant_i8(a, T, W, b, e, y); }, 16);
      return;
    }
    pool_.parallel_for(N, run, 16);
  }

  void rope(float* q, float* k, int T, int64_t start, const AttnShape& s) override {
    const int hd = s.head_dim, half = hd / 2;
    std::vector<float> inv(static_cast<size_t>(half)), cs(inv), sn(inv);
    for (int i = 0; i < half; ++i)  // fp32 like the reference: 1 / theta^(2i/hd)
      inv[size_t(i)] = 1.0f / std::pow(s.rope_theta, float(2 * i) / float(hd));
    for (int t = 0; t < T; ++t) {
      const float pos = float(start + t);
      for (int i = 0; i < half; ++i) {
        const float a = pos * inv[size_t(i)];
        cs[size_t(i)] = float(std::cos(double(a)));
        sn[size_t(i)] = float(std::sin(double(a)));
      }
      auto apply = [&](float* v, int heads) {
        for (int h = 0; h < heads; ++h) {
          float* p = v + size_t(h) * hd;
          for (int i = 0; i < half; ++i) {
            const float x0 = p[i], x1 = p[i + half];
            p[i] = x0 * cs[size_t(i)] - x1 * sn[size_t(i)];
            p[i + half] = x1 * cs[size_t(i)] + x0 * sn[size_t(i)];
          }
        }
      };
      apply(q + size_t(t) * s.q_dim(), s.n_heads);
      apply(k + size_t(t) * s.kv_dim(), s.n_kv_heads);
    }
  }

  void attention(const float* q, const float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                 const AttnShape& s, float* out) override {
    const int hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
    const int kvd = s.kv_dim(), qd = s.q_dim();
    const float scale = 1.0f / std::sqrt(float(hd));
    // An fp16 cache: the chunk's own rows are read as the cache would hold them.
    std::vector<float> kr16, vr16;
    if (s.kv_half) {
      kr16.resize(size_t(T) * kvd), vr16.resize(kr16.size());
      for (size_t i = 0; i < kr16.size(); ++i) kr16[i] = kv_round(k[i]), vr16[i] = kv_round(v[i]);
      k = kr16.data(), v = vr16.data();
    }
    // Keys j0 .. p of query t: those below start from the cache (rows of K: float, or uint16_t fp16 bits),
    // the rest from the chunk; the cache's type is a template parameter, not a test per key.
    auto run = [&](auto type_tag) {
      using K = decltype(type_tag);
      const K* ck = static_cast<const K*>(cache.k);
      const K* cv = static_cast<const K*>(cache.v);
      pool_.parallel_for(int64_t(T) * s.n_heads, [&](int64_t b, int64_t e) {
        std::vector<float> sc;
        std::vector<float> acc(static_cast<size_t>(hd));
        std::vector<const K*> krows, vrows;  // the cache's keys j0 .. jc - 1, in order
        std::vector<const float*> kc, vc;    // the chunk's keys jc .. p
        for (int64_t job = b; job < e; ++job) {
          const int t = int(job / s.n_heads), h = int(job % s.n_heads), kvh = h / group;
          const int64_t p = start + t;
          const int64_t j0 = s.window > 0 ? std::max<int64_t>(0, p - s.window + 1) : 0;
          const int64_t jc = std::max(j0, start);  // first key from the chunk
          const size_t head = size_t(kvh) * hd;
          const float* qv = q + size_t(t) * qd + size_t(h) * hd;
          krows.resize(size_t(jc - j0)), vrows.resize(krows.size());
          // The ring's slots without a division a key.
          for (int64_t j = j0, slot = jc > j0 ? j0 % s.slots : 0; j < jc; ++j) {
            krows[size_t(j - j0)] = ck + size_t(slot) * kvd + head;
            vrows[size_t(j - j0)] = cv + size_t(slot) * kvd + head;
            if (++slot == s.slots) slot = 0;
          }
          kc.resize(size_t(p + 1 - jc)), vc.resize(kc.size());
          for (int64_t j = jc; j <= p; ++j) {
            kc[size_t(j - jc)] = k + size_t(j - start) * kvd + head;
            vc[size_t(j - jc)] = v + size_t(j - start) * kvd + head;
          }
          sc.resize(size_t(p - j0 + 1));
          // Scores: dot() of each key, four keys at a time, then the rest one by one.
          auto score = [&](const auto& rows, float* out) {
            const size_t n = rows.size();
            size_t j = 0;
            for (; j + 4 <= n; j += 4) dot4(qv, rows.data() + j, hd, out + j);
            for (; j < n; ++j) out[j] = dot(qv, rows[j], hd);
            for (j = 0; j < n; ++j) out[j] *= scale;
          };
          score(krows, sc.data());
          score(kc, sc.data() + krows.size());
          float mx = -INFINITY;
          for (float x : sc) mx = std::max(mx, x);
          double sum = 0;
          for (auto& x : sc) {
            x = std::exp(x - mx);
            sum += x;
          }
          std::fill(acc.begin(), acc.end(), 0.0f);
          axpy_rows(acc.data(), sc.data(), vrows.data(), int64_t(vrows.size()), hd);
          axpy_rows(acc.data(), sc.data() + vrows.size(), vc.data(), int64_t(vc.size()), hd);
          float* o = out + size_t(t) * qd + size_t(h) * hd;
          const float inv = float(1.0 / sum);
          for (int i = 0; i < hd; ++i) o[i] = acc[size_t(i)] * inv;
        }
      });
    };
    if (s.kv_half)
      run(uint16_t{});
    else
      run(float{});
  }

  void cache_write(const float* k, const float* v, const KVLayer& cache, int T, int64_t start,
                   const AttnShape& s) override {
    const int kvd = s.kv_dim();
    const int64_t first = std::max<int64_t>(0, int64_t(T) - s.slots);
    for (int64_t t = first; t < T; ++t) {
      const size_t slot = size_t((start + t) % s.slots);
      const float *kt = k + size_t(t) * kvd, *vt = v + size_t(t) * kvd;
      if (s.kv_half) {
        uint16_t* ck = static_cast<uint16_t*>(cache.k) + slot * kvd;
        uint16_t* cv = static_cast<uint16_t*>(cache.v) + slot * kvd;
        for (int i = 0; i < kvd; ++i) ck[i] = f32_to_f16_sat(kt[i]), cv[i] = f32_to_f16_sat(vt[i]);
      } else {
        std::memcpy(static_cast<float*>(cache.k) + slot * kvd, kt, size_t(kvd) * 4);
        std::memcpy(static_cast<float*>(cache.v) + slot * kvd, vt, size_t(kvd) * 4);
      }
    }
  }

  void swiglu(const float* gate, const float* up, size_t n, float* out) override {
    pool_.parallel_for(int64_t(n), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
      }
    }, 1024);
  }

  void add(float* x, const float* y, size_t n) override {
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
  }

 private:
  ThreadPool pool_;
  // Q8 and Q4 products take int8 activations (quant_matmul.h, ActInt8; the arithmetic of the CUDA
  // backend's MISTRAL_CUDA_QUANT_I8): SmolLM2 int4 decode 1.37x the fp32-activation kernels' speed on
  // 2 AVX2 cores, with little loss (README, Quantized weights). MISTRAL_CPU_QUANT_I8=0 keeps x in fp32.
  bool quant_i8_ = [] {
    const char* e = std::getenv("MISTRAL_CPU_QUANT_I8");
    return !(e && std::strcmp(e, "0") == 0);
  }();
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return std::unique_ptr<Backend>(new CpuBackend(n_threads)); }

int cpu_backend_threads(const Backend& b) {
  const CpuBackend* c = dynamic_cast<const CpuBackend*>(&b);
  return c ? c->threads() : 0;
}

}  // namespace mistral
