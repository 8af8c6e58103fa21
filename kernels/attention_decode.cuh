// Split-KV attention for one query token (decode): each KV head is read once for its whole GQA group.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "attention.cuh"

namespace mistral {
namespace cuda {

bool decode_attention_supported(const AttnParams& p);  // head_dim <= 256, group <= 8
// Splits per KV head for a device with n_sms multiprocessors (fixed per cache, so graphs can replay).
int decode_attention_splits(const AttnParams& p, int n_sms);
size_t decode_attention_scratch_floats(const AttnParams& p, int splits);
// q: [Hq*hd] of the token at position `start` (or *p.d_start); k, v: its own [Hkv*hd] rows;
// caches as in attention_cuda; scratch: decode_attention_scratch_floats; out: [Hq*hd].
cudaError_t decode_attention_cuda(const float* q, const float* k, const float* v, const float* cache_k,
                                  const float* cache_v, int64_t start, const AttnParams& p, int splits,
                                  float* scratch, float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
