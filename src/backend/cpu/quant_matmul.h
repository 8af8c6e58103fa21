// CPU matmul over quantized weights (Q8, NF4, Q4; byte layout in mistral/quant.h). The weights are
// dequantized in registers inside the dot-product loops; nothing is expanded in memory.
#pragma once
#include <cstdint>
#include <vector>

#include "mistral/model.h"

namespace mistral {
namespace cpu {

// y[t, n] = sum_k x[t, k] * W[n, k] for rows n in [n0, n1) and all T tokens; x is [T, W.cols], y is
// [T, W.rows]. Like the full-precision matmul, every (row, token) dot product is accumulated in an
// order that does not depend on T or on how rows and tokens are grouped, so decode equals prefill
// bitwise: per group of the row, an 8-lane fp32 accumulator of code * x over the group's whole
// 8-element vectors, folded into the row accumulator with one FMA by the group's scale; then the
// horizontal sum, then the scalar tail (the last cols % 8 elements, code * scale * x each). (A build
// without AVX2 uses a scalar loop with its own fixed order: per group a sum of code * x, times the scale.)
// Threads: callers split the rows (the CPU backend's pool); from 16 tokens each thread decodes its
// rows once into a thread-local fp32 scratch (4 rows x cols) and reuses it for every token.
void matmul_rows_quant(const float* x, int T, const Weight& W, int64_t n0, int64_t n1, float* y);

// The int8-activation path for Q8 and Q4 weights (the CPU backend's default for them; MISTRAL_CPU_QUANT_I8=0
// turns it off; the arithmetic of the CUDA backend's MISTRAL_CUDA_QUANT_I8, which
// tests/quant_i8_reference.h defines). Each token row of x is cut into the weights' 16-byte chunks
// (E = 32 elements of Q4, 16 of Q8) and quantized to int8 per chunk (absmax / 127, quantize_act_int8); a
// row's result is the sum over chunks of scale * (d * the chunk's exact integer sum of code * q), d * isum
// rounded to fp32 and added chunk by chunk in order (Q4: fma with the group's scale; Q8: added, its one
// scale applied last). AVX2: eight rows at a time, maddubs/madd for the chunk sums (exact in int32), the
// same fp32 operations in the same order as the scalar loop: the bits do not depend on T or on the rows'
// grouping, and are the scalar loop's.
struct ActInt8 {
  int E = 0;              // elements a chunk
  int64_t chunks = 0;     // chunks a token row
  std::vector<int8_t> q;  // [T, chunks * E], 0 past K
  std::vector<float> d;   // [T, chunks]
  std::vector<int32_t> qsum;  // [T, chunks]: the sum of the chunk's q (int4's offset is 8 times it); 0 for Q8
};
ActInt8 quantize_act_int8(DType wt, const float* x, int T, int64_t K);
void matmul_rows_quant_i8(const ActInt8& a, int T, const Weight& W, int64_t n0, int64_t n1, float* y);
// The scalar loop alone (what builds without AVX2 run; tests compare the AVX2 tiles with it bit for bit).
void matmul_rows_quant_i8_scalar(const ActInt8& a, int T, const Weight& W, int64_t n0, int64_t n1, float* y);

}  // namespace cpu
}  // namespace mistral
