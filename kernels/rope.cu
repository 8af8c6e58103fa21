// RoPE kernel: one block per token; thread i of (heads x hd/2) rotates the pair (i, i + hd/2) of one
// head. Angles as the CPU reference computes them: the host's fp32 inverse frequencies, fp32 product
// with the position, cos/sin in fp64 rounded to fp32.
#include "common.cuh"
#include "rope.cuh"

namespace mistral {
namespace cuda {

namespace {
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
    const float a = pos * inv_freq[i];
    double s, c;
    sincos(double(a), &s, &c);
    const float cs = float(c), sn = float(s);
    float* v = is_q ? q + (size_t(t) * n_heads + h) * hd : k + (size_t(t) * n_kv_heads + h) * hd;
    const float x0 = v[i], x1 = v[i + half];
    v[i] = x0 * cs - x1 * sn;
    v[i + half] = x1 * cs + x0 * sn;
  }
}
}  // namespace

cudaError_t rope_cuda(float* q, float* k, int T, int64_t start, const int64_t* d_start, int n_heads, int n_kv_heads,
                      int head_dim, const float* inv_freq, cudaStream_t stream) {
  if (T <= 0) return cudaSuccess;
  if (head_dim % 2) return cudaErrorInvalidValue;
  rope_kernel<<<T, 128, 0, stream>>>(q, k, start, d_start, n_heads, n_kv_heads, head_dim, inv_freq);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace mistral
