// RoPE's arithmetic, shared by the RoPE kernels (rope.cu) and the decode attention's RoPE fold
// (attention_decode.cu), so that both give the CPU backend's bits: the angle pos * inv_freq in fp32, its
// cos and sin in fp64 rounded to fp32, the rotation in explicitly rounded fp32 operations (no
// contraction), as the CPU computes them.
#pragma once
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

// cos and sin of the angle pos * inv_freq (one entry of a position's angle table).
__device__ __forceinline__ void rope_angle(float pos, float inv_freq, float* cs, float* sn) {
  const float a = __fmul_rn(pos, inv_freq);
  double s, c;
  sincos(double(a), &s, &c);
  *cs = float(c), *sn = float(s);
}

// The rotate-half pair (x0, x1) = (x[i], x[i + hd/2]) rotated by the angle whose cos, sin are cs, sn.
__device__ __forceinline__ float2 rope_rotate(float x0, float x1, float cs, float sn) {
  return make_float2(__fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn)), __fadd_rn(__fmul_rn(x1, cs), __fmul_rn(x0, sn)));
}

}  // namespace cuda
}  // namespace mistral
