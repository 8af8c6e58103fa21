// KV-cache elements for the attention, RoPE and cache-write kernels: the cache holds float, or __half
// with AttnParams::kv_half (saturated at +-65504 and rounded to nearest even when stored, as the CPU
// backend's f32_to_f16_sat). Kernels are templated on the element type C and read a chunk's own K/V rows
// through kv_round<C>, so that a key has the same value whether it comes from the cache or the chunk.
#pragma once
#include <cstdint>

#include <cuda_fp16.h>

namespace mistral {
namespace cuda {

__device__ __forceinline__ __half to_half_sat(float x) { return __float2half_rn(fminf(fmaxf(x, -65504.f), 65504.f)); }

__device__ __forceinline__ float kv_load(const float* p) { return *p; }
__device__ __forceinline__ float kv_load(const __half* p) { return __half2float(*p); }

// Elements p[0 .. 3]: p 16-byte aligned (float) or 8-byte aligned (__half).
__device__ __forceinline__ float4 kv_load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 kv_load4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ void kv_store(float* p, float x) { *p = x; }
__device__ __forceinline__ void kv_store(__half* p, float x) { *p = to_half_sat(x); }

// x as a cache of C holds it.
template <class C>
__device__ __forceinline__ float kv_round(float x) {
  if constexpr (sizeof(C) == 2)
    return __half2float(to_half_sat(x));
  else
    return x;
}
template <class C>
__device__ __forceinline__ float4 kv_round4(float4 x) {
  return make_float4(kv_round<C>(x.x), kv_round<C>(x.y), kv_round<C>(x.z), kv_round<C>(x.w));
}

}  // namespace cuda
}  // namespace mistral
