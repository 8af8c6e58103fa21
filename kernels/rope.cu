// RoPE kernels: one block per token; thread i of (heads x hd/2) rotates the pair (i, i + hd/2) of one
// head. Angles as the CPU reference computes them: the host's fp32 inverse frequencies, fp32 product
// with the position, cos/sin in fp64 rounded to fp32; the rotation in explicitly rounded fp32 operations
// (no contraction), as the CPU does. The fused variant also stores the rotated K row and the V row of the
// token in its cache slot.
#include "common.cuh"
#include "rope.cuh"

namespace mistral {
namespace cuda {

namespace {

// Rotates pair (i, i + half) of the head row v by angle pos * inv_freq[i]; returns the rotated pair.
__device__ __forceinline__ float2 rotate_pair(const float* v, int i, int half, float pos, const float* inv_freq) {
  const float a = __fmul_rn(pos, inv_freq[i]);
  double s, c;
  sincos(double(a), &s, &c);
  const float cs = float(c), sn = float(s);
  const float x0 = v[i], x1 = v[i + half];
  return make_float2(__fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn)), __fadd_rn(__fmul_rn(x1, cs), __fmul_rn(x0, sn)));
}

__global__ void rope_kernel(float* q, float* k, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads,
                            int hd, const float* __restrict__ inv_freq) {
  const int half = hd / 2;
  const int t = blockIdx.x;
  if (d_start) start = *d_start;
  const float pos = float(start + t);
  const int pairs_q = n_heads * half, pairs = (n_heads + n_kv_heads) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const bool is_q = p < pairs_q;
    const int pp = is_q ? p : p - pairs_q;
    const int h = pp / half, i = pp % half;
    float* v = is_q ? q + (size_t(t) * n_heads + h) * hd : k + (size_t(t) * n_kv_heads + h) * hd;
    const float2 r = rotate_pair(v, i, half, pos, inv_freq);
    v[i] = r.x;
    v[i + half] = r.y;
  }
}

// Token t = blockIdx.x of the chunk: rotates its q and k rows in place (as rope_kernel, so the same bits),
// and when t >= first (the chunk's last `slots` positions) writes the rotated k row and its v row to cache
// row (start + t) % slots. Each element of q, k, the cache rows and v is touched by one thread only, and
// the rows of different tokens are distinct (at most `slots` consecutive positions are stored), so there
// is no race and no barrier. q, k: [T, H*hd]; v: [T, Hkv*hd]; ck, cv: [slots, Hkv*hd].
__global__ void rope_cache_write_kernel(float* q, float* k, const float* __restrict__ v, float* __restrict__ ck,
                                        float* __restrict__ cv, int first, int64_t start, const int64_t* d_start,
                                        int n_heads, int n_kv_heads, int hd, int64_t slots,
                                        const float* __restrict__ inv_freq) {
  const int half = hd / 2;
  const int t = blockIdx.x;
  if (d_start) start = *d_start;
  const float pos = float(start + t);
  const bool store = t >= first;
  const int kvd = n_kv_heads * hd;
  const size_t row = size_t((start + t) % slots) * size_t(kvd);  // start >= 0, slots > 0
  const int pairs_q = n_heads * half, pairs = (n_heads + n_kv_heads) * half;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const bool is_q = p < pairs_q;
    const int pp = is_q ? p : p - pairs_q;
    const int h = pp / half, i = pp % half;
    float* x = is_q ? q + (size_t(t) * n_heads + h) * hd : k + size_t(t) * kvd + size_t(h) * hd;
    const float2 r = rotate_pair(x, i, half, pos, inv_freq);
    x[i] = r.x;
    x[i + half] = r.y;
    if (!is_q && store) {
      float* c = ck + row + size_t(h) * hd;
      c[i] = r.x;
      c[i + half] = r.y;
    }
  }
  if (store)
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) cv[row + i] = v[size_t(t) * kvd + i];
}

}  // namespace

cudaError_t rope_cuda(float* q, float* k, int T, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads,
                      int head_dim, const float* inv_freq, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (head_dim % 2) return cudaErrorInvalidValue;
  rope_kernel<<<T, 128, 0, stream>>>(q, k, start, d_start, n_heads, n_kv_heads, head_dim, inv_freq);
  return cudaGetLastError();
}

cudaError_t rope_cache_write_cuda(float* q, float* k, const float* v, float* cache_k, float* cache_v, int T,
                                  int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads, int head_dim,
                                  int64_t slots, const float* inv_freq, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (head_dim <= 0 || head_dim % 2 || n_heads <= 0 || n_kv_heads <= 0 || slots <= 0 || (!d_start && start < 0))
    return cudaErrorInvalidValue;
  const int first = int64_t(T) > slots ? int(int64_t(T) - slots) : 0;
  rope_cache_write_kernel<<<T, 128, 0, stream>>>(q, k, v, cache_k, cache_v, first, start, d_start, n_heads, n_kv_heads,
                                                 head_dim, slots, inv_freq);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
