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

namespace {

constexpr float kInv127 = 0x1.020408p-7f;  // the float nearest 1 / 127
constexpr float kFltMax = std::numeric_limits<float>::max();

// One chunk of x, elements [k0, k1) (the rest of the chunk's E codes stay 0): q and d as quant_matmul.h
// defines them (scalar).
float quantize_chunk_scalar(const float* x, int64_t k0, int64_t k1, int8_t* q) {
  float m = 0.f;
  bool finite = true;
  for (int64_t k = k0; k < k1; ++k) {
    finite = finite && std::fabs(x[k]) <= kFltMax;  // false for inf and NaN
    m = std::fmax(m, std::fabs(x[k]));
  }
  if (!finite) return std::numeric_limits<float>::quiet_NaN();  // q stay 0; the NaN d makes y NaN
  if (!(m > 0.f)) return 0.f;
  const float inv = std::fmin(127.f / m, kFltMax);
  for (int64_t k = k0; k < k1; ++k) q[k - k0] = int8_t(std::nearbyint(double(x[k]) * double(inv)));
  return m * kInv127;
}

#ifdef MISTRAL_QUANT_SIMD
// A whole chunk of E = 16 or 32 floats: the same q and d as quantize_chunk_scalar. q = x * inv rounded
// once, to nearest even, by an FMA with 1.5 * 2^23: the integer lands in the low bits of the float, and
// subtracting the bits of 1.5 * 2^23 leaves it as an int32 (|q| <= 127, so the packs do not saturate).
float quantize_chunk_simd(const float* x, int E, int8_t* q) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 big = _mm256_set1_ps(kFltMax);
  __m256 v[4], m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  const int nv = E / 8;
  for (int i = 0; i < nv; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    const __m256 a = _mm256_and_ps(v[i], abs_mask);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));  // inf or NaN
    m = _mm256_max_ps(m, a);
  }
  if (!_mm256_testz_ps(bad, bad)) return std::numeric_limits<float>::quiet_NaN();
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const float a = _mm_cvtss_f32(h);
  if (!(a > 0.f)) return 0.f;
  const __m256 inv = _mm256_set1_ps(std::fmin(127.f / a, kFltMax));
  const __m256 magic = _mm256_set1_ps(12582912.f);  // 1.5 * 2^23
  const __m256i magic_bits = _mm256_set1_epi32(0x4B400000);
  __m256i qi[4];
  for (int i = 0; i < nv; ++i)
    qi[i] = _mm256_sub_epi32(_mm256_castps_si256(_mm256_fmadd_ps(v[i], inv, magic)), magic_bits);
  // packs work within 128-bit lanes: int32 -> int16 gives [0..3, 8..11 | 4..7, 12..15] of (qi0, qi1).
  const __m256i w01 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[0], qi[1]), 0xD8);  // 16 int16 in order
  if (nv == 2) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q),
                     _mm_packs_epi16(_mm256_castsi256_si128(w01), _mm256_extracti128_si256(w01, 1)));
  } else {
    const __m256i w23 = _mm256_permute4x64_epi64(_mm256_packs_epi32(qi[2], qi[3]), 0xD8);
    const __m256i b = _mm256_packs_epi16(w01, w23);  // [0..7, 16..23 | 8..15, 24..31]
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permute4x64_epi64(b, 0xD8));
  }
  return a * kInv127;
}
#endif

}  // namespace

ActInt8 quantize_act_int8(DType wt, const float* x, int T, int64_t K) {
  ActInt8 a;
  a.E = wt == DType::Q8 ? 16 : 32;
  a.chunks = (K + a.E - 1) / a.E;
  a.q.assign(size_t(T) * size_t(a.chunks) * size_t(a.E), 0);
  a.d.assign(size_t(T) * size_t(a.chunks), 0.f);
  a.qsum.assign(a.d.size(), 0);
  for (int t = 0; t < T; ++t) {
    const float* xt = x + size_t(t) * size_t(K);
    for (int64_t c = 0; c < a.chunks; ++c) {
      const int64_t k0 = c * a.E, k1 = std::min(K, k0 + a.E);
      const size_t ci = size_t(t) * size_t(a.chunks) + size_t(c);
      int8_t* q = a.q.data() + ci * size_t(a.E);
#ifdef MISTRAL_QUANT_SIMD
      a.d[ci] = k1 - k0 == a.E ? quantize_chunk_simd(xt + k0, a.E, q) : quantize_chunk_scalar(xt, k0, k1, q);
#else
      a.d[ci] = quantize_chunk_scalar(xt, k0, k1, q);
#endif
      if (wt == DType::Q4)
        for (int i = 0; i < a.E; ++i) a.qsum[ci] += q[i];
    }
  }
  return a;
}

namespace {

#ifdef MISTRAL_QUANT_SIMD
// Eight int32 lanes, lane i the sum of u * s over bytes 4i .. 4i+3 (u unsigned, s signed; each pair of
// products fits int16: at most 2 * 128 * 127).
inline __m256i dot_us(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// The eight 128-bit halves' sums of p[0] .. p[7]: first = the low halves' (lanes 0-3), second = the high
// ones' (lane r of each: row r).
inline void half_sums8(const __m256i* p, __m256i* first, __m256i* second) {
  const __m256i lo = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
  const __m256i hi = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
  // lo = [rows 0-3 over lanes 0-3 | rows 0-3 over lanes 4-7], hi the same for rows 4-7
  *first = _mm256_permute2x128_si256(lo, hi, 0x20);
  *second = _mm256_permute2x128_si256(lo, hi, 0x31);
}

// The eight int32 sums of p[0] .. p[7] (eight lanes each), in one vector: r = sum of p[r]'s lanes.
inline __m256i sums8(const __m256i* p) {
  __m256i first, second;
  half_sums8(p, &first, &second);
  return _mm256_add_epi32(first, second);
}

// Eight rows of Q4 times token t of a: y[r] for rows rows[r] (scales sc[r]), one row a float lane. Chunk c
// of a row (16 bytes) becomes its 32 nibbles u (the 16 even elements in the low 128-bit lane, the odd ones
// in the high lane) and the chunk of q is shuffled to that order once for the eight rows; each row's
// chunk sum of (u - 8) q is exact in int32 (u q by maddubs, the lanes added, minus 8 times the sum of q).
// Then, as the scalar loop: v = d * isum in fp32, acc = fma(scale, v, acc) chunk by chunk, so the bits
// are the scalar path's, whatever T or the rows' grouping.
inline void tile_q4_i8(const uint8_t* const* rows, const uint8_t* const* sc, const ActInt8& a, int t, float* y) {
  static_assert(kQ4Group % 32 == 0, "a Q4 chunk lies in one group");
  constexpr int64_t kChunksPerGroup = kQ4Group / 32;
  const __m256i low4 = _mm256_set1_epi8(15);
  const __m256i shift = _mm256_setr_epi64x(0, 0, 4, 4);
  // Within each 128-bit lane: the even bytes, then the odd ones.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const int8_t* q = a.q.data() + size_t(t) * size_t(a.chunks) * 32;
  const float* d = a.d.data() + size_t(t) * size_t(a.chunks);
  const int32_t* qsum = a.qsum.data() + size_t(t) * size_t(a.chunks);
  __m256 acc = _mm256_setzero_ps(), s = acc;
  for (int64_t c = 0; c < a.chunks; ++c) {
    if (c % kChunksPerGroup == 0) {  // the eight rows' scales of this group
      const int64_t g = c / kChunksPerGroup;
      uint16_t h[8];
      for (int r = 0; r < 8; ++r) std::memcpy(&h[r], sc[r] + 2 * g, 2);
      s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
    }
    const __m256i qn = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + c * 32));
    const __m256i qs = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(qn, split), 0xD8);  // evens | odds
    __m256i p[8];
    for (int r = 0; r < 8; ++r) {
      const __m256i w =
          _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r] + c * 16)));
      p[r] = dot_us(_mm256_and_si256(_mm256_srlv_epi64(w, shift), low4), qs);
    }
    const __m256i isum = _mm256_sub_epi32(sums8(p), _mm256_set1_epi32(8 * qsum[c]));  // sum (u - 8) q
    const __m256 v = _mm256_mul_ps(_mm256_set1_ps(d[c]), _mm256_cvtepi32_ps(isum));
    acc = _mm256_fmadd_ps(s, v, acc);
  }
  _mm256_storeu_ps(y, acc);
}

// Eight rows of Q8 times token t of a, one row a float lane: two 16-element chunks a 32-byte load (the last
// one alone when the row has an odd number), signed times signed through maddubs(|w|, q with w's sign),
// each row's chunk sums exact in int32. Then, as the scalar loop: acc += d * isum chunk by chunk, times
// the row's scale at the end.
inline void tile_q8_i8(const uint8_t* const* rows, const uint8_t* const* sc, const ActInt8& a, int t, float* y) {
  const int8_t* q = a.q.data() + size_t(t) * size_t(a.chunks) * 16;
  const float* d = a.d.data() + size_t(t) * size_t(a.chunks);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t c = 0; c < a.chunks; c += 2) {
    const bool pair = c + 1 < a.chunks;  // else the upper halves are 0
    const __m256i qv = pair ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + c * 16))
                            : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c * 16)));
    __m256i p[8];
    for (int r = 0; r < 8; ++r) {
      const uint8_t* wp = rows[r] + c * 16;
      const __m256i w = pair ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp))
                             : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp)));
      p[r] = dot_us(_mm256_abs_epi8(w), _mm256_sign_epi8(qv, w));
    }
    __m256i first, second;
    half_sums8(p, &first, &second);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(d[c]), _mm256_cvtepi32_ps(first)));
    if (pair) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(d[c + 1]), _mm256_cvtepi32_ps(second)));
  }
  float s[8];
  for (int r = 0; r < 8; ++r) s[r] = scale_at<DType::Q8>(sc[r], 0);
  _mm256_storeu_ps(y, _mm256_mul_ps(acc, _mm256_loadu_ps(s)));
}

template <DType D>
void run_i8(const ActInt8& a, int T, const Weight& W, int64_t n0, int64_t n1, float* y) {
  const int64_t N = W.rows;
  const size_t rb = W.row_bytes(), sb = W.scale_bytes() / size_t(N);
  const uint8_t* data = static_cast<const uint8_t*>(W.data);
  const uint8_t* scales = static_cast<const uint8_t*>(W.scales);
  constexpr int64_t kBlock = 16;  // rows kept in cache while every token passes over them
  for (int64_t b0 = n0; b0 < n1; b0 += kBlock) {
    const int64_t b1 = std::min(n1, b0 + kBlock);
    for (int t = 0; t < T; ++t) {
      float* yt = y + size_t(t) * size_t(N);
      int64_t n = b0;
      for (; n < b1; n += 8) {
        const int rr = int(std::min<int64_t>(8, b1 - n));
        const uint8_t* rows[8];
        const uint8_t* sc[8];
        for (int i = 0; i < 8; ++i) {
          const int64_t ni = n + std::min(i, rr - 1);  // a short tile repeats its last row
          rows[i] = data + size_t(ni) * rb, sc[i] = scales + size_t(ni) * sb;
        }
        float out[8];
        if (D == DType::Q4)
          tile_q4_i8(rows, sc, a, t, out);
        else
          tile_q8_i8(rows, sc, a, t, out);
        for (int i = 0; i < rr; ++i) yt[n + i] = out[i];
      }
    }
  }
}
#endif

}  // namespace

void matmul_rows_quant_i8(const ActInt8& a, int T, const Weight& W, int64_t n0, int64_t n1, float* y) {
#ifdef MISTRAL_QUANT_SIMD
  if (W.dtype == DType::Q8) return run_i8<DType::Q8>(a, T, W, n0, n1, y);
  if (W.dtype == DType::Q4 && W.group == kQ4Group) return run_i8<DType::Q4>(a, T, W, n0, n1, y);
#endif
  matmul_rows_quant_i8_scalar(a, T, W, n0, n1, y);
}

void matmul_rows_quant_i8_scalar(const ActInt8& a, int T, const Weight& W, int64_t n0, int64_t n1, float* y) {
  // Per chunk the exact integer sum, times d, added in chunk order (Q4 times the group's scale).
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
