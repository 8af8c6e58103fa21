// Rotate-half RoPE in place on q[T, Hq*hd] and k[T, Hkv*hd] for positions start .. start+T-1.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

// inv_freq: device [hd/2], 1 / theta^(2i/hd) computed on the host exactly as the CPU backend does, so
// that both backends rotate by bit-identical angles (pos * inv_freq in fp32) at any position.
// d_start (nullable): read the start position from device memory instead (CUDA-graph replays).
cudaError_t rope_cuda(float* q, float* k, int T, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads,
                      int head_dim, const float* inv_freq, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
