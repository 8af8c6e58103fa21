// Quantized CPU matmul kernels: int8 (Q8), NF4 and int4 (Q4) weights dequantized in registers.
// AVX2 + FMA + F16C where the compiler targets them (AVX-512VL, when present, only makes the 4-bit
// code lookup one instruction; the values are the same), a scalar loop otherwise.
#include "quant_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "mistral/quant.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MISTRAL_QUANT_SIMD 1
#endif

namespace mistral {
namespace cpu {

namespace {

// Scale g of a row: fp32 for Q8, fp16 for the 4-bit formats.
template <DType D>
inline float scale_at(const uint8_t* s, int64_t g) {
  if (D == DType::Q8) {
    float f;
    std::memcpy(&f, s + 4 * g, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, s + 2 * g, 2);
  return f16_to_f32(h);
}

// Code value (before scaling) of element k of a row.
template <DType D>
inline float code_at(const uint8_t* row, int64_t k) {
  if (D == DType::Q8) return float(int8_t(row[k]));
  const uint8_t b = row[k >> 1];
  const int c = (k & 1) ? (b >> 4) : (b & 15);
  return D == DType::NF4 ? kNF4Codes[c] : float(c - 8);
}

struct RowPtrs {
  const uint8_t* data;
  const uint8_t* scales;
  const float* codes = nullptr;  // prefill: the row's code values decoded once, [cols / 8 * 8]
  const float* sc = nullptr;     // prefill: its scales as fp32, [groups]
};

#ifdef MISTRAL_QUANT_SIMD
// Scale g of a row with F16C for the 4-bit formats (the same value as scale_at).
template <DType D>
inline float scale_fast(const uint8_t* s, int64_t g) {
  if (D == DType::Q8) return scale_at<D>(s, g);
  uint16_t h;
  std::memcpy(&h, s + 2 * g, 2);
  return _cvtsh_ss(h);
}

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// The code values of a 4-bit format in two registers (codes 0..7 and 8..15): NF4's table, or q - 8 for Q4.
struct Lut {
  __m256 lo, hi;
  explicit Lut(DType t)
      : lo(t == DType::NF4 ? _mm256_loadu_ps(kNF4Codes) : _mm256_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1)),
        hi(t == DType::NF4 ? _mm256_loadu_ps(kNF4Codes + 8) : _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7)) {}
};

// The 4-bit codes of elements k .. k+7 (k a multiple of 8) as eight int32 lanes: their 32-bit word
// broadcast (a plain load), each lane shifted by 4 * lane. No shuffle-port work.
inline __m256i nibbles8(const uint8_t* row, int64_t k) {
  int32_t word;
  std::memcpy(&word, row + (k >> 1), 4);
  const __m256i v = _mm256_set1_epi32(word);
  return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)), _mm256_set1_epi32(15));
}

// Code values of elements k .. k+7 of a row.
template <DType D>
inline __m256 codes8(const uint8_t* row, int64_t k, const Lut& lut) {
  if (D == DType::Q8)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k))));
  const __m256i idx = nibbles8(row, k);
#if defined(__AVX512VL__) && defined(__AVX512F__)
  return _mm256_permutex2var_ps(lut.lo, idx, lut.hi);  // one 16-entry lookup (exact values either way)
#else
  if (D == DType::Q4) return _mm256_cvtepi32_ps(_mm256_sub_epi32(idx, _mm256_set1_epi32(8)));
  const __m256 a = _mm256_permutevar8x32_ps(lut.lo, idx), b = _mm256_permutevar8x32_ps(lut.hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 selects the table
#endif
}

// R rows (from n) times U tokens (x rows, stride K); y[u * N + n + r]. Pre: the rows' codes and scales
// were decoded beforehand (prefill, where one decode serves every token); the arithmetic is the same.
template <DType D, int R, int U, bool Pre = false>
inline void tile(const RowPtrs* rows, const float* x, int64_t K, int64_t G, float* y, int64_t N, const Lut& lut) {
  const int64_t kv = K / 8 * 8;
  __m256 acc[R][U];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
  int64_t g = 0;
  for (int64_t k0 = 0; k0 < kv; k0 += G, ++g) {
    const int64_t k1 = std::min(k0 + G, kv);
    __m256 b[R][U];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < U; ++u) b[r][u] = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
      __m256 xv[U];
      for (int u = 0; u < U; ++u) xv[u] = _mm256_loadu_ps(x + u * K + k);
      for (int r = 0; r < R; ++r) {
        const __m256 w = Pre ? _mm256_loadu_ps(rows[r].codes + k) : codes8<D>(rows[r].data, k, lut);
        for (int u = 0; u < U; ++u) b[r][u] = _mm256_fmadd_ps(w, xv[u], b[r][u]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 s = _mm256_set1_ps(Pre ? rows[r].sc[g] : scale_fast<D>(rows[r].scales, g));
      for (int u = 0; u < U; ++u) acc[r][u] = _mm256_fmadd_ps(b[r][u], s, acc[r][u]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) {
      float v = hsum(acc[r][u]);
      for (int64_t k = kv; k < K; ++k) v += (code_at<D>(rows[r].data, k) * scale_at<D>(rows[r].scales, k / G)) * x[u * K + k];
      y[u * N + r] = v;
    }
}

// Decodes a row's whole 8-element vectors and its scales into fp32 scratch (for the prefill tiles).
template <DType D>
inline void predecode(RowPtrs& r, int64_t K, float* codes, float* sc, const Lut& lut) {
  const int64_t kv = K / 8 * 8, ng = quant_groups(D, K);
  for (int64_t k = 0; k < kv; k += 8) _mm256_storeu_ps(codes + k, codes8<D>(r.data, k, lut));
  for (int64_t g = 0; g < ng; ++g) sc[g] = scale_fast<D>(r.scales, g);
  r.codes = codes;
  r.sc = sc;
}
#endif

template <DType D>
void run(const float* x, int T, const Weight& W, int64_t n0, int64_t n1, float* y) {
  const int64_t K = W.cols, N = W.rows, G = W.group > 0 ? W.group : quant_group(D, K);
  const size_t rb = quant_row_bytes(D, K);
  const size_t sb = size_t(quant_groups(D, K)) * dtype_size(quant_scale_dtype(D));
  const uint8_t* data = static_cast<const uint8_t*>(W.data);
  const uint8_t* scales = static_cast<const uint8_t*>(W.scales);
  auto row = [&](int64_t n) { return RowPtrs{data + size_t(n) * rb, scales + size_t(n) * sb}; };
#ifdef MISTRAL_QUANT_SIMD
  const Lut lut(D);
  int t0 = 0;
  if (T >= 16) {
    // Long prefill: four rows at a time decoded once into fp32 scratch, then register tiles of four rows
    // x three tokens over every token (the remaining tokens one at a time, the remaining rows alone).
    // Below 16 tokens decoding in the loop (two rows x four tokens) is faster on a 2-core EPYC.
    const int64_t kv = K / 8 * 8, ng = quant_groups(D, K);
    thread_local std::vector<float> scratch;
    scratch.resize(size_t(4 * (kv + ng)));
    int64_t n = n0;
    for (; n < n1; n += 4) {
      const int rr = int(std::min<int64_t>(4, n1 - n));
      RowPtrs r[4];
      for (int i = 0; i < rr; ++i) {
        r[i] = row(n + i);
        predecode<D>(r[i], K, scratch.data() + size_t(i) * size_t(kv), scratch.data() + size_t(4 * kv + i * ng), lut);
      }
      for (int i = rr; i < 4; ++i) r[i] = r[0];
      int t = 0;
      if (rr == 4) {
        for (; t + 3 <= T; t += 3) tile<D, 4, 3, true>(r, x + size_t(t) * K, K, G, y + size_t(t) * N + n, N, lut);
        for (; t < T; ++t) tile<D, 4, 1, true>(r, x + size_t(t) * K, K, G, y + size_t(t) * N + n, N, lut);
      } else {
        for (int i = 0; i < rr; ++i) {
          for (t = 0; t + 3 <= T; t += 3) tile<D, 1, 3, true>(r + i, x + size_t(t) * K, K, G, y + size_t(t) * N + n + i, N, lut);
          for (; t < T; ++t) tile<D, 1, 1, true>(r + i, x + size_t(t) * K, K, G, y + size_t(t) * N + n + i, N, lut);
        }
      }
    }
    return;
  }
  for (; t0 + 4 <= T; t0 += 4) {  // short prefill: two rows x four tokens share each decoded weight vector
    const float* xt = x + size_t(t0) * K;
    float* yt = y + size_t(t0) * N;
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
      const RowPtrs r[2] = {row(n), row(n + 1)};
      tile<D, 2, 4>(r, xt, K, G, yt + n, N, lut);
    }
    for (; n < n1; ++n) {
      const RowPtrs r[1] = {row(n)};
      tile<D, 1, 4>(r, xt, K, G, yt + n, N, lut);
    }
  }
  for (; t0 < T; ++t0) {  // decode: eight (then four) rows at once for independent FMA chains
    const float* xt = x + size_t(t0) * K;
    float* yt = y + size_t(t0) * N;
    int64_t n = n0;
    for (; n + 8 <= n1; n += 8) {
      const RowPtrs r[8] = {row(n), row(n + 1), row(n + 2), row(n + 3), row(n + 4), row(n + 5), row(n + 6), row(n + 7)};
      tile<D, 8, 1>(r, xt, K, G, yt + n, N, lut);
    }
    for (; n + 4 <= n1; n += 4) {
      const RowPtrs r[4] = {row(n), row(n + 1), row(n + 2), row(n + 3)};
      tile<D, 4, 1>(r, xt, K, G, yt + n, N, lut);
    }
    for (; n < n1; ++n) {
      const RowPtrs r[1] = {row(n)};
      tile<D, 1, 1>(r, xt, K, G, yt + n, N, lut);
    }
  }
#else
  // Scalar reference order: per group, a sum of code * x, then times the group's scale.
  for (int t = 0; t < T; ++t)
    for (int64_t n = n0; n < n1; ++n) {
      const RowPtrs r = row(n);
      const float* xt = x + size_t(t) * K;
      float v = 0;
      for (int64_t k0 = 0, g = 0; k0 < K; k0 += G, ++g) {
        float b = 0;
        for (int64_t k = k0; k < std::min(K, k0 + G); ++k) b += code_at<D>(r.data, k) * xt[k];
        v += b * scale_at<D>(r.scales, g);
      }
      y[size_t(t) * N + n] = v;
    }
#endif
}

}  // namespace

ActInt8 quantize_act_int8(DType wt, const float* x, int T, int64_t K) {
  ActInt8 a;
  a.E = wt == DType::Q8 ? 16 : 32;
  a.chunks = (K + a.E - 1) / a.E;
  a.q.assign(size_t(T) * size_t(a.chunks) * size_t(a.E), 0);
  a.d.assign(size_t(T) * size_t(a.chunks), 0.f);
  constexpr float kMax = std::numeric_limits<float>::max();
  for (int t = 0; t < T; ++t) {
    const float* xt = x + size_t(t) * size_t(K);
    for (int64_t c = 0; c < a.chunks; ++c) {
      const int64_t k0 = c * a.E, k1 = std::min(K, k0 + a.E);
      float m = 0.f;
      bool finite = true;
      for (int64_t k = k0; k < k1; ++k) {
        finite = finite && std::fabs(xt[k]) <= kMax;  // false for inf and NaN
        m = std::fmax(m, std::fabs(xt[k]));
      }
      const size_t ci = size_t(t) * size_t(a.chunks) + size_t(c);
      a.d[ci] = !finite ? std::numeric_limits<float>::quiet_NaN() : m > 0.f ? m * 0x1.020408p-7f : 0.f;
      if (!finite || !(m > 0.f)) continue;  // q stay 0 (a NaN d makes the chunk's products NaN)
      const float inv = std::fmin(127.f / m, kMax);
      int8_t* q = a.q.data() + ci * size_t(a.E);
      for (int64_t k = k0; k < k1; ++k) q[k - k0] = int8_t(std::nearbyint(double(xt[k]) * double(inv)));
    }
  }
  return a;
}

void matmul_rows_quant_i8(const ActInt8& a, int T, const Weight& W, int64_t n0, int64_t n1, float* y) {
  const bool q8 = W.dtype == DType::Q8;
  const int64_t N = W.rows, K = W.cols, G = q8 ? K : int64_t(W.group);
  const size_t rb = W.row_bytes(), sb = W.scale_bytes() / size_t(N);
  const uint8_t* data = static_cast<const uint8_t*>(W.data);
  const uint8_t* scales = static_cast<const uint8_t*>(W.scales);
  std::vector<int8_t> codes(size_t(a.chunks) * size_t(a.E), 0);  // one row's code values, 0 past K
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = data + size_t(n) * rb;
    for (int64_t k = 0; k < K; ++k)
      codes[size_t(k)] = q8 ? int8_t(row[k]) : int8_t(((k & 1) ? (row[k >> 1] >> 4) : (row[k >> 1] & 15)) - 8);
    const uint8_t* sc = scales + size_t(n) * sb;
    for (int t = 0; t < T; ++t) {
      float acc = 0.f;
      for (int64_t c = 0; c < a.chunks; ++c) {
        const int8_t* q = a.q.data() + (size_t(t) * size_t(a.chunks) + size_t(c)) * size_t(a.E);
        const int8_t* w = codes.data() + size_t(c) * size_t(a.E);
        int32_t isum = 0;
        for (int i = 0; i < a.E; ++i) isum += int32_t(w[i]) * int32_t(q[i]);
        const float v = a.d[size_t(t) * size_t(a.chunks) + size_t(c)] * float(isum);
        acc = q8 ? acc + v : std::fma(scale_at<DType::Q4>(sc, c * a.E / G), v, acc);
      }
      y[size_t(t) * size_t(N) + size_t(n)] = q8 ? acc * scale_at<DType::Q8>(sc, 0) : acc;
    }
  }
}

void matmul_rows_quant(const float* x, int T, const Weight& W, int64_t n0, int64_t n1, float* y) {
  switch (W.dtype) {
    case DType::Q8: run<DType::Q8>(x, T, W, n0, n1, y); break;
    case DType::NF4: run<DType::NF4>(x, T, W, n0, n1, y); break;
    case DType::Q4: run<DType::Q4>(x, T, W, n0, n1, y); break;
    default: break;  // the backend dispatches only quantized dtypes here
  }
}

}  // namespace cpu
}  // namespace mistral
