// Split-KV decode attention (one query token): grid (kv head, split). A block of 4 warps takes the
// keys of its split for one KV head and ALL its query heads (the GQA group), so each K/V row is
// loaded once per group, not once per query head. Warp w handles keys w, w+4, ... of the split: the
// lanes read a key row coalesced (dims lane, lane+32, ...), reduce the group's dot products across
// the warp, and keep an online softmax (max, sum, weighted V) per query head. The 4 warps are merged
// in shared memory, and each block writes its partial (max, sum, acc[hd]) per query head; a second
// kernel merges the splits. The number of splits is fixed by the caller (so a recorded graph can be
// replayed at any position); the key range of each split is computed on the device from the position.
// Preconditions: head_dim <= 256, group = Hq / Hkv <= 8.
#include "attention.cuh"
#include "attention_decode.cuh"
#include "common.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxG = 8;
constexpr int kMaxDPerLane = 8;  // head_dim <= 256

__global__ void __launch_bounds__(kWarps * 32)
    decode_partial_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                          const float* __restrict__ ck, const float* __restrict__ cv, int64_t start, AttnParams p,
                          int splits, float* __restrict__ part) {
  if (p.d_start) start = *p.d_start;
  const int kvh = blockIdx.x, split = blockIdx.y;
  const int hd = p.head_dim, G = p.n_heads / p.n_kv_heads, kvd = p.n_kv_heads * hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t pos = start;  // the query's position; its own key is the chunk's row 0
  const int64_t j0 = p.window > 0 ? (pos - p.window + 1 > 0 ? pos - p.window + 1 : 0) : 0;
  const int64_t n_keys = pos - j0 + 1;
  const int64_t per = (n_keys + splits - 1) / splits;
  const int64_t kb = j0 + int64_t(split) * per;
  const int64_t ke = kb + per < pos + 1 ? kb + per : pos + 1;
  const float scale = rsqrtf(float(hd));

  __shared__ float qs[kMaxG][kMaxDPerLane * 32];
  for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
    const int g = i / hd, d = i % hd;
    qs[g][d] = q[size_t(kvh * G + g) * hd + d] * scale;
  }
  __syncthreads();

  float m[kMaxG], l[kMaxG], acc[kMaxG][kMaxDPerLane];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -INFINITY, l[g] = 0.f;
#pragma unroll
    for (int r = 0; r < kMaxDPerLane; ++r) acc[g][r] = 0.f;
  }
  for (int64_t j = kb + warp; j < ke; j += kWarps) {
    const float* kr = (j < start ? ck + size_t(j % p.slots) * kvd : k) + size_t(kvh) * hd;
    const float* vr = (j < start ? cv + size_t(j % p.slots) * kvd : v) + size_t(kvh) * hd;
    float kx[kMaxDPerLane], vx[kMaxDPerLane];
#pragma unroll
    for (int r = 0; r < kMaxDPerLane; ++r) {
      const int d = lane + 32 * r;
      kx[r] = d < hd ? kr[d] : 0.f;
      vx[r] = d < hd ? vr[d] : 0.f;
    }
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      if (g >= G) break;
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < kMaxDPerLane; ++r) {
        const int d = lane + 32 * r;
        if (d < hd) s += qs[g][d] * kx[r];
      }
      s = warp_sum(s);
      const float nm = fmaxf(m[g], s);
      const float corr = expf(m[g] - nm), pj = expf(s - nm);
      l[g] = l[g] * corr + pj;
#pragma unroll
      for (int r = 0; r < kMaxDPerLane; ++r) acc[g][r] = acc[g][r] * corr + pj * vx[r];
      m[g] = nm;
    }
  }
  // Merge the warps: warp 0 gathers the others' (m, l, acc) through shared memory.
  __shared__ float sm_m[kWarps][kMaxG], sm_l[kWarps][kMaxG];
  __shared__ float sm_acc[kWarps][kMaxG][kMaxDPerLane * 32];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {  // compile-time indices keep acc[][] in registers
    if (g < G) {
      if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
#pragma unroll
      for (int r = 0; r < kMaxDPerLane; ++r) {
        const int d = lane + 32 * r;
        if (d < hd) sm_acc[warp][g][d] = acc[g][r];
      }
    }
  }
  __syncthreads();
  // Every thread finishes some (g, d) outputs of the block's partial.
  const size_t stride = size_t(hd) + 2;  // [max, sum, acc...] per (query head, split)
  for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
    const int g = i / hd, d = i % hd;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f, A = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float c = sm_m[w][g] == -INFINITY ? 0.f : expf(sm_m[w][g] - M);
      L += sm_l[w][g] * c;
      A += sm_acc[w][g][d] * c;
    }
    float* out = part + (size_t(kvh * G + g) * splits + split) * stride;
    if (d == 0) out[0] = M, out[1] = L;
    out[2 + d] = A;
  }
}

// One block per query head: merges the splits' partials into the output row.
__global__ void decode_combine_kernel(const float* __restrict__ part, int splits, int hd, float* __restrict__ out) {
  const int h = blockIdx.x;
  const size_t stride = size_t(hd) + 2;
  const float* ph = part + size_t(h) * splits * stride;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, ph[s * stride]);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float L = 0.f, A = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = ph[s * stride];
      const float c = ms == -INFINITY ? 0.f : expf(ms - M);
      L += ph[s * stride + 1] * c;
      A += ph[s * stride + 2 + d] * c;
    }
    out[size_t(h) * hd + d] = A / L;
  }
}

}  // namespace

size_t decode_attention_scratch_floats(const AttnParams& p, int splits) {
  return size_t(p.n_heads) * size_t(splits) * size_t(p.head_dim + 2);
}

int decode_attention_splits(const AttnParams& p, int n_sms) {
  // Enough blocks to cover every SM about twice at the longest context this cache can hold, and
  // never more splits than 64 keys each at that length.
  const int64_t max_keys = p.window > 0 ? p.window : p.slots;
  int splits = (2 * n_sms + p.n_kv_heads - 1) / p.n_kv_heads;
  const int64_t cap = (max_keys + 63) / 64;
  if (splits > cap) splits = int(cap);
  return splits < 1 ? 1 : splits;
}

cudaError_t decode_attention_cuda(const float* q, const float* k, const float* v, const float* cache_k,
                                  const float* cache_v, int64_t start, const AttnParams& p, int splits,
                                  float* scratch, float* out, cudaStream_t stream) {
  if (p.head_dim > kMaxDPerLane * 32 || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads ||
      p.n_heads / p.n_kv_heads > kMaxG || splits < 1)
    return cudaErrorInvalidValue;
  decode_partial_kernel<<<dim3(unsigned(p.n_kv_heads), unsigned(splits)), kWarps * 32, 0, stream>>>(
      q, k, v, cache_k, cache_v, start, p, splits, scratch);
  decode_combine_kernel<<<unsigned(p.n_heads), 128, 0, stream>>>(scratch, splits, p.head_dim, out);
  return cudaGetLastError();
}

bool decode_attention_supported(const AttnParams& p) {
  return p.head_dim <= kMaxDPerLane * 32 && p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0 &&
         p.n_heads / p.n_kv_heads <= kMaxG;
}

}  // namespace cuda
}  // namespace mistral
