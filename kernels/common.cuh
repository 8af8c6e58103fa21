// Shared device helpers: weight-element loads by dtype (fp32 out) and small reductions.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

// Whether environment variable `name` is set to exactly `value` (the kernels' comparison switches; each
// caller keeps the answer in a static, so the variable is read once).
inline bool env_equals(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::strcmp(e, value) == 0;
}

template <typename W>
__device__ __forceinline__ float to_float(W v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// 32-bit word j (0..3) of a 16-byte load, as the quantized GEMVs take their weights apart.
__host__ __device__ __forceinline__ uint32_t word_of(const uint4& q, int j) {
  return j == 0 ? q.x : j == 1 ? q.y : j == 2 ? q.z : q.w;
}

// D += A B for one mma.m16n8k16 (fp16 A and B fragments, fp32 accumulators; PTX ISA's fragment
// layouts). sm_80 and later only: callers check the device; code built for an older one traps.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// silu(g) * u, the one expression every SwiGLU kernel uses (so fused and separate paths agree bit for bit).
__host__ __device__ __forceinline__ float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// One step of a folded RMSNorm (GemvFusion, gemv.cuh) over 4 elements of x: ss += x^2 (FMAs in element
// order), and x * g returned as rounded products (never contracted), for the GEMV's products.
__device__ __forceinline__ float4 norm_step4(float4 v, const float4& g, float& ss) {
  ss = fmaf(v.x, v.x, ss), ss = fmaf(v.y, v.y, ss), ss = fmaf(v.z, v.z, ss), ss = fmaf(v.w, v.w, ss);
  return make_float4(__fmul_rn(v.x, g.x), __fmul_rn(v.y, g.y), __fmul_rn(v.z, g.z), __fmul_rn(v.w, g.w));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace cuda
}  // namespace mistral
