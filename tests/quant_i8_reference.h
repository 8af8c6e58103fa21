// Reference for the int8 path of the quantized GEMV (kernels/quant_gemv.cuh, QuantXMath::i8; Q8 and Q4),
// written from its definition, not from the kernel (used by tests/test_cuda.cpp and
// tools/quant_gemv_host_check.cu):
//   - a token row x [K] is cut into the weights' 16-byte chunks (E = 32 elements of Q4, 16 of Q8; x past
//     K is 0); in fp32, for each chunk: a = max |x_k|; d = a * RN(1 / 127) and inv = min(127 / a, FLT_MAX)
//     (a rounded product and an IEEE division; both 0 when a is 0; d NaN when an element is inf or NaN, which makes y
//     NaN whatever the chunk's q, so they are left unspecified, 0 here); q_k = x_k * inv rounded once to the nearest
//     integer, ties to even (|q_k| <= 127);
//   - each chunk's exact integer sum: Q4 sum (code - 8) q_k, Q8 sum code q_k;
//   - y = sum over chunks of scale * (d * isum), d * isum rounded to fp32 (Q4: the chunk's group scale;
//     Q8: the row scale).
// The kernel adds the chunks in fp32 in its own order, so it matches this double-precision sum to a few
// fp32 ulps of sum |scale d isum|. Against the exact product x w, the difference is below
// bound = sum over chunks of |scale| (d / 2) sum |code| (each q_k within half a step of x_k inv).
#pragma once
#include <cmath>
#include <cstdint>

#include "mistral/dtype.h"
#include "mistral/quant.h"
#include "quant_chunk_reference.h"

namespace quant_i8_ref {

// One chunk of x (x [K], elements c0 .. c0 + E - 1): q [E] and d.
inline void quantize_chunk(const float* x, int K, int c0, int E, int* q, float* d) {
  float a = 0.f;
  bool finite = true;
  for (int i = 0; i < E; ++i) {
    const float v = c0 + i < K ? std::fabs(x[c0 + i]) : 0.f;
    finite = finite && v <= 3.40282347e38f;  // false for inf and NaN
    a = std::fmax(a, v);
  }
  const float inv = finite && a > 0.f ? std::fmin(127.f / a, 3.40282347e38f) : 0.f;
  *d = !finite ? NAN : a > 0.f ? a * 0x1.020408p-7f : 0.f;  // the float nearest 1 / 127
  for (int i = 0; i < E; ++i) {
    const float v = c0 + i < K ? x[c0 + i] : 0.f;
    // v * inv rounded once (fma: the exact product), ties to even, in the default rounding mode.
    q[i] = finite ? int(std::nearbyint(double(v) * double(inv))) : 0;
  }
}

// y for one packed row (row: its bytes; scales: its scales, fp32 for Q8, fp16 bits for Q4) and one token
// row x [K]; *mag = sum over chunks of |scale d isum| (the size of the fp32 sums' rounding); *bound the
// quantization bound above.
inline double dot(mistral::DType t, const uint8_t* row, const void* scales, const float* x, int K, double* mag,
                  double* bound = nullptr) {
  const bool q8 = t == mistral::DType::Q8;
  const int E = q8 ? 16 : 32;
  double y = 0, m = 0, b = 0;
  for (int c0 = 0; c0 < K; c0 += E) {
    int q[32];
    float d;
    quantize_chunk(x, K, c0, E, q, &d);
    long long isum = 0, acode = 0;
    for (int i = 0; i < E && c0 + i < K; ++i) {
      isum += (long long)quant_chunk_ref::code(t, row, c0 + i) * q[i];
      acode += std::abs(quant_chunk_ref::code(t, row, c0 + i));
    }
    const double s = quant_chunk_ref::chunk_scale(t, scales, c0);
    const double v = s * double(float(double(d) * double(isum)));  // d * isum rounded to fp32
    y += v, m += std::fabs(v);
    b += std::fabs(s) * double(d) / 2 * double(acode);
  }
  if (mag) *mag = m;
  if (bound) *bound = b;
  return y;
}

}  // namespace quant_i8_ref
