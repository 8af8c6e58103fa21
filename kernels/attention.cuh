// Causal (optionally sliding-window) GQA attention of a chunk of T queries at positions
// start .. start+T-1, and the KV-cache write that follows it.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace mistral {
namespace cuda {

struct AttnParams {
  int n_heads, n_kv_heads, head_dim;
  int window;     // 0 = full attention; else query p attends keys p-W < j <= p
  int64_t slots;  // cache rows; position j lives in row j % slots
  const int64_t* d_start = nullptr;  // when set, the start position is read from device memory (graphs)
  // Tensor-core path: q, k, v and the probabilities rounded to fp16 (fp32 accumulation), for models
  // whose prefill matmuls already round activations to 16 bits; head_dim <= 128. q, k, v beyond
  // +-65504 saturate (possible in principle for bf16 models; MISTRAL_CUDA_ATTN_FP32=1 avoids the path).
  bool half = false;
  bool kv_half = false;  // the caches hold __half (kv.cuh), else float
};

// q: [T, Hq*hd]; k, v: [T, Hkv*hd] (this chunk); cache_k/v: [slots, Hkv*hd] holding positions < start
// (float, or __half with p.kv_half); out: [T, Hq*hd]. Keys before `start` are read from the cache, keys in
// the chunk from k/v (rounded as the cache would hold them).
cudaError_t attention_cuda(const float* q, const float* k, const float* v, const void* cache_k, const void* cache_v,
                           int T, int64_t start, const AttnParams& p, float* out, cudaStream_t stream);
// Writes the chunk's last min(T, slots) positions into their cache rows.
cudaError_t cache_write_cuda(const float* k, const float* v, void* cache_k, void* cache_v, int T, int64_t start,
                             const AttnParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
