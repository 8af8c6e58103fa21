// Rotate-half RoPE in place on q[T, Hq*hd] and k[T, Hkv*hd] for positions start .. start+T-1.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

cudaError_t rope_cuda(float* q, float* k, int T, int64_t start, int n_heads, int n_kv_heads, int head_dim,
                      float theta, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
