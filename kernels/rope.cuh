// Rotate-half RoPE in place on q[T, Hq*hd] and k[T, Hkv*hd] for positions start .. start+T-1, alone or
// fused with the KV-cache write.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "decode_rows.cuh"

namespace mistral {
namespace cuda {

// inv_freq: device [hd/2], 1 / theta^(2i/hd) computed on the host exactly as the CPU backend does, so
// that both backends rotate by bit-identical angles (pos * inv_freq in fp32) at any position.
// d_start (nullable): read the start position from device memory instead (CUDA-graph replays).
cudaError_t rope_cuda(float* q, float* k, int T, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads,
                      int head_dim, const float* inv_freq, cudaStream_t stream);
// RoPE fused with the KV-cache write: rotates q and k as rope_cuda does (the same bits), then stores the
// rotated k rows and the v rows [T, Hkv*hd] of the chunk's last min(T, slots) positions in cache rows
// (position % slots) of cache_k/v [slots, Hkv*hd] (float, or __half with kv_half), as cache_write_cuda
// does. d_start as in rope_cuda: the cache rows then follow the device-side position too.
cudaError_t rope_cache_write_cuda(float* q, float* k, const float* v, void* cache_k, void* cache_v, bool kv_half, int T,
                                  int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads, int head_dim,
                                  int64_t slots, const float* inv_freq, cudaStream_t stream);

// A batched decode step (one token per row, each row with its own sequence): row i of q[n, Hq*hd] and
// k[n, Hkv*hd] is rotated at position rows[i].pos, as rope_cache_write_cuda with T = 1 does (the same
// bits), and the rotated k row and v row i are stored in row pos % slots of rows[i].cache_k/v.
// rows: a device table of n entries (decode_rows.cuh); distinct rows must have distinct caches.
cudaError_t rope_cache_write_rows_cuda(float* q, float* k, const float* v, const DecodeRowArgs* rows, int n,
                                       bool kv_half, int n_heads, int n_kv_heads, int head_dim, const float* inv_freq,
                                       cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
