// Reference for the fp16 path of the quantized GEMV (kernels/quant_gemv.cuh, QuantXMath::f16; Q8 and Q4),
// written from its definition, not from the kernel (used by tests/test_cuda.cpp and
// tools/quant_gemv_host_check.cu):
//   - token row x [K]: m = max |x_k|, p the exponent with m < 2^p (frexp), sh = min(B - p, 120) (0 when m
//     is 0 or not finite), B = 8 for Q4 and 5 for Q8; xh_k = fp16(x_k * 2^sh), round to nearest even;
//   - each 16-byte chunk of a row (E = 32 elements of Q4, 16 of Q8; x past K is 0) is summed in two fp16
//     accumulators, lo and hi, from 0, each step one fused multiply-add rounded once to fp16:
//     Q4: word j (elements 8j .. 8j+7), i = 0..3: lo += q[8j+i] xh[8j+i], hi += q[8j+i+4] xh[8j+i+4];
//     Q8: word j (elements 4j .. 4j+3), i = 0..1: lo += q[4j+i] xh[4j+i], hi += q[4j+i+2] xh[4j+i+2];
//     q is the code value: Q4 code - 8, Q8 the int8;
//   - y = 2^-sh * sum over chunks of scale * (lo + hi) (Q4: the chunk's group scale; Q8: the row scale).
// The kernel adds the chunks in fp32 in its own order, so it matches this double-precision sum to a few
// fp32 ulps of sum |scale (lo + hi)|.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mistral/dtype.h"
#include "mistral/quant.h"
#include "quant_chunk_reference.h"

namespace quant_half_ref {

// v rounded to the nearest fp16 value (ties to even; exact, no double rounding through fp32), as a double.
inline double round_f16(double v) {
  if (v == 0 || !std::isfinite(v)) return v;
  int e;
  (void)std::frexp(v, &e);                                    // |v| in [2^(e-1), 2^e)
  const double ulp = std::ldexp(1.0, std::max(e - 11, -24));  // fp16: 11 significant bits, subnormals 2^-24
  const double r = std::nearbyint(v / ulp) * ulp;             // default rounding mode: to nearest even
  return std::fabs(r) >= 65520.0 ? std::copysign(INFINITY, v) : r;
}

// The staging shift of a token row whose largest |x| is m.
inline int shift(mistral::DType t, float m) {
  if (!(m > 0.f) || !std::isfinite(m)) return 0;
  int p;
  (void)std::frexp(m, &p);
  const int sh = (t == mistral::DType::Q8 ? 5 : 8) - p;
  return sh > 120 ? 120 : sh;
}

// y for one packed row (row: its bytes; scales: its scales, fp32 for Q8, fp16 bits for Q4) and one token
// row x [K]; *mag = sum over chunks of |scale (lo + hi)| * 2^-sh (the size of the fp32 sums' rounding).
inline double dot(mistral::DType t, const uint8_t* row, const void* scales, const float* x, int K, double* mag) {
  const bool q8 = t == mistral::DType::Q8;
  const int E = q8 ? 16 : 32, P = q8 ? 4 : 8, half = q8 ? 2 : 4;  // elements a chunk, a word, a lane's per word
  float m = 0.f;
  for (int k = 0; k < K; ++k) m = std::fmax(m, std::fabs(x[k]));
  const int sh = shift(t, m);
  double y = 0, a = 0;
  for (int c0 = 0; c0 < K; c0 += E) {
    double lo = 0, hi = 0;
    for (int j = 0; j < E / P; ++j)
      for (int i = 0; i < half; ++i) {
        const int kl = c0 + j * P + i, kh = kl + half;
        const double xl = kl < K ? round_f16(std::ldexp(double(x[kl]), sh)) : 0.0;
        const double xh = kh < K ? round_f16(std::ldexp(double(x[kh]), sh)) : 0.0;
        lo = round_f16(quant_chunk_ref::code(t, row, kl) * xl + lo);
        hi = round_f16(quant_chunk_ref::code(t, row, kh) * xh + hi);
      }
    const double s = quant_chunk_ref::chunk_scale(t, scales, c0);
    y += s * (lo + hi);
    a += std::fabs(s * (lo + hi));
  }
  if (mag) *mag = std::ldexp(a, -sh);
  return std::ldexp(y, -sh);
}

}  // namespace quant_half_ref
