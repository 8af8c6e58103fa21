// Runs the per-lane / per-chunk code of kernels/quant_gemv.cu on the CPU (no GPU needed), emulating the
// two kernels' block structure, with exact-size buffers so that AddressSanitizer reports any read past the
// packed weights, the scales or x (T = 1 cases end x exactly at K) and any write past the output.
// Checks the GEMV against dequantize_row in double (relative to sum |x w|) over every split (1, 2, 4, 8),
// partial chunks and groups, odd N and misaligned x; launches of several matrices and SwiGLU pairs bit
// for bit against single launches; and the dequantizer bit for bit against
// f32_to_f16(dequantize_row), writing chunks in reverse order so that a write past a row's end survives.
// Then the fp16 path (QuantXMath::f16, Q8 and Q4) the same way, its staged copy of x exact-size with NaN in the
// padding, against tests/quant_half_reference.h (to 2e-6 of the chunk magnitudes) and within its bound of
// the exact product; token rows 1e-3 smaller and with an element of 3000 among the random ones. Then the
// int8 path (QuantXMath::i8, Q8 and Q4): its staging chunk by chunk against tests/quant_i8_reference.h
// (each q at its byte, d, the accumulator start; chunks of zeros, inf, NaN, a huge value; with the fused
// norm's weight the same bytes as staging x * g, and the sum of squares in order), then every launch
// shape above against the reference (to 2e-6 of its chunk magnitudes) and within its quantization bound
// of the exact product. Swapping the Q4 nibbles' x words or the offset's factor 8 fails ~60,000 checks.
// Built by CMake with the CUDA backend and run by ctest (QuantGemvHostCheck). Under the sanitizers
// (after building mistral_core in build-gpu):
//   nvcc -std=c++17 -O1 -g -arch=sm_90 -Ikernels -Iinclude -Xcompiler -fsanitize=address \
//     -Xcompiler -fsanitize=undefined -c tools/quant_gemv_host_check.cu -o /tmp/qhc.o &&
//   g++ -fsanitize=address,undefined /tmp/qhc.o build-gpu/libmistral_core.a -L"$(dirname "$(which nvcc)")/../lib64" \
//     -lcudart_static -ldl -lrt -lpthread -o /tmp/qhc && /tmp/qhc
#define MISTRAL_QUANT_GEMV_HOST 1
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "../kernels/quant_gemv.cu"
#include "../tests/quant_half_reference.h"
#include "../tests/quant_i8_reference.h"

using namespace mistral;
using namespace mistral::cuda;

namespace {

int g_failures = 0;
int g_last_mode = 0;  // x mode of the last emulated launch
QuantXMath g_xmath = QuantXMath::f32;  // the arithmetic of the emulated launches (f16, i8: Q8 and Q4)
const char* mode_name(int m) {
  return m == kXInt8 ? "int8" : m == kXHalf ? "fp16" : m == kXStaged ? "staged" : m == kXVec4 ? "float4" : "scalar";
}

// quant_gemv_kernel's grid, one block after another: lanes summed in order (for the shuffle reduction),
// then the split partials and the outputs, by the kernel's own functions.
// kXHalf: x is the staged fp16 copy (as __half*) and fac its rows' 2^-sh.
template <DType D, int T, int kX, bool kSwiglu>
void emulate_blocks(const float* x, int xstride, const QuantParts& ps, int K, int group, const float* fac = nullptr) {
  const int blocks = ps.first_block[kSwiglu ? 1 : ps.count];
  const int gshift = group_shift(group);
  const CodeTable codes = code_table(D);
  for (int b = 0; b < blocks; ++b) {
    float part[kWarps][kRows][T];
    for (int warp = 0; warp < kWarps; ++warp) {
      const WarpJob j = warp_job<kSwiglu>(ps, b, warp);
      float sum[kRows][T] = {};
      for (int lane = 0; lane < 32; ++lane) {
        float acc[kRows][T] = {};
        if (j.pair < pairs_of<kSwiglu>(ps.part[j.part].n)) {
          const RowPair rp = row_pair<D, kSwiglu>(ps, j.part, j.pair, K, group);
          const int c_first = (warp % j.split) * 32 + lane, c_stride = j.split * 32;
          uint4 q[kPrefetch][kRows];
          constexpr int E = Format<D>::kElems;
          if constexpr (kX == kXInt8) {
            load_batch<D>(rp, c_first, c_stride, (K + E - 1) / E, q);
            lane_dot_i8<D, T>(reinterpret_cast<const uint8_t*>(x), K, rp, q, group, gshift, c_first, c_stride, acc);
          } else if constexpr (kX == kXHalf) {
            load_batch<D>(rp, c_first, c_stride, (K + E - 1) / E, q);
            lane_dot_half<D, T>(reinterpret_cast<const __half*>(x), xstride, rp, q, K, group, gshift, c_first, c_stride,
                                acc);
            for (int r = 0; r < kRows; ++r)
              for (int t = 0; t < T; ++t) acc[r][t] *= fac[t];
          } else {
            load_batch<D>(rp, c_first, c_stride, K / E, q);
            lane_dot<D, T, kX>(x, xstride, rp, q, codes.v, K, group, gshift, c_first, c_stride, acc);
          }
        }
        for (int r = 0; r < kRows; ++r)
          for (int t = 0; t < T; ++t) sum[r][t] += acc[r][t];
      }
      for (int r = 0; r < kRows; ++r)
        for (int t = 0; t < T; ++t) part[warp][r][t] = sum[r][t];
    }
    for (int i = 0; i < kThreads; ++i) write_output<D, T, kSwiglu>(ps, warp_job<kSwiglu>(ps, b, i / 32), part, i);
  }
}

// stage_x_i8's work on one token row xt [K] into its copy `row`: chunk after chunk (in reverse, so that a
// write past a chunk's bytes would be overwritten or show), each chunk's kI8Lanes lanes one after another
// through the kernel's lane helpers, the shuffles as loops over the chunk's lanes (xor partners: lane
// sub ^ 1 for Q4's exchange). Returns the sum of x^2 over the row (with gn), the lanes' shares added.
template <DType D>
float emulate_stage_row_i8(const float* xt, int K, bool vec, int chunks, uint8_t* row, const float* gn) {
  constexpr int G = kI8Lanes<D>;
  float ss_all = 0.f;
  for (int c = chunks; c-- > 0;) {
    float4 f[G];
    float a = 0.f;
    for (int sub = 0; sub < G; ++sub) {
      float ss = 0.f;
      f[sub] = i8_lane_load<D>(xt, K, vec, c, sub, gn, ss);
      ss_all += ss;
      a = std::fmax(a, i8_lane_max(f[sub]));
    }
    const I8Scale sc = i8_scale(a);
    uint32_t w[G], out[G];
    for (int sub = 0; sub < G; ++sub) w[sub] = i8_lane_word(f[sub], sc);
    int qsum = 0;
    for (int sub = 0; sub < G; ++sub) {
      out[sub] = D == DType::Q8 ? w[sub] : i8_recv_word(w[sub], i8_send(w[sub ^ 1], sub ^ 1), sub);
      if (D != DType::Q8) qsum += dp4a(out[sub], 0x01010101u, 0);
    }
    for (int sub = 0; sub < G; ++sub) *i8_word_at<D>(row, c, sub) = out[sub];
    i8_write_meta<D>(row, chunks, c, sc.d, qsum);
  }
  return ss_all;
}

// quant_gemv_kernel's grid, one block after another: lanes summed in order (for the shuffle reduction),
// then the split partials and the outputs, by the kernel's own functions; x staged in an exact-size
// copy laid out as stage_x lays it out (its padding NaN, so that reading it shows) when the launcher
// would stage it. Returns the x mode.
template <DType D, int T, bool kSwiglu>
int emulate_launch(const float* x, const QuantParts& ps, int K, int group) {
  if constexpr (D != DType::NF4) {
    if (x_path<D>(T, K, g_xmath, ps.vec_x) == kXInt8) {  // the int8 path: stage_x_i8's copy, exact size
      constexpr int E = Format<D>::kElems;
      const int chunks = (K + E - 1) / E, row_bytes = i8_row_bytes<D>(K);
      std::vector<uint8_t> xb(size_t(T) * size_t(row_bytes), 0xA5);  // padding: never read
      for (int t = 0; t < T; ++t)
        emulate_stage_row_i8<D>(x + size_t(t) * K, K, ps.vec_x, chunks, xb.data() + size_t(t) * row_bytes, nullptr);
      emulate_blocks<D, T, kXInt8, kSwiglu>(reinterpret_cast<const float*>(xb.data()), row_bytes, ps, K, group);
      return kXInt8;
    }
    if (x_path<D>(T, K, g_xmath, ps.vec_x) == kXHalf) {  // the fp16 path: stage_x_half's copy, padding NaN
      const int stride = half_stride<D>(K);
      std::vector<uint16_t> xh(size_t(T) * size_t(stride), 0x7E00);
      float fac[T];
      for (int t = 0; t < T; ++t) {
        const float* xt = x + size_t(t) * K;
        float m = 0.f;
        for (int e = 0; e < K; ++e) m = fmaxf(m, fabsf(xt[e]));
        const int sh = half_shift<D>(m);
        fac[t] = pow2f(-sh);
        const int runs = stride / half_chunk_stride<D>() * (Format<D>::kElems / 8);
        for (int g = 0; g < runs; ++g)
          stage_run_half<D>(xt, K, ps.vec_x, pow2f(sh), g, reinterpret_cast<__half*>(xh.data()) + size_t(t) * stride);
      }
      emulate_blocks<D, T, kXHalf, kSwiglu>(reinterpret_cast<const float*>(xh.data()), stride, ps, K, group, fac);
      return kXHalf;
    }
  }
  if (stage_bytes(T, K) > 0) {
    const int stride = staged_stride(K);
    std::vector<float> xs(size_t(T) * size_t(stride), NAN);
    for (int t = 0; t < T; ++t)
      for (int e = 0; e < K; ++e) xs[size_t(t) * stride + size_t(staged_index(e))] = x[size_t(t) * K + e];
    emulate_blocks<D, T, kXStaged, kSwiglu>(xs.data(), stride, ps, K, group);
    return kXStaged;
  }
  if (ps.vec_x) {
    emulate_blocks<D, T, kXVec4, kSwiglu>(x, K, ps, K, group);
    return kXVec4;
  }
  emulate_blocks<D, T, kXScalar, kSwiglu>(x, K, ps, K, group);
  return kXScalar;
}

// Plans and emulates one launch as quant_gemv_multi_cuda / quant_gemv_swiglu_cuda do; returns part 0's split.
template <DType D, int T, bool kSwiglu>
int emulate(const float* x, const void* const* data, const void* const* scales, const int* N, float* const* y,
            int parts, int K, int n_sms) {
  const int group = int(quant_group(D, K));
  QuantParts ps;
  if (!plan_launch<kSwiglu>(x, data, scales, N, y, parts, D, K, group, n_sms, &ps)) {
    std::printf("FAIL: plan_launch refused a valid launch\n");
    ++g_failures;
    return 0;
  }
  g_last_mode = emulate_launch<D, T, kSwiglu>(x, ps, K, group);
  return ps.part[0].split;
}

template <DType D, int T>
int emulate_gemv(const float* x, const uint8_t* data, const void* scales, int N, int K, float* y, int n_sms) {
  const void* d = data;
  return emulate<D, T, false>(x, &d, &scales, &N, &y, 1, K, n_sms);
}

struct Packed {  // exact-size copies of a quantized matrix
  QuantizedMatrix q;
  uint8_t* data;
  void* scales;
  Packed(DType t, int N, int K, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, 0.05f);
    std::vector<float> w(size_t(N) * K);
    for (auto& v : w) v = nd(rng);
    q = quantize_matrix(t, DType::F32, w.data(), N, K, 1);
    data = static_cast<uint8_t*>(std::aligned_alloc(16, q.data.size()));  // sizes are multiples of 16
    std::memcpy(data, q.data.data(), q.data.size());
    scales = std::malloc(q.scales.size());
    std::memcpy(scales, q.scales.data(), q.scales.size());
  }
  ~Packed() {
    std::free(data);
    std::free(scales);
  }
  std::vector<float> row(int n) const {
    std::vector<float> r(size_t(q.cols));
    const size_t rb = quant_row_bytes(q.dtype, q.cols), sb = q.scales.size() / size_t(q.rows);
    dequantize_row(q.dtype, q.data.data() + size_t(n) * rb, q.scales.data() + size_t(n) * sb, q.cols, r.data());
    return r;
  }
};

template <DType D, int T>
void check_gemv(int N, int K, int n_sms, bool misalign, std::mt19937& rng) {
  Packed w(D, N, K, rng);
  std::normal_distribution<float> nd(0.f, 1.f);
  const size_t nx = size_t(T) * K + (misalign ? 1 : 0);
  float* xbuf = static_cast<float*>(std::malloc(nx * sizeof(float)));
  float* x = xbuf + (misalign ? 1 : 0);
  for (size_t i = 0; i < size_t(T) * K; ++i) x[i] = nd(rng);
  // Token rows of other sizes: 1e-3 smaller (row 1), and one element of 3000 (row 2, a "massive activation").
  if (T >= 2)
    for (int k = 0; k < K; ++k) x[size_t(K) + size_t(k)] *= 1e-3f;
  if (T >= 3) x[2 * size_t(K) + size_t(K / 3)] = 3000.f;
  float* y = static_cast<float*>(std::malloc(size_t(T) * N * sizeof(float)));
  for (size_t i = 0; i < size_t(T) * N; ++i) y[i] = NAN;
  const int split = emulate_gemv<D, T>(x, w.data, w.scales, N, K, y, n_sms);
  if (g_last_mode == kXStaged) {  // the shared-memory copy must not change a bit: x read from global memory
    std::vector<float> y2(size_t(T) * N, NAN);
    QuantParts ps;
    const void* d = w.data;
    const void* sc = w.scales;
    float* yp = y2.data();
    const int group = int(quant_group(D, K));
    if (plan_launch<false>(x, &d, &sc, &N, &yp, 1, D, K, group, n_sms, &ps)) {
      if (ps.vec_x)
        emulate_blocks<D, T, kXVec4, false>(x, K, ps, K, group);
      else
        emulate_blocks<D, T, kXScalar, false>(x, K, ps, K, group);
      for (size_t i = 0; i < y2.size(); ++i)
        if (std::memcmp(&y2[i], &y[i], 4) != 0 && g_failures++ < 10)
          std::printf("FAIL staged %s T %d N %d K %d: y[%zu] = %g, from global x %g\n", dtype_name(D), T, N, K, i,
                      y[i], y2[i]);
    }
  }
  // fp32 paths: against the dequantized row in double, to 1e-6 of sum |x w|. The fp16 path: against
  // quant_half_ref (the fp16 chunk sums emulated from their definition) to 2e-6 of its chunk magnitudes,
  // and within its documented bound of the exact product, 17 * 2^-11 of sum |x w|.
  const bool half = g_last_mode == kXHalf, i8 = g_last_mode == kXInt8;
  const size_t rb = quant_row_bytes(D, K), sb = w.q.scales.size() / size_t(N);
  double worst = 0, worst_half = 0;
  for (int n = 0; n < N; ++n) {
    const std::vector<float> r = w.row(n);
    for (int t = 0; t < T; ++t) {
      const float* xt = x + size_t(t) * K;
      double ref = 0, mag = 0;
      for (int k = 0; k < K; ++k) {
        const double p = double(r[size_t(k)]) * xt[k];
        ref += p, mag += std::fabs(p);
      }
      const double got = y[size_t(t) * N + n];
      double e = std::fabs(got - ref) / (mag > 0 ? mag : 1.0);
      if (i8) {  // within the quantization bound of the exact product, then to 2e-6 of the int8 reference
        double imag = 0, bound = 0;
        const double iref = quant_i8_ref::dot(D, w.q.data.data() + size_t(n) * rb, w.q.scales.data() + size_t(n) * sb,
                                              xt, K, &imag, &bound);
        const double ei = std::fabs(got - iref) / (imag > 0 ? imag : 1.0);
        if (!(ei <= 2e-6) && g_failures++ < 10)
          std::printf("FAIL gemv int8 %s T %d N %d K %d: y[%d][%d] = %.9g, int8 reference %.9g\n", dtype_name(D), T, N,
                      K, t, n, got, iref);
        worst_half = std::max(worst_half, ei);
        e = std::fabs(got - ref) / (bound + 1e-6 * mag + 1e-30);  // a fraction of the bound
      }
      if (!(e <= (half ? 17.0 / 2048 : i8 ? 1.0 : 1e-6)) && g_failures++ < 10)
        std::printf("FAIL gemv %s T %d N %d K %d: y[%d][%d] = %g, reference %g\n", dtype_name(D), T, N, K, t, n, got,
                    ref);
      worst = std::max(worst, e);
      if (half) {
        double hmag = 0;
        const double href =
            quant_half_ref::dot(D, w.q.data.data() + size_t(n) * rb, w.q.scales.data() + size_t(n) * sb, xt, K, &hmag);
        const double eh = std::fabs(got - href) / (hmag > 0 ? hmag : 1.0);
        if (!(eh <= 2e-6) && g_failures++ < 10)
          std::printf("FAIL gemv fp16 %s T %d N %d K %d: y[%d][%d] = %.9g, fp16 reference %.9g\n", dtype_name(D), T, N,
                      K, t, n, got, href);
        worst_half = std::max(worst_half, eh);
      }
    }
  }
  std::printf("gemv    %-4s T %d N %4d K %5d split %d x %-6s max |d| / sum|xw| %.1e", dtype_name(D), T, N, K, split,
              mode_name(g_last_mode), worst);
  if (half) std::printf(", against the fp16 reference %.1e", worst_half);
  if (i8) std::printf(" (int8: max |d| / bound), against the int8 reference %.1e", worst_half);
  std::printf("\n");
  std::free(xbuf);
  std::free(y);
}

// Bit patterns differing between a and b (n floats).
int bit_diffs(const float* a, const float* b, size_t n) {
  int bad = 0;
  for (size_t i = 0; i < n; ++i) bad += std::memcmp(a + i, b + i, 4) != 0;
  return bad;
}

// Three matrices in one launch (q, k, v shapes): each part bit for bit its own single launch (so the
// exact-size buffers also check the parts' reads and writes).
template <DType D, int T>
void check_multi(int K, const int (&N)[3], int n_sms, std::mt19937& rng) {
  std::vector<std::unique_ptr<Packed>> w;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(T) * K);
  for (auto& v : x) v = nd(rng);
  const void* data[3];
  const void* scales[3];
  std::vector<std::vector<float>> multi(3), single(3);
  float* y[3];
  for (int i = 0; i < 3; ++i) {
    w.emplace_back(new Packed(D, N[i], K, rng));
    data[i] = w.back()->data, scales[i] = w.back()->scales;
    multi[size_t(i)].assign(size_t(T) * N[i], NAN);
    single[size_t(i)].assign(size_t(T) * N[i], NAN);
    y[i] = multi[size_t(i)].data();
  }
  emulate<D, T, false>(x.data(), data, scales, N, y, 3, K, n_sms);
  int bad = 0;
  for (int i = 0; i < 3; ++i) {
    emulate_gemv<D, T>(x.data(), w[size_t(i)]->data, w[size_t(i)]->scales, N[i], K, single[size_t(i)].data(), n_sms);
    bad += bit_diffs(multi[size_t(i)].data(), single[size_t(i)].data(), multi[size_t(i)].size());
  }
  g_failures += bad;
  std::printf("multi   %-4s T %d N %d/%d/%d K %5d  %s\n", dtype_name(D), T, N[0], N[1], N[2], K,
              bad ? "FAIL (parts differ from single launches)" : "ok (bit for bit single launches)");
}

// Gate, up and SwiGLU in one launch: bit for bit two single launches and swiglu_value.
template <DType D, int T>
void check_swiglu(int N, int K, int n_sms, std::mt19937& rng) {
  Packed g(D, N, K, rng), u(D, N, K, rng);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(T) * K);
  for (auto& v : x) v = nd(rng);
  std::vector<float> out(size_t(T) * N, NAN), yg(out.size(), NAN), yu(out.size(), NAN);
  const void* data[2] = {g.data, u.data};
  const void* scales[2] = {g.scales, u.scales};
  const int n[2] = {N, N};
  float* y[2] = {out.data(), out.data()};
  emulate<D, T, true>(x.data(), data, scales, n, y, 2, K, n_sms);
  emulate_gemv<D, T>(x.data(), g.data, g.scales, N, K, yg.data(), n_sms);
  emulate_gemv<D, T>(x.data(), u.data, u.scales, N, K, yu.data(), n_sms);
  for (size_t i = 0; i < yg.size(); ++i) yg[i] = swiglu_value(yg[i], yu[i]);
  const int bad = bit_diffs(out.data(), yg.data(), out.size());
  g_failures += bad;
  std::printf("swiglu  %-4s T %d N %4d K %5d  %s\n", dtype_name(D), T, N, K,
              bad ? "FAIL (differs from gemv + swiglu)" : "ok (bit for bit gemv + swiglu)");
}

template <DType D>
void check_dequant(int N, int K, std::mt19937& rng) {
  Packed w(D, N, K, rng);
  const size_t n_out = size_t(N) * K;
  const bool vec = K % 8 == 0;  // aligned_alloc gives a 16-byte aligned output
  __half* out = static_cast<__half*>(vec ? std::aligned_alloc(16, n_out * 2) : std::malloc(n_out * 2));
  uint16_t* bits = reinterpret_cast<uint16_t*>(out);
  for (size_t i = 0; i < n_out; ++i) bits[i] = 0x7E00;  // NaN: every element must be written
  constexpr int E = Format<D>::kElems;
  const size_t total = size_t(N) * size_t((K + E - 1) / E);
  const CodeTable codes = code_table(D);
  const int group = int(quant_group(D, K));
  for (size_t i = total; i-- > 0;) {
    if (vec)
      dequant_chunk<D, true>(w.data, w.scales, codes.v, K, group, i, out);
    else
      dequant_chunk<D, false>(w.data, w.scales, codes.v, K, group, i, out);
  }
  int bad = 0;
  for (int n = 0; n < N; ++n) {
    const std::vector<float> r = w.row(n);
    for (int k = 0; k < K; ++k)
      if (bits[size_t(n) * K + k] != f32_to_f16(r[size_t(k)]) && bad++ < 3)
        std::printf("FAIL dequant %s N %d K %d: [%d][%d] = %04x, want %04x\n", dtype_name(D), N, K, n, k,
                    bits[size_t(n) * K + k], f32_to_f16(r[size_t(k)]));
  }
  g_failures += bad;
  std::printf("dequant %-4s N %4d K %5d %s stores  %s\n", dtype_name(D), N, K, vec ? "16-byte" : "2-byte",
              bad ? "FAIL" : "ok");
  std::free(out);
}

// The int8 path's staging (stage_x_i8's lanes, emulate_stage_row_i8) against quant_i8_ref::quantize_chunk,
// chunk by chunk: each q at its place (i8_pos), d's bits, the accumulator start (1.5 * 2^23 minus 8 times
// the chunk's sum of q for Q4); a chunk of zeros, a chunk with inf, one with NaN (d NaN: its q do not
// matter), one with a huge element, one with tiny ones (127 / max would overflow); and with the fused
// norm's weight: the same bytes as staging the rounded products x * g, and the sum of squares.
template <DType D>
void check_stage_i8(std::mt19937& rng) {
  constexpr int E = Format<D>::kElems;
  std::normal_distribution<float> nd(0.f, 1.f);
  int bad = 0, cases = 0;
  for (int K : {1, 17, 31, 33, 100, 333, 4096, 4096 + 96}) {
    const int chunks = (K + E - 1) / E, row_bytes = i8_row_bytes<D>(K);
    std::vector<float> x(static_cast<size_t>(K)), g(x.size()), xg(x.size());
    for (auto& v : x) v = nd(rng) * 3.f;
    for (auto& v : g) v = 1.f + 0.3f * nd(rng);
    if (chunks >= 4) {
      for (int i = 0; i < E && E + i < K; ++i) x[size_t(E + i)] = 0.f;  // chunk 1: zeros
      x[size_t(2 * E + 3)] = INFINITY, x[size_t(3 * E + 1)] = NAN;
    }
    if (chunks >= 5) x[size_t(4 * E + 5)] = 3.0e38f;
    if (chunks >= 6)  // chunk 5: largest |x| 1e-37 (127 / 1e-37 is past FLT_MAX), one subnormal
      for (int i = 0; i < E && 5 * E + i < K; ++i) x[size_t(5 * E + i)] = i == 3 ? 1e-37f : i == 4 ? -1e-40f : 0.f;
    for (int k = 0; k < K; ++k) xg[size_t(k)] = x[size_t(k)] * g[size_t(k)];
    for (bool vec : {false, true}) {
      if (vec && K % 4 != 0) continue;
      std::vector<uint8_t> a(size_t(row_bytes), 0xA5), b(size_t(row_bytes), 0xA5);
      emulate_stage_row_i8<D>(x.data(), K, vec, chunks, a.data(), nullptr);
      const float ssb = emulate_stage_row_i8<D>(x.data(), K, vec, chunks, b.data(), g.data());
      double ss_ref = 0;
      for (int k = 0; k < K; ++k) ss_ref += double(x[size_t(k)]) * x[size_t(k)];
      const bool ss_ok = std::isfinite(ss_ref) ? std::fabs(ssb - ss_ref) <= 1e-6 * ss_ref : !std::isfinite(ssb);
      if (!ss_ok && bad++ < 5)
        std::printf("FAIL stage i8 %s K %d: sum of squares %g, want %g\n", dtype_name(D), K, ssb, ss_ref);
      for (int pass = 0; pass < 2; ++pass) {
        const std::vector<float>& src = pass == 0 ? x : xg;
        const std::vector<uint8_t>& got = pass == 0 ? a : b;
        for (int c = 0; c < chunks; ++c) {
          int q[32];
          float d;
          quant_i8_ref::quantize_chunk(src.data(), K, c * E, E, q, &d);
          int s = 0;
          const bool finite = !std::isnan(d);  // else the chunk's q do not matter (its d makes y NaN)
          for (int i = 0; i < E && finite; ++i) {
            s += q[i];
            const uint8_t want = uint8_t(int8_t(q[i]));
            const uint8_t have = got[size_t(c) * i8_chunk_bytes<D>() + size_t(i8_pos<D>(i))];
            if (have != want && bad++ < 5)
              std::printf("FAIL stage i8 %s K %d%s: chunk %d element %d = %d, want %d\n", dtype_name(D), K,
                          pass ? " (norm)" : "", c, i, int(int8_t(have)), q[i]);
          }
          uint32_t meta[2];
          std::memcpy(meta, got.data() + size_t(chunks) * i8_chunk_bytes<D>() + 8 * size_t(c), 8);
          const uint32_t start = D == DType::Q8 ? kI8MagicBits : kI8MagicBits - 8u * uint32_t(s);
          float dm;
          std::memcpy(&dm, &meta[0], 4);
          const bool d_ok = std::isnan(d) ? std::isnan(dm) : std::memcmp(&dm, &d, 4) == 0;
          if ((!d_ok || (finite && meta[1] != start)) && bad++ < 5)
            std::printf("FAIL stage i8 %s K %d%s: chunk %d d %g start %08x, want %g %08x\n", dtype_name(D), K,
                        pass ? " (norm)" : "", c, dm, meta[1], d, start);
          ++cases;
        }
      }
    }
  }
  g_failures += bad;
  std::printf("stage   %-4s int8 copy of x: %d chunks  %s\n", dtype_name(D), cases, bad ? "FAIL" : "ok");
}

template <DType D>
void check_all(std::mt19937& rng) {
  for (int K : {1, 17, 31, 33, 40, 64, 128, 200, 333, 4096, 4096 + 96})
    for (int N : {1, 7, 130})
      for (int sms : {1, 132}) {
        check_gemv<D, 1>(N, K, sms, false, rng);
        check_gemv<D, 3>(N, K, sms, false, rng);
        check_gemv<D, 4>(N, K, sms, K % 4 == 0, rng);
      }
  // Splits 2 / 4 / 8 and Mistral-like shapes.
  check_gemv<D, 1>(130, 3000, 132, false, rng);
  check_gemv<D, 4>(131, 1500, 132, false, rng);
  check_gemv<D, 3>(129, 1501, 132, true, rng);
  check_gemv<D, 2>(4096, 4096, 132, false, rng);
  check_gemv<D, 1>(1024, 4096, 132, false, rng);
  check_gemv<D, 1>(513, 14336, 132, false, rng);
  // Several matrices per launch, and SwiGLU pairs.
  for (int K : {40, 100, 333, 4096}) {
    check_multi<D, 1>(K, {257, 33, 8}, 132, rng);
    check_multi<D, 4>(K, {7, 130, 1}, 132, rng);
    check_swiglu<D, 1>(301, K, 132, rng);
    check_swiglu<D, 3>(7, K, 1, rng);
  }
  check_multi<D, 1>(4096, {4096, 1024, 1024}, 132, rng);
  check_swiglu<D, 1>(1433, 4096, 132, rng);
  for (int K : {1, 8, 17, 31, 33, 40, 64, 200, 333, 4096 + 96})
    for (int N : {1, 7, 130}) check_dequant<D>(N, K, rng);
}

}  // namespace

int main() {
  std::mt19937 rng(1);
  check_all<DType::Q8>(rng);
  check_all<DType::NF4>(rng);
  check_all<DType::Q4>(rng);
  g_xmath = QuantXMath::f16;  // the fp16 path: Q8 and Q4
  check_all<DType::Q8>(rng);
  check_all<DType::Q4>(rng);
  g_xmath = QuantXMath::i8;  // the int8 path: Q8 and Q4
  check_stage_i8<DType::Q8>(rng);
  check_stage_i8<DType::Q4>(rng);
  check_all<DType::Q8>(rng);
  check_all<DType::Q4>(rng);
  std::printf("%s (%d failures)\n", g_failures ? "FAILED" : "all passed", g_failures);
  return g_failures ? 1 : 0;
}
