// Split-KV attention for one query token (decode): each KV head is read once for its whole GQA group.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

#include "attention.cuh"
#include "decode_rows.cuh"

namespace mistral {
namespace cuda {

bool decode_attention_supported(const AttnParams& p);  // head_dim <= 256, group <= 8
// Splits per KV head for a device with n_sms multiprocessors (fixed per cache, so graphs can replay).
int decode_attention_splits(const AttnParams& p, int n_sms);
size_t decode_attention_scratch_floats(const AttnParams& p, int splits);
// q: [Hq*hd] of the token at position `start` (or *p.d_start); k, v: its own [Hkv*hd] rows;
// caches as in attention_cuda (float, or __half with p.kv_half); scratch: decode_attention_scratch_floats, zero-filled
// once when allocated (its first words are counters that every call leaves zero); out: [Hq*hd].
// inv_freq set (the RoPE fold, where decode_rope_fold_supported(p)): q and k are the token's rows before
// RoPE; the kernel rotates them (leaving q and k unchanged in memory) with the fp32 inverse frequencies
// inv_freq [hd/2], as rope_cache_write_cuda would, and stores the rotated K row and the V row in cache row
// start % p.slots, which the caller must know to evict nothing this step reads
// (cache_write_before_attention_ok): the outputs and the cache get the bits of rope_cache_write_cuda
// followed by decode_attention_cuda, in one launch fewer.
cudaError_t decode_attention_cuda(const float* q, const float* k, const float* v, const void* cache_k,
                                  const void* cache_v, int64_t start, const AttnParams& p, int splits, float* scratch,
                                  float* out, cudaStream_t stream, const float* inv_freq = nullptr);
bool decode_rope_fold_supported(const AttnParams& p);  // the tiled block: head_dim <= 128, even

// A batched decode step: row i of q[n, Hq*hd] (k, v[n, Hkv*hd]: its own K/V rows) attends the keys of
// its own cache at its own position (rows[i], device table), output row i of out[n, Hq*hd]; the math of
// decode_attention_cuda. The caches must already hold what the rows read (their positions before pos).
// Plan on the host first: decode_attention_rows_plan fills each entry's split0/splits (pos and the
// window decide them) and returns the total number of splits S (-1 if that overflows an int);
// decode_attention_rows_work writes the S work items (row, split) in row order, which go to a device
// table `work`; scratch holds decode_attention_rows_scratch_floats(p, S). p.slots is not used (each row
// has its own); p.d_start must be null.
// For benchmarks: the tiled partial block (1) or the untiled one (0), the separate combine kernel (1) or
// the merge inside the partial kernel (0), the tiled block's one-address tiles (1) or not (0); -1 leaves a
// choice to the environment (attention_decode.cu).
void set_decode_attention_variant(int tiled, int separate_combine, int fast_tiles);

int64_t decode_attention_rows_plan(DecodeRowArgs* rows, int n, int window, int n_kv_heads, int n_sms);
void decode_attention_rows_work(const DecodeRowArgs* rows, int n, DecodeWork* work);
size_t decode_attention_rows_scratch_floats(const AttnParams& p, int64_t total_splits);
cudaError_t decode_attention_rows_cuda(const float* q, const float* k, const float* v, const DecodeRowArgs* rows, int n,
                                       const DecodeWork* work, int n_work, const AttnParams& p, float* scratch,
                                       float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace mistral
