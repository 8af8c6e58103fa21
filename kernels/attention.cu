// Attention kernel (reference-grade, flash-style online softmax): one block of 128 threads per
// (query token, query head). Keys are processed in tiles of 128: thread j scores key j of the tile
// (a full dot product over head_dim), the block finds the tile maximum, rescales its running
// sum, then thread i accumulates output dims i, i+128, ... over the tile. Any head_dim <= 512.
// This kernel reads each KV head once per query head; the split-KV decode kernel that shares
// loads across a GQA group is future work.
#include "attention.cuh"
#include "common.cuh"

namespace mistral {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxDimsPerThread = 4;  // head_dim <= 512

__global__ void attention_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                 const float* __restrict__ ck, const float* __restrict__ cv, int64_t start,
                                 AttnParams p, float* __restrict__ out) {
  if (p.d_start) start = *p.d_start;
  const int t = blockIdx.x / p.n_heads, h = blockIdx.x % p.n_heads;
  const int hd = p.head_dim, kvd = p.n_kv_heads * hd, qd = p.n_heads * hd;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int64_t pos = start + t;
  const int64_t j0 = p.window > 0 ? (pos - p.window + 1 > 0 ? pos - p.window + 1 : 0) : 0;
  const float scale = rsqrtf(float(hd));
  extern __shared__ float smem[];
  float* qs = smem;                // [hd]
  float* ps = smem + hd;           // [kThreads] probabilities of the tile
  __shared__ float red[kThreads / 32];
  __shared__ float tile_max_s;
  const float* qv = q + size_t(t) * qd + size_t(h) * hd;
  for (int i = threadIdx.x; i < hd; i += kThreads) qs[i] = qv[i];
  __syncthreads();

  float acc[kMaxDimsPerThread] = {0.f, 0.f, 0.f, 0.f};
  float run_max = -INFINITY, run_sum = 0.f;  // identical in every thread
  for (int64_t base = j0; base <= pos; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    float s = -INFINITY;
    if (j <= pos) {
      const float* kr = (j < start ? ck + size_t(j % p.slots) * kvd : k + size_t(j - start) * kvd) + size_t(kvh) * hd;
      float d = 0.f;
      for (int i = 0; i < hd; ++i) d += qs[i] * kr[i];
      s = d * scale;
    }
    // Tile maximum.
    float m = warp_max(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      float mm = red[0];
      for (int w = 1; w < kThreads / 32; ++w) mm = fmaxf(mm, red[w]);
      tile_max_s = mm;
    }
    __syncthreads();
    const float new_max = fmaxf(run_max, tile_max_s);
    const float pj = j <= pos ? expf(s - new_max) : 0.f;
    ps[threadIdx.x] = pj;
    float sum = warp_sum(pj);
    __syncthreads();  // red[] reuse and ps[] visibility
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    float tile_sum = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) tile_sum += red[w];
    const float corr = expf(run_max - new_max);  // 0 on the first tile (run_max = -inf)
    run_sum = run_sum * corr + tile_sum;
    run_max = new_max;
    const int n = int(pos - base + 1 < kThreads ? pos - base + 1 : kThreads);
#pragma unroll
    for (int r = 0; r < kMaxDimsPerThread; ++r) {
      const int i = threadIdx.x + r * kThreads;
      if (i < hd) {
        float a = acc[r] * corr;
        for (int jj = 0; jj < n; ++jj) {
          const int64_t jg = base + jj;
          const float* vr = (jg < start ? cv + size_t(jg % p.slots) * kvd : v + size_t(jg - start) * kvd) + size_t(kvh) * hd;
          a += ps[jj] * vr[i];
        }
        acc[r] = a;
      }
    }
    __syncthreads();  // before ps[] and red[] are overwritten by the next tile
  }
  float* o = out + size_t(t) * qd + size_t(h) * hd;
#pragma unroll
  for (int r = 0; r < kMaxDimsPerThread; ++r) {
    const int i = threadIdx.x + r * kThreads;
    if (i < hd) o[i] = acc[r] / run_sum;
  }
}

__global__ void cache_write_kernel(const float* __restrict__ k, const float* __restrict__ v, float* ck, float* cv,
                                   int first, int64_t start, const int64_t* d_start, int kvd, int64_t slots) {
  const int t = first + blockIdx.x;
  if (d_start) start = *d_start;
  const size_t slot = size_t((start + t) % slots);
  for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
    ck[slot * kvd + i] = k[size_t(t) * kvd + i];
    cv[slot * kvd + i] = v[size_t(t) * kvd + i];
  }
}

}  // namespace

cudaError_t attention_cuda(const float* q, const float* k, const float* v, const float* cache_k, const float* cache_v,
                           int T, int64_t start, const AttnParams& p, float* out, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (p.head_dim > kThreads * kMaxDimsPerThread || p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads) return cudaErrorInvalidValue;
  const size_t shmem = size_t(p.head_dim + kThreads) * sizeof(float);
  attention_kernel<<<unsigned(T) * unsigned(p.n_heads), kThreads, shmem, stream>>>(q, k, v, cache_k, cache_v, start, p,
                                                                                 out);
  return cudaGetLastError();
}

cudaError_t cache_write_cuda(const float* k, const float* v, float* cache_k, float* cache_v, int T, int64_t start,
                             const AttnParams& p, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  const int first = T > p.slots ? int(T - p.slots) : 0;
  cache_write_kernel<<<unsigned(T - first), 128, 0, stream>>>(k, v, cache_k, cache_v, first, start, p.d_start,
                                                              p.n_kv_heads * p.head_dim, p.slots);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
